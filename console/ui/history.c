/* history.c -- the runs list and stored runs (see history.h). */
#include "ui/history.h"

#include <stdlib.h>

void tc_history_free(tc_history *h) {
    free(h->runs);
    h->runs = NULL;
    h->n = 0;
}

/* cmd_live.c -- PLACEHOLDER until the console UI (branch console) lands:
 * that branch replaces this file with the live view. */
#include "cmd.h"

#include <stdio.h>

int tc_cmd_live(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "taylorscope: the live console is not built yet; use `taylorscope tap URL` "
                    "or `taylorscope record URL`\n");
    return TC_EXIT_FAIL;
}

#include "cpu.h"
int tkcpu_hybrid(tkcpu_job *job) {
    job->res->reason = TK_REASON_BACKEND_ERROR;
    return TK_OK;
}

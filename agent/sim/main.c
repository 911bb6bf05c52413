/* taylor-sim -- the simulator host. FOUNDATION STUB: the simulator issue
 * fills it in; --help and --version work now. */
#include "agent.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: taylor-sim [options]\n"
            "\n"
            "Runs a Flux-shaped generation that embeds the taylorscope agent.\n"
            "\n"
            "  --model tiny|flux1|flux2   model config (default tiny)\n"
            "  --steps N                  sampling steps (default 20)\n"
            "  -h, --help                 this help\n"
            "  --version                  print the version\n");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("taylor-sim %s\n", TA_VERSION);
            return 0;
        }
    }
    fprintf(stderr, "taylor-sim: not implemented yet (see --help)\n");
    return 2;
}

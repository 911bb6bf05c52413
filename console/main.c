/* taylorscope -- the console. FOUNDATION STUB: the recorder and console
 * issues fill in the subcommands; --help and --version work now. */
#include "agent.h"

#include <stdio.h>
#include <string.h>

#define TC_VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f,
            "usage: taylorscope [live URL] | COMMAND [args]\n"
            "\n"
            "Watch and steer approximate attention inside a running sampler.\n"
            "\n"
            "  -h, --help     this help\n"
            "  --version      print the version\n");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("taylorscope %s\n", TC_VERSION);
            return 0;
        }
    }
    fprintf(stderr, "taylorscope: not implemented yet (see --help)\n");
    return 2;
}

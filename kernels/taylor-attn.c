/* taylor-attn -- one attention call on tensor files. FOUNDATION STUB: the
 * kernels issue fills in the call; --help and --version work now. */
#include "kernels.h"

#include <stdio.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: taylor-attn --q FILE --k FILE --v FILE --out FILE [options]\n"
            "\n"
            "Runs one exact, Taylor or hybrid attention call on tensor files\n"
            "(.npy or .safetensors, layout [B,H,N,D]).\n"
            "\n"
            "  --mode exact|taylor|hybrid   attention kind (default taylor)\n"
            "  --backend ref|cpu|cuda       backend (default cpu)\n"
            "  --stats                      print the call's stats as one JSON object\n"
            "  --NAME VALUE                 any knob (see docs/KNOBS.md)\n"
            "  -h, --help                   this help\n"
            "  --version                    print the version\n"
            "\n"
            "Exit status: 0 output written, 3 fallback (reason printed), 2 bad input.\n");
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--version")) {
            printf("taylor-attn %s\n", TK_VERSION);
            return 0;
        }
    }
    usage(stderr);
    fprintf(stderr, "taylor-attn: not implemented yet\n");
    return 2;
}

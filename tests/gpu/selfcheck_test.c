/* GPU self-check: the CUDA build runs a kernel on the device. Skipped
 * without a GPU or without nvcc at build time. */
#include "harness.h"
#include "kernels.h"

#include <string.h>

#ifdef TK_HAVE_CUDA
int tkcuda_selfcheck(char *err, size_t errlen);
#endif

static void test_device_kernel_writes_the_expected_pattern(void) {
#ifdef TK_HAVE_CUDA
    char err[256] = "";
    if (tkcuda_selfcheck(err, sizeof err) != 0) {
        if (strstr(err, "no CUDA device")) th_skip("%s", err);
        th_fail(__FILE__, __LINE__, "%s", err);
    }
#else
    th_skip("built without nvcc");
#endif
}

static const th_test tests[] = {
    TH_TEST(test_device_kernel_writes_the_expected_pattern),
    {0},
};

int main(int argc, char **argv) { return th_main(tests, argc, argv); }

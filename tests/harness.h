/*
 * harness.h -- the unit-test harness. Each *_test.c ends in a table of named
 * tests that read like sentences, and a main that hands it to th_main:
 *
 *   static void test_knob_out_of_range_is_refused(void) { TH_CHECK(...); }
 *   static const th_test tests[] = {
 *       TH_TEST(test_knob_out_of_range_is_refused),
 *       {0},
 *   };
 *   int main(int argc, char **argv) { return th_main(tests, argc, argv); }
 *
 * Output, one line per test: "PASS name", "FAIL name: file:line: why",
 * "SKIP name: why". tests/run.sh counts these lines. `binary NAME...` runs
 * only the named tests.
 */
#ifndef TH_HARNESS_H
#define TH_HARNESS_H

#include <stddef.h>

typedef struct {
    const char *name;
    void (*fn)(void);
} th_test;

#define TH_TEST(fn) {#fn, fn}

int th_main(const th_test *tests, int argc, char **argv);

/* Fail the running test with a printf-style message (does not return). */
void th_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));
/* Skip the running test (does not return). */
void th_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#define TH_CHECK(cond)                                                   \
    do {                                                                 \
        if (!(cond)) th_fail(__FILE__, __LINE__, "check failed: %s", #cond); \
    } while (0)
#define TH_CHECKF(cond, ...)                                             \
    do {                                                                 \
        if (!(cond)) th_fail(__FILE__, __LINE__, __VA_ARGS__);           \
    } while (0)
/* |a-b| <= tol, with NaN never passing. */
#define TH_NEAR(a, b, tol)                                               \
    do {                                                                 \
        double th_a_ = (a), th_b_ = (b), th_t_ = (tol);                  \
        if (!(th_a_ - th_b_ <= th_t_ && th_b_ - th_a_ <= th_t_))         \
            th_fail(__FILE__, __LINE__, "%s = %.17g, %s = %.17g, tolerance %g", #a, th_a_, #b, \
                    th_b_, th_t_);                                       \
    } while (0)
#define TH_EQ_INT(a, b)                                                  \
    do {                                                                 \
        long long th_a_ = (long long)(a), th_b_ = (long long)(b);        \
        if (th_a_ != th_b_)                                              \
            th_fail(__FILE__, __LINE__, "%s = %lld, expected %s = %lld", #a, th_a_, #b, th_b_); \
    } while (0)
#define TH_EQ_STR(a, b)                                                  \
    do {                                                                 \
        const char *th_a_ = (a), *th_b_ = (b);                           \
        if (!th_a_ || !th_b_ || strcmp(th_a_, th_b_) != 0)               \
            th_fail(__FILE__, __LINE__, "%s = \"%s\", expected \"%s\"", #a, th_a_ ? th_a_ : "(null)", \
                    th_b_ ? th_b_ : "(null)");                           \
    } while (0)

/* A temporary directory for this test binary, removed at exit. */
const char *th_tmpdir(void);

#endif

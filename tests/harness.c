/* harness.c -- see harness.h. Each test runs in a forked child so that a
 * crash (or a sanitizer abort) fails that test alone and is reported. */
#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static jmp_buf th_jump;
static char th_tmp[256];

enum { TH_PASS_CODE = 0, TH_FAIL_CODE = 10, TH_SKIP_CODE = 77 };

void th_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stdout, "FAIL_DETAIL %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    longjmp(th_jump, TH_FAIL_CODE);
}

void th_skip(const char *fmt, ...) {
    va_list ap;
    fprintf(stdout, "SKIP_DETAIL ");
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
    longjmp(th_jump, TH_SKIP_CODE);
}

static void remove_tmp(void) {
    if (th_tmp[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", th_tmp);
        if (system(cmd) != 0) fprintf(stderr, "harness: could not remove %s\n", th_tmp);
    }
}

const char *th_tmpdir(void) {
    if (!th_tmp[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(th_tmp, sizeof th_tmp, "%s/th.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(th_tmp)) {
            th_tmp[0] = 0;
            return "/tmp";
        }
    }
    return th_tmp;
}

static int selected(const char *name, int argc, char **argv) {
    if (argc <= 1) return 1;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], name) == 0) return 1;
    return 0;
}

/* Runs one test in the forked child; never returns. */
static void run_child(void (*volatile fn)(void)) __attribute__((noreturn));
static void run_child(void (*volatile fn)(void)) {
    int code = setjmp(th_jump);
    if (code == 0) {
        fn();
        code = TH_PASS_CODE;
    }
    remove_tmp();
    fflush(stdout);
    _exit(code);
}

int th_main(const th_test *tests, int argc, char **argv) {
    int failed = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (const th_test *t = tests; t->name; t++) {
        if (!selected(t->name, argc, argv)) continue;
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) run_child(t->fn);
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) < 0) {
            printf("FAIL %s: could not fork\n", t->name);
            failed++;
            continue;
        }
        if (WIFEXITED(status) && WEXITSTATUS(status) == TH_PASS_CODE) {
            printf("PASS %s\n", t->name);
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == TH_SKIP_CODE) {
            printf("SKIP %s\n", t->name);
        } else if (WIFSIGNALED(status)) {
            printf("FAIL %s: killed by signal %d\n", t->name, WTERMSIG(status));
            failed++;
        } else {
            printf("FAIL %s\n", t->name);
            failed++;
        }
    }
    return failed ? 1 : 0;
}

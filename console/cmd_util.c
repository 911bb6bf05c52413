/* cmd_util.c -- helpers shared by the subcommands (see cmd.h). */
#include "cmd.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

int tc_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "taylorscope %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see `taylorscope %s --help`)\n", cmd);
    return TC_EXIT_USAGE;
}

int tc_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "taylorscope %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return TC_EXIT_FAIL;
}

int tc_opt(int argc, char **argv, int *i, const char *name, const char **value) {
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0) return 0;
    if (a[n] == '=') {
        *value = a + n + 1;
        (*i)++;
        return 1;
    }
    if (a[n] != 0) return 0;
    if (*i + 1 >= argc) return -1;
    *value = argv[*i + 1];
    *i += 2;
    return 1;
}

int tc_db_path(const char *given, char *buf, size_t len, char *err, size_t errlen) {
    if (given) {
        if (!*given) {
            snprintf(err, errlen, "--db needs a file name");
            return 1;
        }
        if (strlen(given) >= len) {
            snprintf(err, errlen, "--db path too long");
            return 1;
        }
        snprintf(buf, len, "%s", given);
        return 0;
    }
    return tc_default_db_path(buf, len, err, errlen);
}

int tc_parse_count(const char *text, int64_t *out) {
    if (!text || !*text || *text == '-' || *text == '+') return 1;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno || !end || *end) return 1;
    *out = v;
    return 0;
}

int tc_parse_seconds(const char *text, double *out) {
    if (!text || !*text) return 1;
    char *end = NULL;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || !end || *end || !isfinite(v) || v < 0) return 1;
    *out = v;
    return 0;
}

int64_t tc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int tc_open_history(const char *cmd, const char *db_given, int mode, tc_store **out) {
    char path[1024], err[512];
    *out = NULL;
    if (tc_db_path(db_given, path, sizeof path, err, sizeof err)) return tc_fail(cmd, "%s", err);
    if (tc_store_open(path, (tc_store_mode)mode, out, err, sizeof err)) return tc_fail(cmd, "%s", err);
    if (tc_store_warning(*out)[0]) fprintf(stderr, "taylorscope %s: warning: %s\n", cmd, tc_store_warning(*out));
    return TC_EXIT_OK;
}

typedef struct {
    int exit_code;
    unsigned seconds;
} close_guard;

static void *close_guard_main(void *arg) {
    close_guard g = *(close_guard *)arg;
    free(arg);
    sleep(g.seconds);
    static const char msg[] = "taylorscope: closing the connections did not finish (an nng 1.5 hang); exiting\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(g.exit_code);
}

void tc_exit_if_close_hangs(int exit_code, unsigned seconds) {
    close_guard *g = malloc(sizeof *g);
    if (!g) return;
    g->exit_code = exit_code, g->seconds = seconds;
    pthread_t t;
    pthread_attr_t at;
    if (pthread_attr_init(&at) != 0) {
        free(g);
        return;
    }
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&t, &at, close_guard_main, g) != 0) free(g);
    pthread_attr_destroy(&at);
}

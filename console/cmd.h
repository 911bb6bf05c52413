/*
 * cmd.h -- the taylorscope subcommands (one file each, console/cmd_*.c) and
 * the small helpers they share. main.c holds the table {name, usage, help,
 * exec}; exec gets argv[0] = the command name and returns the exit status:
 * 0 ok, 1 failed (the message is on stderr), 2 bad usage.
 */
#ifndef TC_CMD_H
#define TC_CMD_H

#include <stddef.h>
#include <stdint.h>

#define TC_VERSION "0.1.0"

enum { TC_EXIT_OK = 0, TC_EXIT_FAIL = 1, TC_EXIT_USAGE = 2 };

int tc_cmd_live(int argc, char **argv); /* console/cmd_live.c (the UI) */
int tc_cmd_record(int argc, char **argv);
int tc_cmd_runs(int argc, char **argv);
int tc_cmd_show(int argc, char **argv);
int tc_cmd_query(int argc, char **argv);
int tc_cmd_export(int argc, char **argv);
int tc_cmd_set(int argc, char **argv);
int tc_cmd_tap(int argc, char **argv);

/* Reports bad usage of a command ("taylorscope CMD: why" and the usage
 * line) on stderr; returns TC_EXIT_USAGE. */
int tc_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Reports a failure ("taylorscope CMD: why") on stderr; returns TC_EXIT_FAIL. */
int tc_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* If argv[*i] is option `name` ("--db FILE" or "--db=FILE"), sets *value
 * (borrowed from argv), advances *i past it and returns 1; returns -1 when
 * the value is missing; 0 when argv[*i] is another argument. */
int tc_opt(int argc, char **argv, int *i, const char *name, const char **value);
/* The database: --db's value when given, else tc_default_db_path. */
int tc_db_path(const char *given, char *buf, size_t len, char *err, size_t errlen);
/* Parses a whole non-negative number / a finite number of seconds; 0 ok. */
int tc_parse_count(const char *text, int64_t *out);
int tc_parse_seconds(const char *text, double *out);
/* Opens the history for a command (--db's value or the default), printing
 * the store's warning if any; returns TC_EXIT_OK with *out (caller closes)
 * or TC_EXIT_FAIL after printing the error. */
struct tc_store;
int tc_open_history(const char *cmd, const char *db_given, int mode, struct tc_store **out);
/* Unix time now, ns. */
int64_t tc_now_ns(void);
/* Called by a command that is about to close its nng sockets and return
 * exit_code: if the closing has not finished after seconds, the process
 * says so on stderr and exits with exit_code anyway. nng 1.5.2 (Debian's)
 * can hang for good in nng_close of a SUB socket whose peer is still
 * sending; everything worth keeping is already in the database by then. */
void tc_exit_if_close_hangs(int exit_code, unsigned seconds);

#endif

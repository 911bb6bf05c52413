/*
 * taylorscope -- the console: the live view (no command, or `live URL`) and
 * the headless subcommands for scripts. One table entry per command
 * {name, usage, help, exec}; the commands live in console/cmd_<name>.c.
 */
#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "store.h"

typedef struct {
    const char *name;
    const char *usage; /* arguments after the name */
    const char *help;  /* what it does, options; shown by `taylorscope NAME --help` */
    int (*exec)(int argc, char **argv);
} tc_command;

static const tc_command commands[] = {
    {"live", "[URL] [--readonly] [--mono] [--db FILE] [--no-record]",
     "The live console: watch one agent's run, edit its knobs, browse history.\n"
     "URL is the agent's PUB endpoint (default: the one agent listening on this\n"
     "user's default ipc endpoints; with several, they are listed).\n"
     "  --readonly   observer: knobs are shown, never changed\n"
     "  --mono       no colours (also when NO_COLOR is set)\n"
     "  --db FILE    the history database it records into and browses\n"
     "  --no-record  do not record (the history browser still reads --db)\n"
     "Keys: F1/? help, F2 live, F3 heat map, F4 knobs, F5 history, q quit.",
     tc_cmd_live},
    {"record", "URL... [--db FILE] [--lost-after SECONDS] [--runs N] [--duration SECONDS]",
     "Record every run of one or more agents into the database, headless, until\n"
     "interrupted (SIGINT/SIGTERM). Gaps in a stream are replayed from the agent's\n"
     "ring or recorded as gaps; a run whose agent is silent for --lost-after\n"
     "seconds (default 30) is marked lost. A restarted recorder continues the\n"
     "same runs.\n"
     "  --runs N            stop after N runs have ended (finished, failed or lost)\n"
     "  --duration SECONDS  stop after this long",
     tc_cmd_record},
    {"runs", "[--db FILE] [--status STATUS] [--limit N] [--csv]",
     "List the recorded runs, newest first: local id, the agent's run id, status,\n"
     "model, steps recorded / planned, gaps, start time (UTC).",
     tc_cmd_runs},
    {"show", "RUN [--db FILE]",
     "Show one run: identity, model and shape, knobs that differ from the\n"
     "defaults, knob events, gaps and a table of its steps. RUN is the local id\n"
     "from `runs` or the agent's run id (or a unique prefix of it).",
     tc_cmd_show},
    {"query", "SQL [--db FILE] [--csv]",
     "Run SQL on a read-only connection and print the rows (tab-separated with\n"
     "a header line, or CSV). NaN values print as nan, not-reported ones empty.\n"
     "The tables are described in docs/SCHEMA.md.",
     tc_cmd_query},
    {"export", "RUN --table steps|layers|knobs|gaps [--csv] [--db FILE] [-o FILE]",
     "Write one table of a run as CSV (to stdout, or -o FILE). NaN is written\n"
     "nan, infinities inf/-inf, a figure that was not reported as an empty field.",
     tc_cmd_export},
    {"set", "URL NAME=VALUE... [--expect-version N] [--id REQUEST_ID] [--timeout SECONDS]",
     "Change knobs of a running agent. URL is its PUB or control endpoint. Prints\n"
     "the step the change takes effect at, or the agent's validation error\n"
     "(exit status 1; nothing is changed).",
     tc_cmd_set},
    {"tap", "URL [--count N] [--duration SECONDS]",
     "Print an agent's stream as one text line per message until interrupted.", tc_cmd_tap},
};
#define NCOMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage(FILE *f) {
    fprintf(f,
            "usage: taylorscope [live URL] | COMMAND [args]\n"
            "\n"
            "Watch and steer approximate attention inside a running sampler.\n"
            "\n"
            "commands:\n");
    for (int i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-7s %s\n", commands[i].name, commands[i].usage);
    char path[1024], err[256];
    fprintf(f,
            "\n"
            "  -h, --help     this help; `taylorscope COMMAND --help` for one command\n"
            "  --version      print the version\n"
            "\n"
            "Every command that reads or writes history takes --db FILE. The default\n"
            "database is $TAYLORSCOPE_DB, else $XDG_DATA_HOME/taylorscope/runs.db, else\n"
            "~/.local/share/taylorscope/runs.db");
    if (tc_default_db_path(path, sizeof path, err, sizeof err) == 0) fprintf(f, " (here: %s)", path);
    fprintf(f, ".\n");
}

static void command_help(const tc_command *c) {
    printf("usage: taylorscope %s %s\n\n%s\n", c->name, c->usage, c->help);
}

static int wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) return 0;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return tc_cmd_live(argc, argv);
    const char *first = argv[1];
    if (!strcmp(first, "-h") || !strcmp(first, "--help") || !strcmp(first, "help")) {
        if (argc > 2 && strcmp(first, "help") == 0) {
            for (int i = 0; i < NCOMMANDS; i++)
                if (!strcmp(commands[i].name, argv[2])) {
                    command_help(&commands[i]);
                    return TC_EXIT_OK;
                }
            fprintf(stderr, "taylorscope: no command '%s' (see taylorscope --help)\n", argv[2]);
            return TC_EXIT_USAGE;
        }
        usage(stdout);
        return TC_EXIT_OK;
    }
    if (!strcmp(first, "--version")) {
        printf("taylorscope %s (schema version %d)\n", TC_VERSION, tc_store_latest_version());
        return TC_EXIT_OK;
    }
    for (int i = 0; i < NCOMMANDS; i++) {
        if (strcmp(commands[i].name, first) != 0) continue;
        if (wants_help(argc - 1, argv + 1)) {
            command_help(&commands[i]);
            return TC_EXIT_OK;
        }
        return commands[i].exec(argc - 1, argv + 1);
    }
    /* the live console's options without the word "live" */
    if (!strcmp(first, "--readonly") || !strcmp(first, "--mono") || !strcmp(first, "--no-record") ||
        !strcmp(first, "--db") || !strncmp(first, "--db=", 5))
        return tc_cmd_live(argc, argv);
    if (first[0] == '-')
        fprintf(stderr, "taylorscope: unknown option '%s' (see taylorscope --help)\n", first);
    else
        fprintf(stderr, "taylorscope: no command '%s' (see taylorscope --help)\n", first);
    return TC_EXIT_USAGE;
}

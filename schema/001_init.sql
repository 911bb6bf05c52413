-- 001_init.sql -- the taylorscope history store, schema version 1.
--
-- One SQLite file holds every run the console (or `taylorscope record`)
-- received from one or more agents. The program stamps the file with
-- PRAGMA application_id = 1415674195 (0x54617953, "TayS") and
-- PRAGMA user_version = the number of the last migration applied; files
-- with another application_id are refused and left untouched.
--
-- Encoding of measured figures (steps, layers):
--   * a finite value or +-Inf is stored as a REAL (SQLite keeps +-Inf;
--     the sqlite3 shell prints them as Inf / -Inf);
--   * NaN is stored as NULL, and the column's name is listed in the row's
--     `nan_cols` text, written ',name,name,' (NULL when no column is NaN),
--     so `instr(nan_cols, ',den_min,') > 0` finds NaN den_min;
--   * "not reported" is NULL with the group's bit clear in `have`
--     (1 quality, 2 denominators, 4 q.k and norms, 8 window mass, 16 time);
--     a reported 0 is 0.
-- Times: *_ns columns are unix times in nanoseconds; *_ms are durations
-- in milliseconds.

-- One generation (sampling run) of one agent.
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,             -- local run number (what `show RUN` takes)
    agent_run_id TEXT NOT NULL UNIQUE,  -- run id chosen by the agent; a restarted recorder continues the same row
    agent_id TEXT,                      -- "host:pid" of the sampler process
    agent_version TEXT,                 -- agent library version
    source_url TEXT,                    -- the PUB URL it was recorded from
    model_name TEXT,                    -- model as the host named it at run begin
    model_config TEXT,                  -- model config name ("flux1", ...)
    heads INTEGER,                      -- attention heads
    head_dim INTEGER,                   -- head dimension D
    n_double INTEGER,                   -- double blocks; global layers 0 .. n_double-1
    n_single INTEGER,                   -- single blocks; global layers n_double .. n_double+n_single-1
    text_tokens INTEGER,                -- text tokens before the image tokens
    grid_h INTEGER,                     -- image token grid height (H/16)
    grid_w INTEGER,                     -- image token grid width (W/16)
    sampler TEXT,                       -- sampler name ("euler", ...)
    backend TEXT,                       -- "ref" | "cpu" | "cuda"
    total_steps INTEGER,                -- steps the run was started for
    started_ns INTEGER,                 -- agent's run start time
    initial_config TEXT,                -- knobs at run start: JSON object name -> value
    current_config TEXT,                -- knobs in force at the last header: JSON object
    config_version INTEGER,             -- version of current_config (initial = 1)
    knob_table TEXT,                    -- the agent's knob table: JSON array of {name,type,group,live,default,min,max,choices,description}
    reasons TEXT,                       -- fallback reason names by code: JSON array
    status TEXT NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'finished', 'failed', 'lost')), -- lost: agent silent past the recorder's timeout
    status_message TEXT,                -- run end message (failed: why), or why lost
    steps_done INTEGER,                 -- from the run end
    last_step INTEGER,                  -- highest step recorded
    last_seq INTEGER NOT NULL DEFAULT 0,-- every message with seq <= last_seq is stored or recorded as a gap
    first_seen_ns INTEGER,              -- recorder's clock: first message of the run
    last_seen_ns INTEGER,               -- recorder's clock: last message of the run
    ended_ns INTEGER                    -- recorder's clock: run end received (or marked lost)
);

-- One row per sampling step of a run (the agent's per-step record).
CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs(id), -- runs.id
    step INTEGER NOT NULL,              -- step index as the host numbered it
    seq INTEGER NOT NULL,               -- message sequence number it came in
    received_ns INTEGER,                -- recorder's clock
    sigma REAL,                         -- noise level of the step
    wall_ms REAL,                       -- host step time, step_begin to step_end
    attn_ms REAL,                       -- time inside attention calls
    config_version INTEGER,             -- knob version in force
    calls INTEGER,                      -- attention calls
    n_exact INTEGER,                    -- calls by path taken: exact
    n_taylor INTEGER,                   -- ... taylor
    n_hybrid INTEGER,                   -- ... hybrid
    n_fallback INTEGER,                 -- ... fallback (counts by reason in fallbacks)
    probe_fallbacks INTEGER,            -- denominator_too_small at the probe stage
    have INTEGER NOT NULL,              -- bits of the figure groups reported (see top)
    nan_cols TEXT,                      -- ',col,...,' of the columns that were NaN (see top)
    quality_raw_mean REAL,              -- rel-L2 vs exact on unmodified q/k: mean over sampled queries (have & 1)
    quality_raw_p50 REAL,               -- ... median
    quality_raw_p95 REAL,               -- ... 95th percentile
    quality_raw_max REAL,               -- ... max
    quality_eff_mean REAL,              -- rel-L2 vs exact on modified q/k (truncation error alone): mean (have & 1)
    quality_eff_p50 REAL,               -- ... median
    quality_eff_p95 REAL,               -- ... 95th percentile
    quality_eff_max REAL,               -- ... max
    cos_min REAL,                       -- lowest cosine output vs exact (have & 1)
    den_min REAL,                       -- Taylor / far-field denominators: min (have & 2)
    den_max REAL,                       -- ... max
    den_mean REAL,                      -- ... mean
    den_le_eps INTEGER,                 -- ... count <= eps
    den_nonfinite INTEGER,              -- ... count NaN or Inf
    qk_p50 REAL,                        -- sampled scaled q.k: median (have & 4)
    qk_p99 REAL,                        -- ... 99th percentile
    qk_max REAL,                        -- ... max
    q_norm_mean REAL,                   -- mean |q| (have & 4)
    k_norm_mean REAL,                   -- mean |k| (have & 4)
    window_mass_mean REAL,              -- hybrid: exact softmax mass inside the window, mean (have & 8)
    window_mass_min REAL,               -- ... min
    window INTEGER,                     -- window W or r in force, 0 full, -1 n/a
    w REAL,                             -- far-field weight in force
    n_layers INTEGER,                   -- layer rows that came with the step
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;

-- One row per global layer per step: the heat map's data. Wide rows in
-- arrival order (rowid); the index by (run_id, layer, step) is built when
-- a run ends.
CREATE TABLE layers (
    id INTEGER PRIMARY KEY,             -- arrival order
    run_id INTEGER NOT NULL REFERENCES runs(id), -- runs.id
    step INTEGER NOT NULL,              -- steps.step
    layer INTEGER NOT NULL,             -- global layer: double blocks first, then single
    calls INTEGER,                      -- attention calls of this layer this step
    fallbacks INTEGER,                  -- of which fell back
    path TEXT,                          -- path of the last call: fallback | exact | taylor | hybrid
    reason TEXT,                        -- reason of the last fallback (NULL: none)
    have INTEGER NOT NULL,              -- bits of the figure groups reported (see top)
    nan_cols TEXT,                      -- ',col,...,' of the columns that were NaN (see top)
    quality_raw_mean REAL,              -- mean rel-L2 vs exact, unmodified q/k (have & 1)
    quality_raw_max REAL,               -- max of the same
    quality_eff_mean REAL,              -- mean rel-L2 vs exact, modified q/k (have & 1)
    quality_eff_max REAL,               -- max of the same
    cos_min REAL,                       -- lowest cosine (have & 1)
    den_min REAL,                       -- lowest denominator (have & 2)
    den_le_eps INTEGER,                 -- denominators <= eps (have & 2)
    den_nonfinite INTEGER,              -- denominators NaN or Inf (have & 2)
    qk_p99 REAL,                        -- sampled scaled q.k, 99th percentile (have & 4)
    qk_max REAL,                        -- ... max
    q_norm_mean REAL,                   -- mean |q| (have & 4)
    k_norm_mean REAL,                   -- mean |k| (have & 4)
    window_mass_mean REAL,              -- hybrid: softmax mass inside the window (have & 8)
    window INTEGER,                     -- W or r in force, 0 full, -1 n/a
    w REAL,                             -- far weight in force
    R INTEGER,                          -- feature count used
    attn_ms REAL                        -- kernel time of the layer's calls (have & 16)
);

-- Fallbacks of a step by reason; reasons with no fallback have no row.
CREATE TABLE fallbacks (
    run_id INTEGER NOT NULL REFERENCES runs(id), -- runs.id
    step INTEGER NOT NULL,              -- steps.step
    reason TEXT NOT NULL,               -- stable reason name (SPEC 6), e.g. 'denominator_too_small'
    count INTEGER NOT NULL,             -- calls that fell back for it
    PRIMARY KEY (run_id, step, reason)
) WITHOUT ROWID;

-- Knob changes: requested (validated, queued), applied (in force from
-- effective_step) or rejected (nothing changed; error says why).
CREATE TABLE knob_events (
    id INTEGER PRIMARY KEY,             -- arrival order
    run_id INTEGER NOT NULL REFERENCES runs(id), -- runs.id
    seq INTEGER NOT NULL,               -- message sequence number
    t_ns INTEGER,                       -- agent's clock
    status TEXT NOT NULL CHECK (status IN ('requested', 'applied', 'rejected')),
    origin TEXT,                        -- who asked: console | cli | api | autotune
    request_id TEXT,                    -- the client's request id ('' for autotune/initial)
    config_version INTEGER,             -- version after applying (applied) or expected (requested)
    effective_step INTEGER,             -- step it takes (took) effect at; -1 unknown
    error TEXT,                         -- rejected: the validation message
    UNIQUE (run_id, seq)
);

-- The knobs of each knob event, one row per knob.
CREATE TABLE knob_changes (
    event_id INTEGER NOT NULL REFERENCES knob_events(id), -- knob_events.id
    name TEXT NOT NULL,                 -- knob name
    value TEXT,                         -- new value as text ("0.5", "true", "hybrid")
    old_value TEXT,                     -- value before (applied events; else NULL)
    PRIMARY KEY (event_id, name)
) WITHOUT ROWID;

-- Holes in a run's message sequence seen by the recorder.
CREATE TABLE gaps (
    id INTEGER PRIMARY KEY,             -- detection order
    run_id INTEGER NOT NULL REFERENCES runs(id), -- runs.id
    from_seq INTEGER NOT NULL,          -- first missing sequence number
    to_seq INTEGER NOT NULL,            -- last missing sequence number (inclusive)
    detected_ns INTEGER,                -- recorder's clock
    recovered INTEGER NOT NULL,         -- 1: every message of the range came back by replay; 0: some are lost for good
    missing INTEGER NOT NULL            -- messages of the range not recovered
);

-- 002_stream_health.sql -- schema version 2: the agent's own drop count,
-- and a one-row-per-run overview for people using the sqlite3 shell.

-- Messages the agent's bounded publish queue dropped during the run, as
-- its last heartbeat reported them (NULL: no heartbeat seen). Such drops
-- happen before sequence numbers are given, so they are not gaps.
ALTER TABLE runs ADD COLUMN agent_dropped INTEGER;

-- Steps recorded, gaps and knob events of each run, beside its identity.
CREATE VIEW run_overview AS
SELECT r.id AS id,                      -- runs.id
       r.agent_run_id AS agent_run_id,  -- the agent's run id
       r.status AS status,              -- running | finished | failed | lost
       r.model_name AS model_name,      -- model as the host named it
       r.backend AS backend,            -- ref | cpu | cuda
       r.total_steps AS total_steps,    -- steps planned
       (SELECT count(*) FROM steps s WHERE s.run_id = r.id) AS steps_recorded, -- step rows stored
       (SELECT count(*) FROM gaps g WHERE g.run_id = r.id) AS gaps,            -- gaps detected
       (SELECT coalesce(sum(g.missing), 0) FROM gaps g WHERE g.run_id = r.id) AS messages_lost, -- never recovered
       (SELECT count(*) FROM knob_events k WHERE k.run_id = r.id) AS knob_events, -- knob events
       r.agent_dropped AS agent_dropped, -- dropped by the agent's queue
       r.started_ns AS started_ns       -- agent's run start, unix ns
FROM runs r;

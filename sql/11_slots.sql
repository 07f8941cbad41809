--
-- 11_slots: worker slots (sluice.max_workers = 4 here), and the errors a
-- pipeline meets when what it needs is gone.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/slots

\i test/regress/wait_until.sql

\! rm -rf "$SLUICE_TEST_DIR"/slots && mkdir -p "$SLUICE_TEST_DIR"/slots
\set f :dir/1.csv
COPY (SELECT 1 AS id) TO :'f' WITH (FORMAT csv, HEADER);
CREATE TABLE slots_t (id int);
SHOW sluice.max_workers;

-- five running pipelines, four slots: the fifth waits, and says so once
SELECT sluice.create_pipeline('slots_' || i, sluice.csv_source(:'dir', 'id int'),
                              sluice.append_sink('slots_t'), trigger => '1 second')
  FROM generate_series(1, 6) AS i;
SELECT sluice.start('slots_' || i) FROM generate_series(1, 4) AS i;
SELECT wait_until($$(SELECT count(*) = 4 FROM sluice.pipelines WHERE worker_pid IS NOT NULL)$$);
SELECT sluice.start('slots_5');
SELECT wait_until($$EXISTS (SELECT 1 FROM sluice.errors WHERE pipeline = 'slots_5')$$);
SELECT pg_sleep(2.5);   -- the launcher looks again at every worker exit and start; no new report
SELECT pipeline, sqlstate, message, detail, hint FROM sluice.errors WHERE pipeline = 'slots_5';
SELECT name, state, worker_pid IS NOT NULL AS has_worker, last_error FROM sluice.pipelines
 WHERE name = 'slots_5';

-- run_once() of a sixth finds no slot
SELECT sluice.run_once('slots_6');

-- a slot comes free: the waiting pipeline gets it
SELECT sluice.stop('slots_1');
SELECT wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'slots_5')$$);
SELECT wait_until($$(SELECT count(*) = 5 FROM slots_t)$$);
SELECT count(*) AS rows_once_each FROM slots_t;
SELECT sluice.stop('slots_' || i) FROM generate_series(2, 5) AS i;
SELECT wait_until($$(SELECT count(*) = 0 FROM sluice.pipelines WHERE worker_pid IS NOT NULL)$$);
SELECT sluice.drop_pipeline('slots_' || i) FROM generate_series(1, 6) AS i;

-- a state other than running or stopped is refused
SELECT sluice._set_state('slots_x', 'failed');
SELECT sluice._set_state(NULL, 'running');

-- the function of a function sink is gone
CREATE FUNCTION slots_fn(batch_id bigint, batch regclass) RETURNS void LANGUAGE sql AS 'SELECT';
SELECT sluice.create_pipeline('slots_fn', sluice.csv_source(:'dir', 'id int'),
                              sluice.function_sink('slots_fn(bigint, regclass)'));
DROP FUNCTION slots_fn(bigint, regclass);
SELECT sluice.run_once('slots_fn');
SELECT name, state, last_error FROM sluice.pipelines WHERE name = 'slots_fn';
SELECT sluice.drop_pipeline('slots_fn');

-- a table a pipeline writes into cannot be dropped while the pipeline exists
CREATE SCHEMA slots_s;
CREATE TABLE slots_s.t (id int);
SELECT sluice.create_pipeline('slots_drop', sluice.csv_source(:'dir', 'id int'),
                              sluice.append_sink('slots_s.t'));
DROP TABLE slots_s.t;
DROP SCHEMA slots_s CASCADE;
SELECT to_regclass('slots_s.t') IS NOT NULL AS still_there;
-- other tables go as usual, and so does the target once the pipeline is gone
CREATE TABLE slots_s.other (id int);
DROP TABLE slots_s.other;
SELECT sluice.drop_pipeline('slots_drop');
DROP SCHEMA slots_s CASCADE;

DROP TABLE slots_t;
DROP FUNCTION wait_until(text);
\! rm -rf "$SLUICE_TEST_DIR"/slots

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

-- a run_once() worker waits warm for the next call of its pipeline
SHOW sluice.run_once_idle_timeout;
\! mkdir "$SLUICE_TEST_DIR"/slots/warm
\set wdir :dir/warm
CREATE TABLE slots_seen (batch_id bigint, pid int, work_mem text);
CREATE FUNCTION slots_record(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO slots_seen VALUES (batch_id, pg_backend_pid(), current_setting('work_mem'));
END
$$;
SELECT sluice.create_pipeline('slots_warm', sluice.csv_source(:'wdir', 'id int'),
                              sluice.function_sink('slots_record(bigint, regclass)'));
\set f :wdir/1.csv
COPY (SELECT 1 AS id) TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.run_once('slots_warm');
\set f :wdir/2.csv
COPY (SELECT 2 AS id) TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.run_once('slots_warm');
SELECT sluice.run_once('slots_warm');
-- one worker served the three calls; it waits, but runs nothing: the pipeline shows no worker
SELECT count(DISTINCT pid) AS workers, count(*) AS batches FROM slots_seen;
SELECT count(*) AS waiting FROM pg_stat_activity
 WHERE backend_type = 'sluice worker' AND application_name = 'slots_warm' AND pid IN (SELECT pid FROM slots_seen);
SELECT state, worker_pid, workers FROM sluice.pipelines WHERE name = 'slots_warm';
-- the owner's settings changed (they apply as a worker connects): a new worker has them
ALTER ROLE CURRENT_USER SET work_mem = '5MB';
\set f :wdir/3.csv
COPY (SELECT 3 AS id) TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.run_once('slots_warm');
ALTER ROLE CURRENT_USER RESET work_mem;
SELECT batch_id, pid = (SELECT pid FROM slots_seen WHERE batch_id = 1) AS first_worker, work_mem
  FROM slots_seen ORDER BY batch_id;
-- it took the first one's slot, and the first one left
SELECT wait_until($$(SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE backend_type = 'sluice worker' AND application_name = 'slots_warm')$$);
-- a dropped pipeline's warm worker leaves
SELECT sluice.drop_pipeline('slots_warm');
SELECT wait_until($$(SELECT count(*) = 0 FROM pg_stat_activity
                      WHERE backend_type = 'sluice worker' AND application_name = 'slots_warm')$$);

-- warm workers give their slots up: four wait warm, all slots are theirs,
-- yet a started pipeline and a call of a fifth pipeline get one
TRUNCATE slots_t;
SELECT sluice.create_pipeline('slots_w' || i, sluice.csv_source(:'dir', 'id int', pattern => '1.csv'),
                              sluice.append_sink('slots_t'))
  FROM generate_series(1, 6) AS i;
SELECT sluice.run_once('slots_w' || i) FROM generate_series(1, 4) AS i;
SELECT count(*) AS warm FROM pg_stat_activity
 WHERE backend_type = 'sluice worker' AND application_name LIKE 'slots\_w_';
SELECT sluice.start('slots_w5');
SELECT wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'slots_w5')$$);
SELECT sluice.run_once('slots_w6');
SELECT wait_until($$(SELECT count(*) = 6 FROM slots_t)$$);
SELECT sluice.stop('slots_w5');
SELECT count(DISTINCT id) AS ids, count(*) AS rows_once_per_pipeline FROM slots_t;
SELECT sluice.drop_pipeline('slots_w' || i) FROM generate_series(1, 6) AS i;

-- a cancelled call stops the warm worker too; the batch in flight rolls back
CREATE TABLE slots_slow (id int);
CREATE FUNCTION slots_slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(1);
    RETURN NEW;
END
$$;
CREATE TRIGGER slow BEFORE INSERT ON slots_slow FOR EACH ROW EXECUTE FUNCTION slots_slow_row();
\! mkdir "$SLUICE_TEST_DIR"/slots/slow
\set sdir :dir/slow
SELECT sluice.create_pipeline('slots_slow', sluice.csv_source(:'sdir', 'id int'),
                              sluice.append_sink('slots_slow'));
SELECT sluice.run_once('slots_slow');
\set f :sdir/1.csv
COPY (SELECT generate_series(1, 3) AS id) TO :'f' WITH (FORMAT csv, HEADER);
SET statement_timeout = '1s';
SELECT sluice.run_once('slots_slow');
RESET statement_timeout;
SELECT wait_until($$(SELECT count(*) = 0 FROM pg_stat_activity
                      WHERE backend_type = 'sluice worker' AND application_name = 'slots_slow')$$);
SELECT count(*) FROM slots_slow;
DROP TRIGGER slow ON slots_slow;
SELECT sluice.run_once('slots_slow');
SELECT count(*) FROM slots_slow;
SELECT batch_id, status, attempts FROM sluice.progress('slots_slow');

-- with sluice.run_once_idle_timeout = 0, the worker leaves once it is done
ALTER SYSTEM SET sluice.run_once_idle_timeout = 0;
SELECT pg_reload_conf();
SELECT sluice.run_once('slots_slow');
SELECT wait_until($$(SELECT count(*) = 0 FROM pg_stat_activity
                      WHERE backend_type = 'sluice worker' AND application_name = 'slots_slow')$$);
SELECT sluice.run_once('slots_slow');
SELECT wait_until($$(SELECT count(*) = 0 FROM pg_stat_activity
                      WHERE backend_type = 'sluice worker' AND application_name = 'slots_slow')$$);
ALTER SYSTEM RESET sluice.run_once_idle_timeout;
SELECT pg_reload_conf();
SELECT sluice.drop_pipeline('slots_slow');

DROP TABLE slots_t;
DROP TABLE slots_seen;
DROP TABLE slots_slow;
DROP FUNCTION slots_record(bigint, regclass);
DROP FUNCTION slots_slow_row();
DROP FUNCTION wait_until(text);
\! rm -rf "$SLUICE_TEST_DIR"/slots

-- A started pipeline: its worker, the order and size of its batches, stop and start.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set in :test_dir/running/in
\set stage :test_dir/running/stage
\! rm -rf "$SLUICE_TEST_DIR"/running && mkdir -p "$SLUICE_TEST_DIR"/running/in "$SLUICE_TEST_DIR"/running/stage
CREATE TABLE pgtap_running_target (id int, f text);

SELECT plan(23);

SELECT is((SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice launcher'), 1::bigint,
          'one sluice launcher runs');

SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_running',
                             sluice.csv_source(%L, 'id int, f text', max_files_per_trigger => 2),
                             sluice.append_sink('pgtap_running_target'), '200 milliseconds',
                             backpressure => false)$$, :'in'),
                'create_pipeline with max_files_per_trigger 2 (and no backpressure, whose first batch would take one)');
SELECT lives_ok($$SELECT sluice.start('pgtap_running')$$, 'start()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'pgtap_running')$$),
          'the launcher starts a worker');
SELECT is((SELECT backend_type FROM pg_stat_activity
            WHERE pid = (SELECT worker_pid FROM sluice.pipelines WHERE name = 'pgtap_running')),
          'sluice worker', 'the worker''s backend_type is sluice worker');
SELECT is((SELECT application_name FROM pg_stat_activity
            WHERE pid = (SELECT worker_pid FROM sluice.pipelines WHERE name = 'pgtap_running')),
          'pgtap_running', 'the worker''s application_name is the pipeline name');
SELECT ok(test_util.wait_until($$(SELECT wait_event_type = 'Extension' FROM pg_stat_activity
                                 WHERE pid = (SELECT worker_pid FROM sluice.pipelines WHERE name = 'pgtap_running'))$$),
          'an idle worker sleeps on its latch (wait_event_type Extension)');

-- five files appear at once (one rename of a directory onto the empty one),
-- with mtimes that do not follow their names: e, c, a, d, b
\set f :stage/a.csv
COPY (SELECT g, 'a' FROM generate_series(1, 1) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :stage/b.csv
COPY (SELECT g, 'b' FROM generate_series(2, 3) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :stage/c.csv
COPY (SELECT g, 'c' FROM generate_series(4, 6) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :stage/d.csv
COPY (SELECT g, 'd' FROM generate_series(7, 10) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :stage/e.csv
COPY (SELECT g, 'e' FROM generate_series(11, 15) g) TO :'f' WITH (FORMAT csv, HEADER);
\! cd "$SLUICE_TEST_DIR"/running/stage && touch -d @1704067201 e.csv && touch -d @1704067202 c.csv && touch -d @1704067203 a.csv && touch -d @1704067204 d.csv && touch -d @1704067205 b.csv
\! mv -T "$SLUICE_TEST_DIR"/running/stage "$SLUICE_TEST_DIR"/running/in

SELECT ok(test_util.wait_until($$(SELECT count(*) = 15 FROM pgtap_running_target)$$),
          'the worker ingests files that appear after start');
SELECT ok(test_util.wait_until($$(SELECT batches = 3 AND files_pending = 0 FROM sluice.pipelines WHERE name = 'pgtap_running')$$),
          'in three batches');
SELECT is(ARRAY(SELECT files FROM sluice.progress('pgtap_running') ORDER BY batch_id), ARRAY[2, 2, 1],
          'at most max_files_per_trigger files per batch');
SELECT is(ARRAY(SELECT regexp_replace(f->>'path', '^.*/', '')
                  FROM sluice.progress('pgtap_running') p, jsonb_array_elements(p.end_offset->'files') WITH ORDINALITY AS x(f, n)
                 ORDER BY p.batch_id, x.n),
          ARRAY['e.csv', 'c.csv', 'a.csv', 'd.csv', 'b.csv'],
          'files are read oldest mtime first');
SELECT is(ARRAY(SELECT input_rows FROM sluice.progress('pgtap_running') ORDER BY batch_id), ARRAY[8, 5, 2]::bigint[],
          'each batch counts its rows');
SELECT is((SELECT count(DISTINCT id) FROM pgtap_running_target), 15::bigint, 'every row once');
SELECT is((SELECT state FROM sluice.pipelines WHERE name = 'pgtap_running'), 'running', 'the pipeline keeps running');

-- stop: the worker exits; a file added meanwhile waits for the next start
SELECT lives_ok($$SELECT sluice.stop('pgtap_running')$$, 'stop()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'pgtap_running')
                               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                                WHERE backend_type = 'sluice worker' AND application_name = 'pgtap_running')$$),
          'stop() makes the worker exit');
\set f :in/f.csv
COPY (SELECT g, 'f' FROM generate_series(16, 18) g) TO :'f' WITH (FORMAT csv, HEADER);
SELECT pg_sleep(0.6);  -- three trigger intervals
SELECT is((SELECT count(*) FROM pgtap_running_target), 15::bigint, 'a stopped pipeline reads nothing');
SELECT is((SELECT files_pending FROM sluice.pipelines WHERE name = 'pgtap_running'), 0::bigint,
          'files_pending is what the worker saw last: nothing lists the directory of a stopped pipeline');
SELECT lives_ok($$SELECT sluice.start('pgtap_running')$$, 'start() again');
SELECT ok(test_util.wait_until($$(SELECT count(*) = 18 FROM pgtap_running_target)$$),
          'files added while stopped are ingested after start');
SELECT is((SELECT batch_id FROM sluice.progress('pgtap_running', 1)), 4::bigint, 'as batch 4');

SELECT lives_ok($$SELECT sluice.drop_pipeline('pgtap_running')$$, 'drop_pipeline()');
SELECT ok(test_util.wait_until($$NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                            WHERE backend_type = 'sluice worker' AND application_name = 'pgtap_running')$$),
          'dropping a running pipeline ends its worker');

SELECT * FROM finish();

DROP TABLE pgtap_running_target;
\! rm -rf "$SLUICE_TEST_DIR"/running

-- A running pipeline that hits a bad file, is fixed and retried; a file that
-- changes after it was processed.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/failure
\! rm -rf "$SLUICE_TEST_DIR"/failure && mkdir -p "$SLUICE_TEST_DIR"/failure
CREATE TABLE pgtap_failure_target (id int PRIMARY KEY, v text);

SELECT plan(24);

SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_failure',
                             sluice.csv_source(%L, 'id int, v text'),
                             sluice.append_sink('pgtap_failure_target'), '200 milliseconds')$$, :'dir'),
                'create_pipeline');
SELECT lives_ok($$SELECT sluice.start('pgtap_failure')$$, 'start()');

-- batch 1: a good file
\set f :dir/good.csv
COPY (SELECT g, 'good' FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER);
SELECT ok(test_util.wait_until($$(SELECT count(*) = 3 FROM pgtap_failure_target)$$), 'a good file is ingested');

-- batch 2: a malformed line on line 3 of the file
\set f :dir/bad.csv
COPY (SELECT * FROM (VALUES ('4', 'bad'), ('five', 'bad'), ('6', 'bad')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT ok(test_util.wait_until($$(SELECT state = 'failed' FROM sluice.pipelines WHERE name = 'pgtap_failure')$$),
          'a bad file makes the pipeline fail');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'pgtap_failure')
                               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                                WHERE backend_type = 'sluice worker' AND application_name = 'pgtap_failure')$$),
          'the worker of a failed pipeline exits');
SELECT results_eq($$SELECT batch_id, sqlstate, message FROM sluice.errors WHERE pipeline = 'pgtap_failure'$$,
                  $$VALUES (2::bigint, '22P02', 'invalid input syntax for type integer: "five"')$$,
                  'the error is in sluice.errors');
SELECT matches((SELECT replace(context, :'dir', '<dir>') FROM sluice.errors WHERE pipeline = 'pgtap_failure'),
               'line 3.*batch 2, file "<dir>/bad\.csv"',
               'its context names the line, the batch and the file');
SELECT is((SELECT last_error FROM sluice.pipelines WHERE name = 'pgtap_failure'),
          'invalid input syntax for type integer: "five"', 'sluice.pipelines shows the last error');
SELECT is((SELECT count(*) FROM pgtap_failure_target), 3::bigint, 'nothing of the failed batch is written');
SELECT results_eq($$SELECT status, attempts FROM sluice.progress('pgtap_failure', 1)$$,
                  $$VALUES ('planned', 1)$$, 'the failed batch stays planned');
SELECT pg_sleep(1.5);  -- longer than sluice.restart_delay
SELECT ok(NOT EXISTS (SELECT 1 FROM pg_stat_activity
                       WHERE backend_type = 'sluice worker' AND application_name = 'pgtap_failure'),
          'the launcher does not restart a failed pipeline');

-- fixed, then start() retries the same batch
\set f :dir/bad.csv
COPY (SELECT * FROM (VALUES ('4', 'fixed'), ('5', 'fixed'), ('6', 'fixed')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT lives_ok($$SELECT sluice.start('pgtap_failure')$$, 'start() a failed pipeline');
SELECT ok(test_util.wait_until($$(SELECT count(*) = 6 FROM pgtap_failure_target)$$), 'the fixed file is ingested');
SELECT results_eq($$SELECT batch_id, status, attempts, input_rows FROM sluice.progress('pgtap_failure')$$,
                  $$VALUES (2::bigint, 'committed', 2, 3::bigint), (1::bigint, 'committed', 1, 3::bigint)$$,
                  'as the same batch id, on its second attempt');
SELECT results_eq($$SELECT id, v FROM pgtap_failure_target ORDER BY id$$,
                  $$VALUES (1, 'good'), (2, 'good'), (3, 'good'), (4, 'fixed'), (5, 'fixed'), (6, 'fixed')$$,
                  'its rows appear once');
SELECT is((SELECT state FROM sluice.pipelines WHERE name = 'pgtap_failure'), 'running', 'the pipeline runs again');

-- a processed file that changes is reported, and not read again
\set f :dir/good.csv
COPY (SELECT g, 'changed' FROM generate_series(100, 110) g) TO :'f' WITH (FORMAT csv, HEADER);
SELECT ok(test_util.wait_until($$EXISTS (SELECT 1 FROM sluice.errors WHERE pipeline = 'pgtap_failure' AND sqlstate = '01000')$$),
          'a file changed after it was processed is reported');
SELECT results_eq($$SELECT batch_id, message FROM sluice.errors WHERE pipeline = 'pgtap_failure' AND sqlstate = '01000'$$,
                  format($$VALUES (1::bigint, %L)$$, format('file "%s/good.csv" changed after it was processed', :'dir')),
                  'with the batch that read it');
SELECT is((SELECT count(*) FROM sluice.batch b JOIN sluice.pipeline p ON p.id = b.pipeline_id
            WHERE p.name = 'pgtap_failure'), 2::bigint, 'no batch reads it again');
SELECT pg_sleep(0.6);  -- three trigger intervals
SELECT is((SELECT count(*) FROM pgtap_failure_target), 6::bigint, 'its new rows are not ingested');
SELECT is((SELECT count(*) FROM sluice.errors WHERE pipeline = 'pgtap_failure' AND sqlstate = '01000'), 1::bigint,
          'it is reported once');
SELECT is((SELECT state FROM sluice.pipelines WHERE name = 'pgtap_failure'), 'running', 'a changed file does not fail the pipeline');
SELECT is((SELECT last_error FROM sluice.pipelines WHERE name = 'pgtap_failure'),
          'invalid input syntax for type integer: "five"', 'last_error shows the last failure, not the warning');

SELECT lives_ok($$SELECT sluice.drop_pipeline('pgtap_failure')$$, 'drop_pipeline()');

SELECT * FROM finish();

DROP TABLE pgtap_failure_target;
\! rm -rf "$SLUICE_TEST_DIR"/failure

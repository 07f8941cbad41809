-- A batch that fails for a while (a sink raising serialization_failure):
-- sluice.pipelines shows the error, the batch's attempts and when it is
-- tried again while that lasts, and nothing once it commits.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/retries
\! rm -rf "$SLUICE_TEST_DIR"/retries && mkdir -p "$SLUICE_TEST_DIR"/retries
CREATE TABLE pgtap_retries_flag (ok boolean);
CREATE TABLE pgtap_retries_calls (batch_id bigint, n bigint);
CREATE FUNCTION pgtap_retries_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $f$
DECLARE
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgtap_retries_flag WHERE ok) THEN
        RAISE EXCEPTION 'not yet' USING ERRCODE = 'serialization_failure';
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', batch) INTO n;
    INSERT INTO pgtap_retries_calls VALUES (batch_id, n);
END $f$;

SELECT plan(9);

\set f :dir/a.csv
COPY (SELECT g, 'a' FROM generate_series(1, 4) g) TO :'f' WITH (FORMAT csv, HEADER);
SELECT is((SELECT attempts FROM sluice.pipelines WHERE name = 'pgtap_retries'), NULL, 'no pipeline yet');
SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_retries',
                             sluice.csv_source(%L, 'id int, v text'),
                             sluice.function_sink('pgtap_retries_sink(bigint, regclass)'), '100 milliseconds')$$, :'dir'),
                'create_pipeline');
SELECT lives_ok($$SELECT sluice.start('pgtap_retries')$$, 'start()');
SELECT ok(test_util.wait_until($$(SELECT attempts >= 2 FROM sluice.pipelines WHERE name = 'pgtap_retries')$$),
          'the batch is tried again');
SELECT is((SELECT format('%s, %s, next try soon: %s', state, last_error,
                         next_retry_at BETWEEN now() - interval '1 second' AND now() + interval '1 minute')
             FROM sluice.pipelines WHERE name = 'pgtap_retries'),
          'running, not yet, next try soon: t',
          'while it fails: running, the error, and when it is tried again');
SELECT cmp_ok((SELECT count(*) FROM sluice.errors WHERE pipeline = 'pgtap_retries' AND sqlstate = '40001')::int, '>=', 1,
              'each failure is in sluice.errors');
INSERT INTO pgtap_retries_flag VALUES (true);
SELECT ok(test_util.wait_until($$(SELECT batches = 1 FROM sluice.pipelines WHERE name = 'pgtap_retries')$$),
          'the batch commits once the sink takes it');
SELECT is((SELECT format('%s %s', attempts, next_retry_at) FROM sluice.pipelines WHERE name = 'pgtap_retries'),
          ' ', 'nothing waits once it committed: attempts and next_retry_at are NULL');
SELECT results_eq($$SELECT batch_id, n FROM pgtap_retries_calls$$, $$VALUES (1::bigint, 4::bigint)$$,
                  'the sink ran once, with the batch''s 4 rows');

SELECT sluice.drop_pipeline('pgtap_retries');
DROP FUNCTION pgtap_retries_sink(bigint, regclass);
DROP TABLE pgtap_retries_flag, pgtap_retries_calls;
SELECT * FROM finish();

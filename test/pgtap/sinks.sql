-- A started merge pipeline over a loans feed in which later files update the
-- loans of earlier ones: the table ends with the last state of each loan, and
-- replaying every file changes nothing.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/sinks
SET sluice_test.dir = :'dir';   -- for the DO block below
\! rm -rf "$SLUICE_TEST_DIR"/sinks && mkdir -p "$SLUICE_TEST_DIR"/sinks/in "$SLUICE_TEST_DIR"/sinks/stage1 "$SLUICE_TEST_DIR"/sinks/stage2

-- The feed: 6 files of 45 lines over 50 loans: each file updates 40 of them,
-- and 5 of those twice (lines 41..45 repeat the loans of lines 3, 6, .., 15).
-- File k is named loans_<name>.csv, where names do not follow the file order
-- (the mtime order): k = 1..6 is named f, b, d, a, e, c.
CREATE TEMP TABLE feed AS
SELECT k, line, name,
       (CASE WHEN line <= 40 THEN line ELSE (line - 40) * 3 END * 11 + k * 17) % 50 + 1 AS loan_id,
       (ARRAY['current', 'delinquent', 'foreclosure', 'paid_off'])[(line + k) % 4 + 1] AS status,
       CASE WHEN (line + k) % 4 = 3 THEN 0.00 ELSE round(((k * 1000 + line) * 37.13)::numeric % 100000, 2) END AS balance,
       '2024-01-01 00:00:00+00'::timestamptz + (k * 100 + line) * interval '1 minute' AS updated_at
  FROM generate_series(1, 6) AS k,
       LATERAL (SELECT (ARRAY['f', 'b', 'd', 'a', 'e', 'c'])[k] AS name) AS n,
       generate_series(1, 45) AS line;
-- the last state of each loan: the last line of the last file it is in
CREATE TEMP TABLE expected AS
SELECT DISTINCT ON (loan_id) loan_id, status, balance, updated_at
  FROM feed ORDER BY loan_id, k DESC, line DESC;

DO $$
DECLARE
    names text[] := ARRAY['f', 'b', 'd', 'a', 'e', 'c'];
    path text;
BEGIN
    FOR i IN 1 .. 6 LOOP
        path := format('%s/stage%s/loans_%s.csv', current_setting('sluice_test.dir'),
                       CASE WHEN i <= 3 THEN 1 ELSE 2 END, names[i]);
        EXECUTE format('COPY (SELECT loan_id, status, balance, updated_at FROM feed WHERE k = %s ORDER BY line)'
                       ' TO %L WITH (FORMAT csv, HEADER)', i, path);
        EXECUTE format('COPY (SELECT 1 WHERE false) TO PROGRAM %L', format('touch -d @%s %s', 1704067200 + i, path));
    END LOOP;
END
$$;

CREATE TABLE pgtap_loans (loan_id int PRIMARY KEY, status text NOT NULL, balance numeric(12,2) NOT NULL,
                          updated_at timestamptz NOT NULL, first_seen timestamptz NOT NULL DEFAULT clock_timestamp());

SELECT plan(18);

SELECT ok((SELECT count(*) FROM expected) BETWEEN 30 AND 60
          AND (SELECT count(*) FROM (SELECT k, loan_id FROM feed GROUP BY 1, 2 HAVING count(*) > 1) d) > 0
          AND (SELECT count(*) FROM (SELECT loan_id FROM feed GROUP BY 1 HAVING count(DISTINCT k) > 2) d) > 0,
          'the feed repeats loans within files and across files');

SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_loans',
                             sluice.csv_source(%L, 'loan_id int, status text, balance numeric, updated_at timestamptz',
                                               max_files_per_trigger => 2),
                             sluice.merge_sink('pgtap_loans', '{loan_id}'), '200 milliseconds',
                             backpressure => false)$$, :'dir' || '/in'),
                'create_pipeline with a merge sink on loan_id');
SELECT lives_ok($$SELECT sluice.start('pgtap_loans')$$, 'start()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'pgtap_loans')$$),
          'the launcher starts a worker');

-- the first three files appear at once (a rename of a directory onto the empty one)
\! mv -T "$SLUICE_TEST_DIR"/sinks/stage1 "$SLUICE_TEST_DIR"/sinks/in
SELECT ok(test_util.wait_until($$(SELECT batches = 2 AND files_pending = 0 FROM sluice.pipelines WHERE name = 'pgtap_loans')$$),
          'the first three files are merged in two batches');
SELECT results_eq($$SELECT loan_id, status, balance, updated_at FROM pgtap_loans ORDER BY loan_id$$,
                  $$SELECT DISTINCT ON (loan_id) loan_id, status, balance::numeric(12,2), updated_at
                      FROM feed WHERE k <= 3 ORDER BY loan_id, k DESC, line DESC$$,
                  'after them, each loan is in its last state so far');

-- then the other three, one by one: later files update the loans of earlier ones
\! mv "$SLUICE_TEST_DIR"/sinks/stage2/* "$SLUICE_TEST_DIR"/sinks/in/
SELECT ok(test_util.wait_until($$(SELECT count(*) = 6 AND bool_and(committed) FROM sluice.file
                                 WHERE pipeline_id = (SELECT id FROM sluice.pipeline WHERE name = 'pgtap_loans'))
                               AND (SELECT files_pending = 0 FROM sluice.pipelines WHERE name = 'pgtap_loans')$$),
          'the next three files are merged');
SELECT results_eq($$SELECT loan_id, status, balance, updated_at FROM pgtap_loans ORDER BY loan_id$$,
                  $$SELECT loan_id, status, balance::numeric(12,2), updated_at FROM expected ORDER BY loan_id$$,
                  'the table holds the last state of each loan, in file then line order');
SELECT is((SELECT count(*) FROM pgtap_loans WHERE (loan_id, updated_at) NOT IN (SELECT loan_id, max(updated_at) FROM feed GROUP BY 1)),
          0::bigint, 'which is each loan''s latest update');
SELECT is(ARRAY(SELECT regexp_replace(f->>'path', '^.*/', '')
                  FROM sluice.progress('pgtap_loans', 100) p, jsonb_array_elements(p.end_offset->'files') WITH ORDINALITY AS x(f, n)
                 ORDER BY p.batch_id, x.n),
          ARRAY['loans_f.csv', 'loans_b.csv', 'loans_d.csv', 'loans_a.csv', 'loans_e.csv', 'loans_c.csv'],
          'files are read oldest mtime first');
SELECT is(ARRAY(SELECT sink_rows FROM sluice.progress('pgtap_loans', 100) ORDER BY batch_id),
          ARRAY(SELECT (SELECT count(DISTINCT loan_id) FROM feed
                         WHERE 'loans_' || name || '.csv' IN (SELECT regexp_replace(f->>'path', '^.*/', '')
                                                                FROM jsonb_array_elements(p.end_offset->'files') f))
                  FROM sluice.progress('pgtap_loans', 100) p ORDER BY batch_id),
          'sink_rows of a batch is the number of distinct loans in its files');
SELECT is((SELECT input_rows FROM sluice.pipelines WHERE name = 'pgtap_loans'), 270::numeric,
          'input_rows counts every line');

-- replay: forget what was read, and run again over the same files
CREATE TEMP TABLE before AS
SELECT md5(string_agg(l::text, '|' ORDER BY loan_id)) AS md5, count(*) AS n FROM pgtap_loans l;
SELECT lives_ok($$SELECT sluice.stop('pgtap_loans')$$, 'stop()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'pgtap_loans')$$),
          'the worker exits');
DELETE FROM sluice.file WHERE pipeline_id = (SELECT id FROM sluice.pipeline WHERE name = 'pgtap_loans');
DELETE FROM sluice.batch WHERE pipeline_id = (SELECT id FROM sluice.pipeline WHERE name = 'pgtap_loans');
UPDATE sluice.pipeline SET committed_batch = 0 WHERE name = 'pgtap_loans';
SELECT lives_ok($$SELECT sluice.start('pgtap_loans')$$, 'start() again, with nothing read');
SELECT ok(test_util.wait_until($$(SELECT batches = 3 AND files_pending = 0 FROM sluice.pipelines WHERE name = 'pgtap_loans')$$),
          'every file is read again');
SELECT is((SELECT md5(string_agg(l::text, '|' ORDER BY loan_id)) FROM pgtap_loans l), (SELECT md5 FROM before),
          'replaying every file leaves the table exactly as it was');

SELECT lives_ok($$SELECT sluice.drop_pipeline('pgtap_loans')$$, 'drop_pipeline()');

SELECT * FROM finish();

DROP TABLE pgtap_loans;
\! rm -rf "$SLUICE_TEST_DIR"/sinks

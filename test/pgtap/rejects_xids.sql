-- on_error => 'reject' over one file of 200,000 rows with 5 bad lines: a bad
-- integer, a bad timestamp, a wrong column count, and two rows the target
-- refuses (NOT NULL, CHECK).  The 199,995 good rows commit, the 5 bad ones
-- are in sluice.rejects with their line numbers, and isolating them takes
-- fewer than 2,000 transaction ids (one per row would take 200,000).
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/rejects_xids
\set feed :dir/feed.csv
\! rm -rf "$SLUICE_TEST_DIR"/rejects_xids && mkdir -p "$SLUICE_TEST_DIR"/rejects_xids

-- line n of the file is row n - 1 (line 1 is the header)
CREATE TEMP TABLE good AS
SELECT id, id % 1000 AS qty, '2024-01-01 00:00:00+00'::timestamptz + id * interval '1 second' AS ts, 'v' || id AS v
  FROM generate_series(1, 200000) AS id;
CREATE TEMP TABLE bad (line bigint, csv text, sqlstate text);
INSERT INTO bad VALUES
    (20001, '20000,x7,2024-01-01 05:33:20+00,v20000', '22P02'),     -- not an integer
    (60001, '60000,0,2024-13-45 16:40:00+00,v60000', '22008'),      -- no such date
    (100001, '100000,0,2024-01-02 03:46:40+00', '22P04'),           -- a column short
    (140001, '140000,,2024-01-02 14:53:20+00,v140000', '23502'),    -- NOT NULL qty
    (180001, '180000,-1,2024-01-03 02:00:00+00,v180000', '23514');  -- CHECK (qty >= 0)
DELETE FROM good WHERE id + 1 IN (SELECT line FROM bad);
COPY (SELECT csv FROM (SELECT 1 AS line, 'id,qty,ts,v' AS csv
                       UNION ALL SELECT id + 1, format('%s,%s,%s,%s', id, qty, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'), v) FROM good
                       UNION ALL SELECT line, csv FROM bad) AS f ORDER BY line)
  TO :'feed';

CREATE TABLE pgtap_rejects_xids (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0), ts timestamptz NOT NULL, v text);

SELECT plan(10);

SELECT is((SELECT count(*) FROM good), 199995::bigint, 'the feed has 199,995 good rows and 5 bad lines');
SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_rejects_xids',
                             sluice.csv_source(%L, 'id int, qty int, ts timestamptz, v text',
                                               on_error => 'reject'),
                             sluice.append_sink('pgtap_rejects_xids'))$$, :'dir'),
                'create_pipeline with on_error => ''reject''');

-- each of these statements takes a transaction id of its own
CREATE TEMP TABLE xid_before AS SELECT pg_current_xact_id()::text::bigint AS xid;
CREATE TEMP TABLE batches AS SELECT sluice.run_once('pgtap_rejects_xids') AS n;
CREATE TEMP TABLE xid_after AS SELECT pg_current_xact_id()::text::bigint AS xid;

SELECT is((SELECT n FROM batches), 1::bigint, 'run_once reads the file in one batch');
SELECT results_eq($$SELECT status, attempts, input_rows, sink_rows, rejected_rows FROM sluice.progress('pgtap_rejects_xids')$$,
                  $$VALUES ('committed', 2, 200000::bigint, 199995::bigint, 5::bigint)$$,
                  'the batch commits on its second, careful attempt: 199,995 rows written, 5 rejected');
SELECT is((SELECT count(*) FROM pgtap_rejects_xids), 199995::bigint, 'the target holds 199,995 rows');
SELECT is((SELECT count(*) FROM (SELECT id, qty, ts, v FROM pgtap_rejects_xids
                                 EXCEPT SELECT id, qty, ts, v FROM good) AS d), 0::bigint,
          'which are the good rows, as they are in the file');
SELECT results_eq($$SELECT file, line, sqlstate FROM sluice.rejects WHERE pipeline = 'pgtap_rejects_xids' ORDER BY line$$,
                  format($$SELECT %L, line, sqlstate FROM bad ORDER BY line$$, :'feed'),
                  'the 5 bad lines are rejected with their file, line number and SQLSTATE');
-- (a refused row's record prints its timestamp in the worker's time zone)
SELECT results_eq($$SELECT line, CASE WHEN sqlstate LIKE '23%' THEN regexp_replace(raw_line, ',"[^"]*",', ',<ts>,') ELSE raw_line END
                      FROM sluice.rejects WHERE pipeline = 'pgtap_rejects_xids' ORDER BY line$$,
                  $$SELECT line, CASE WHEN sqlstate LIKE '23%' THEN format('(%s)', regexp_replace(csv, ',[^,]*\+00,', ',<ts>,')) ELSE csv END
                      FROM bad ORDER BY line$$,
                  'lines that do not parse keep their text, rows the sink refuses their record');
SELECT cmp_ok((SELECT a.xid - b.xid FROM xid_before b, xid_after a), '<', 2000::bigint,
              'isolating them takes fewer than 2,000 transaction ids');
SELECT diag(format('transaction ids taken while run_once ran (its statement''s own included): %s', (SELECT a.xid - b.xid - 1 FROM xid_before b, xid_after a)));

SELECT lives_ok($$SELECT sluice.drop_pipeline('pgtap_rejects_xids')$$, 'drop_pipeline()');

SELECT * FROM finish();

DROP TABLE pgtap_rejects_xids;
\! rm -rf "$SLUICE_TEST_DIR"/rejects_xids

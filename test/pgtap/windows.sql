-- A started window pipeline (append mode, tumbling 10-minute windows,
-- watermark_delay 5 minutes) fed file by file: after each batch the
-- watermark, the windows emitted and a state bounded by the watermark; the
-- watermark survives stop and start, and the next batch is processed with it.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/windows
SET sluice_test.dir = :'dir';   -- for pg_temp.feed()

-- write a file in the stage directory, then rename it into the input
-- directory, so that the worker never sees it half written
CREATE FUNCTION pg_temp.feed(name text, rows text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('COPY (SELECT * FROM (VALUES %s) AS t(id, ts, v)) TO %L WITH (FORMAT csv, HEADER)',
                   rows, current_setting('sluice_test.dir') || '/stage/' || name);
    EXECUTE format('COPY (SELECT 1 WHERE false) TO PROGRAM %L',
                   format('mv %1$s/stage/%2$s %1$s/in/%2$s', current_setting('sluice_test.dir'), name));
END
$$;

-- the windows of a table as text, oldest first
CREATE FUNCTION pg_temp.windows(t regclass) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    r text[];
BEGIN
    EXECUTE format('SELECT coalesce(array_agg(format(''%%s-%%s'', to_char(window_start AT TIME ZONE ''UTC'', ''HH24:MI''),'
                   ' to_char(window_end AT TIME ZONE ''UTC'', ''HH24:MI'')) ORDER BY window_start), ''{}'') FROM %s', t)
       INTO r;
    RETURN r;
END
$$;

-- no state row the watermark passed
-- (dynamic SQL: the state table exists once the pipeline does)
CREATE FUNCTION pg_temp.state_bounded() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    EXECUTE 'SELECT NOT EXISTS (SELECT 1 FROM public.sluice_state_pgtap_windows'
            '                    WHERE window_end <= (SELECT watermark FROM sluice.pipelines WHERE name = ''pgtap_windows''))'
       INTO ok;
    RETURN ok;
END
$$;

\! rm -rf "$SLUICE_TEST_DIR"/windows && mkdir -p "$SLUICE_TEST_DIR"/windows/in "$SLUICE_TEST_DIR"/windows/stage
CREATE TABLE pgtap_windows_target (window_start timestamptz, window_end timestamptz, n bigint, total bigint);

SELECT plan(34);

SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_windows',
                             sluice.csv_source(%L, 'id int, ts timestamptz, v int',
                                               max_files_per_trigger => 1),
                             sluice.window_sink('pgtap_windows_target', '10 minutes',
                                                aggregates => '{count(*) AS n, sum(v) AS total}'),
                             '200 milliseconds', event_time => 'ts', watermark_delay => '5 minutes')$$,
                       :'dir' || '/in'),
                'create a window pipeline in append mode');
SELECT lives_ok($$SELECT sluice.start('pgtap_windows')$$, 'start()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'pgtap_windows')$$),
          'the launcher starts a worker');
SELECT is((SELECT watermark FROM sluice.pipelines WHERE name = 'pgtap_windows'), NULL::timestamptz,
          'no watermark before the first batch');

-- batch 1: 10:01 and 10:12; W NULL -> 10:12 - 5 min = 10:07; nothing ends by 10:07
SELECT pg_temp.feed('1.csv', $$(1, '2024-01-01 10:01:00+00'::timestamptz, 1), (2, '2024-01-01 10:12:00+00', 2)$$);
SELECT ok(test_util.wait_until($$(SELECT last_batch_id = 1 FROM sluice.pipelines WHERE name = 'pgtap_windows')$$),
          'batch 1 commits');
SELECT is((SELECT watermark FROM sluice.pipelines WHERE name = 'pgtap_windows'), '2024-01-01 10:07:00+00'::timestamptz,
          'batch 1: the watermark is max(event time) - delay');
SELECT is(pg_temp.windows('pgtap_windows_target'), '{}'::text[], 'batch 1: no window emitted');
SELECT is(pg_temp.windows('public.sluice_state_pgtap_windows'), '{10:00-10:10,10:10-10:20}'::text[],
          'batch 1: both windows in the state');
SELECT ok(pg_temp.state_bounded(), 'batch 1: the state holds only windows ending after the watermark');

-- batch 2: 10:26; W 10:07 -> 10:21: [10:00,10:10) and [10:10,10:20) are emitted
SELECT pg_temp.feed('2.csv', $$(3, '2024-01-01 10:26:00+00'::timestamptz, 3)$$);
SELECT ok(test_util.wait_until($$(SELECT last_batch_id = 2 FROM sluice.pipelines WHERE name = 'pgtap_windows')$$),
          'batch 2 commits');
SELECT is((SELECT watermark FROM sluice.pipelines WHERE name = 'pgtap_windows'), '2024-01-01 10:21:00+00'::timestamptz,
          'batch 2: the watermark moves to 10:21');
SELECT is(pg_temp.windows('pgtap_windows_target'), '{10:00-10:10,10:10-10:20}'::text[],
          'batch 2: the windows that ended by the watermark are emitted');
SELECT is(ARRAY(SELECT (n, total)::text FROM pgtap_windows_target ORDER BY window_start), '{"(1,1)","(1,2)"}'::text[],
          'batch 2: with their aggregates');
SELECT is(pg_temp.windows('public.sluice_state_pgtap_windows'), '{10:20-10:30}'::text[],
          'batch 2: and evicted from the state');
SELECT ok(pg_temp.state_bounded(), 'batch 2: the state holds only windows ending after the watermark');

-- batch 3: 10:15 is late ([10:10,10:20) ended by 10:21); 10:36; W -> 10:31: [10:20,10:30) emitted
SELECT pg_temp.feed('3.csv', $$(4, '2024-01-01 10:15:00+00'::timestamptz, 4), (5, '2024-01-01 10:36:00+00', 5)$$);
SELECT ok(test_util.wait_until($$(SELECT last_batch_id = 3 FROM sluice.pipelines WHERE name = 'pgtap_windows')$$),
          'batch 3 commits');
SELECT is((SELECT watermark FROM sluice.pipelines WHERE name = 'pgtap_windows'), '2024-01-01 10:31:00+00'::timestamptz,
          'batch 3: the watermark moves to 10:31');
SELECT is(pg_temp.windows('pgtap_windows_target'), '{10:00-10:10,10:10-10:20,10:20-10:30}'::text[],
          'batch 3: [10:20,10:30) is emitted');
SELECT is(ARRAY(SELECT (n, total)::text FROM pgtap_windows_target ORDER BY window_start),
          '{"(1,1)","(1,2)","(1,3)"}'::text[], 'batch 3: the late row changed no emitted window');
SELECT is((SELECT num_rows_dropped_by_watermark FROM sluice.progress('pgtap_windows', 1)), 1::bigint,
          'batch 3: one row dropped by the watermark');
SELECT is(pg_temp.windows('public.sluice_state_pgtap_windows'), '{10:30-10:40}'::text[],
          'batch 3: the state holds [10:30,10:40)');
SELECT ok(pg_temp.state_bounded(), 'batch 3: the state holds only windows ending after the watermark');

-- stop: the watermark stays; a file added meanwhile waits
SELECT lives_ok($$SELECT sluice.stop('pgtap_windows')$$, 'stop()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'pgtap_windows')
                               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                                WHERE backend_type = 'sluice worker' AND application_name = 'pgtap_windows')$$),
          'stop() makes the worker exit');
SELECT is((SELECT watermark FROM sluice.pipelines WHERE name = 'pgtap_windows'), '2024-01-01 10:31:00+00'::timestamptz,
          'the watermark survives stop()');
-- batch 4: 10:29 is late for the W of 10:31 ([10:20,10:30) ended), 10:32 is not;
-- max 10:32 - 5 min = 10:27 is older than W: W stays 10:31
SELECT pg_temp.feed('4.csv', $$(6, '2024-01-01 10:29:00+00'::timestamptz, 6), (7, '2024-01-01 10:32:00+00', 7)$$);
SELECT lives_ok($$SELECT sluice.start('pgtap_windows')$$, 'start() again');
SELECT ok(test_util.wait_until($$(SELECT last_batch_id = 4 FROM sluice.pipelines WHERE name = 'pgtap_windows')$$),
          'batch 4 commits after start()');
SELECT is((SELECT watermark FROM sluice.progress('pgtap_windows', 1)), '2024-01-01 10:31:00+00'::timestamptz,
          'batch 4 is processed with the watermark of before stop()');
SELECT is((SELECT num_rows_dropped_by_watermark FROM sluice.progress('pgtap_windows', 1)), 1::bigint,
          'batch 4: the row late for that watermark is dropped');
SELECT is((SELECT watermark FROM sluice.pipelines WHERE name = 'pgtap_windows'), '2024-01-01 10:31:00+00'::timestamptz,
          'batch 4: the watermark does not move back');
SELECT is(ARRAY(SELECT (window_start, a1_n, a2_s)::text FROM public.sluice_state_pgtap_windows ORDER BY window_start),
          '{"(\"2024-01-01 10:30:00+00\",2,12)"}'::text[], 'batch 4: [10:30,10:40) holds 10:32 and 10:36');
SELECT ok(pg_temp.state_bounded(), 'batch 4: the state holds only windows ending after the watermark');

SELECT lives_ok($$SELECT sluice.drop_pipeline('pgtap_windows')$$, 'drop_pipeline()');
SELECT ok(test_util.wait_until($$NOT EXISTS (SELECT 1 FROM pg_stat_activity
                                            WHERE backend_type = 'sluice worker' AND application_name = 'pgtap_windows')$$),
          'dropping a running pipeline ends its worker');

SELECT * FROM finish();

DROP TABLE pgtap_windows_target;
\! rm -rf "$SLUICE_TEST_DIR"/windows

--
-- 06_windows: window_sink (tumbling and sliding event-time windows), its
-- creation errors, watermarks, late rows, the output modes append, update
-- and complete, the state table, transforms and bad rows.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
-- the PL/pgSQL line numbers of the raising functions are not the point here
\set SHOW_CONTEXT never
SET timezone = 'UTC';
-- readable timestamps and intervals (pg_regress defaults to the Postgres and postgres_verbose styles)
SET datestyle = 'ISO, YMD';
SET intervalstyle = 'postgres';
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/windows
\set empty :dir/empty
\set events :dir/events
\set tx :dir/tx
\set bad :dir/bad
\set day :dir/day

\! rm -rf "$SLUICE_TEST_DIR"/windows && mkdir -p "$SLUICE_TEST_DIR"/windows/empty "$SLUICE_TEST_DIR"/windows/events "$SLUICE_TEST_DIR"/windows/tx "$SLUICE_TEST_DIR"/windows/bad

-- targets: window_start, window_end, the group_by columns, one column per aggregate alias
CREATE TABLE win_app (window_start timestamptz, window_end timestamptz, k text,
                      n bigint, total bigint, lo int, hi int, mean numeric(10, 2));
CREATE TABLE win_upd (LIKE win_app);
CREATE TABLE win_slide_app (window_start timestamptz, window_end timestamptz, n bigint, total bigint);
CREATE TABLE win_slide_cmp (LIKE win_slide_app);
-- late rows: batch_id, watermark and some of the input's columns (not v)
CREATE TABLE win_late (batch_id bigint, watermark timestamptz, id int, ts timestamptz, k text);
CREATE TABLE win_late2 (LIKE win_late);

--
-- window_sink(): the description
--
SELECT sluice.window_sink('win_app', '10 minutes') - 'relid' AS sink,
       (sluice.window_sink('win_app', '10 minutes')->>'relid')::oid = 'win_app'::regclass AS relid_ok;
SELECT sluice.window_sink('win_app', '10 minutes', '5 minutes', '{k}',
                          ARRAY['count(*) AS n', 'sum(v) AS total', 'MIN(v) as lo', 'max("v") AS "Hi"', 'avg( V ) AS Mean'],
                          'update', 'win_late') - 'relid' - 'late_relid' AS sink,
       (sluice.window_sink('win_app', '10 minutes', late_rows => 'win_late')->>'late_relid')::oid
           = 'win_late'::regclass AS late_relid_ok;
-- and what it refuses
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{median(v) AS m}');
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{count(*) AS n, stddev(v) AS s}');
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{sum(v)}');
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{sum(v + 1) AS s}');
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{count(*) n}');
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{sum(*) AS s}');
SELECT sluice.window_sink('win_app', '10 minutes', aggregates => '{}');
SELECT sluice.window_sink('win_app', '10 minutes', '11 minutes');
SELECT sluice.window_sink('win_app', '10 minutes', '0 minutes');
SELECT sluice.window_sink('win_app', '0 minutes');
SELECT sluice.window_sink('win_app', '-10 minutes');
SELECT sluice.window_sink('win_app', '1 month');
SELECT sluice.window_sink('win_app', '10 minutes', output_mode => 'replace');
SELECT sluice.window_sink('win_app', NULL);
SELECT sluice.window_sink('win_app', '10 minutes', output_mode => NULL);
SELECT sluice.window_sink('win_no_such_table', '10 minutes');

--
-- create_pipeline() with a window sink: what it refuses
--
-- no event time
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', group_by => '{k}'),
                              watermark_delay => '5 minutes');
-- append without a watermark_delay
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', group_by => '{k}'),
                              event_time => 'ts');
-- a negative delay
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', group_by => '{k}'),
                              event_time => 'ts', watermark_delay => '-1 second');
-- sum of text
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', aggregates => '{sum(k) AS total}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', aggregates => '{avg(ts) AS mean}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
-- the event time column is not received, or is not a timestamp
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes'),
                              event_time => 'at', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes'),
                              event_time => 'k', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts date, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes'),
                              event_time => 'ts', watermark_delay => '5 minutes');
-- a group_by or aggregate column that is not received
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', group_by => '{kk}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', '10 minutes', aggregates => '{max(w) AS hi}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
-- the target lacks window_start, window_end, a group_by column or an aggregate's alias
CREATE TABLE win_bad_t1 (window_end timestamptz, n bigint);
CREATE TABLE win_bad_t2 (window_start timestamptz, n bigint);
CREATE TABLE win_bad_t3 (window_start timestamptz, window_end timestamptz, count bigint);
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t1', '10 minutes', aggregates => '{count(*) AS n}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t2', '10 minutes', aggregates => '{count(*) AS n}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', aggregates => '{count(*) AS n}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', group_by => '{k}'),
                              event_time => 'ts', watermark_delay => '5 minutes');
-- the late_rows table lacks batch_id or watermark
CREATE TABLE win_bad_late1 (watermark timestamptz, id int);
CREATE TABLE win_bad_late2 (batch_id bigint, id int);
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', late_rows => 'win_bad_late1'),
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', late_rows => 'win_bad_late2'),
                              event_time => 'ts', watermark_delay => '5 minutes');
-- event_time or watermark_delay for a sink that is not a window sink
CREATE TABLE win_plain (id int, ts timestamptz, k text, v int);
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.append_sink('win_plain'), event_time => 'ts');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.append_sink('win_plain'), watermark_delay => '5 minutes');
-- two pipelines whose names share their first 50 characters each get a
-- state table of their own (a state table name must not be truncated into another's)
SET client_min_messages = warning;
SELECT sluice.create_pipeline(repeat('w', 50) || '_one', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', output_mode => 'update'), event_time => 'ts');
SELECT sluice.create_pipeline(repeat('w', 50) || '_two', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', output_mode => 'update'), event_time => 'ts');
-- so do two whose names of 4-byte characters share their first 20
SELECT sluice.create_pipeline(repeat(U&'\+01D538', 20) || 'a', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', output_mode => 'update'), event_time => 'ts');
SELECT sluice.create_pipeline(repeat(U&'\+01D538', 20) || 'b', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_bad_t3', '10 minutes', output_mode => 'update'), event_time => 'ts');
RESET client_min_messages;
SELECT count(*) AS pipelines, count(DISTINCT state_table) AS state_tables
  FROM sluice.pipeline WHERE name LIKE 'wwwww%';
SELECT count(*) AS pipelines, count(DISTINCT state_table) AS state_tables,
       bool_and(state_table::text ~ ('_' || id || '"?$')) AS named_by_id
  FROM sluice.pipeline WHERE name LIKE repeat(U&'\+01D538', 20) || '_';
SET client_min_messages = warning;
SELECT sluice.drop_pipeline(name) FROM sluice.pipeline WHERE name LIKE 'wwwww%' OR name LIKE U&'\+01D538%' ORDER BY name;
RESET client_min_messages;
-- nothing was created, no state table was left behind
SELECT count(*) FROM sluice.pipelines;
SELECT count(*) FROM pg_class WHERE relname LIKE 'sluice\_state\_%';

--
-- The events: three files, one per batch (max_files_per_trigger => 1).
-- Event times are on 2024-01-01 (UTC); "10:01" below means 2024-01-01 10:01:00+00.
--   a.csv  id 1 10:01 x v1 | id 2 10:04 y v2    | id 3 10:12 x v3
--   b.csv  id 4 10:08 y v4 | id 5 10:26 x v5    | id 6 NULL  x v6
--   c.csv  id 7 10:15 x v7 | id 8 10:20:30 y v8 | id 9 10:20:45 x v9
-- watermark_delay 5 minutes, so the watermark W is:
--   batch 1: W NULL  -> max 10:12 - 5 min    = 10:07
--   batch 2: W 10:07 -> max 10:26 - 5 min    = 10:21
--   batch 3: W 10:21 -> max 10:20:45 - 5 min = 10:15:45 is older: W stays 10:21
--
\set f :events/a.csv
COPY (SELECT * FROM (VALUES (1, '2024-01-01 10:01:00+00'::timestamptz, 'x', 1),
                            (2, '2024-01-01 10:04:00+00', 'y', 2),
                            (3, '2024-01-01 10:12:00+00', 'x', 3)) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/windows/events/a.csv

--
-- append, tumbling 10-minute windows by k, late rows kept.  One file at a
-- time, to see the target after each batch.
--
SELECT sluice.create_pipeline('win_app',
    sluice.csv_source(:'events', 'id int, ts timestamptz, k text, v int',
                      max_files_per_trigger => 1),
    sluice.window_sink('win_app', '10 minutes', group_by => '{k}',
                       aggregates => '{count(*) AS n, sum(v) AS total, min(v) AS lo, max(v) AS hi, avg(v) AS mean}',
                       late_rows => 'win_late'),
    event_time => 'ts', watermark_delay => '5 minutes');
SELECT name, state, watermark FROM sluice.pipelines WHERE name = 'win_app';
SELECT state_table FROM sluice.pipeline WHERE name = 'win_app';
\d public.sluice_state_win_app
-- batch 1 (W NULL): state [10:00,10:10) x n1 s1, y n1 s2; [10:10,10:20) x n1 s3.
-- W becomes 10:07; no window ends by then: nothing emitted.
SELECT sluice.run_once('win_app');
SELECT * FROM win_app ORDER BY window_start, k;
SELECT window_start, window_end, k, a1_n, a2_s, a3_v, a4_v, a5_s, a5_n, sluice_batch
  FROM public.sluice_state_win_app ORDER BY window_start, k;
SELECT name, watermark FROM sluice.pipelines WHERE name = 'win_app';
-- batch 2 (W 10:07): id 4 (10:08) joins [10:00,10:10) y (ends 10:10 > 10:07, not late);
-- id 5 opens [10:20,10:30) x; id 6 has no event time: late (1 pair).
-- W becomes 10:21: [10:00,10:10) x, y and [10:10,10:20) x are emitted and evicted.
\set f :events/b.csv
COPY (SELECT * FROM (VALUES (4, '2024-01-01 10:08:00+00'::timestamptz, 'y', 4),
                            (5, '2024-01-01 10:26:00+00', 'x', 5),
                            (6, NULL, 'x', 6)) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/windows/events/b.csv
SELECT sluice.run_once('win_app');
SELECT * FROM win_app ORDER BY window_start, k;
SELECT window_start, window_end, k, a1_n, a2_s, a3_v, a4_v, a5_s, a5_n, sluice_batch
  FROM public.sluice_state_win_app ORDER BY window_start, k;
-- batch 3 (W 10:21): id 7 (10:15) belongs to [10:10,10:20), ended by 10:21: late;
-- id 8 opens [10:20,10:30) y, id 9 joins [10:20,10:30) x (n2 s14 lo5 hi9 avg7).
-- max 10:20:45 - 5 min is older than W: W stays 10:21, nothing emitted.
\set f :events/c.csv
COPY (SELECT * FROM (VALUES (7, '2024-01-01 10:15:00+00'::timestamptz, 'x', 7),
                            (8, '2024-01-01 10:20:30+00', 'y', 8),
                            (9, '2024-01-01 10:20:45+00', 'x', 9)) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067203 "$SLUICE_TEST_DIR"/windows/events/c.csv
SELECT sluice.run_once('win_app');
SELECT * FROM win_app ORDER BY window_start, k;
SELECT window_start, window_end, k, a1_n, a2_s, a3_v, a4_v, a5_s, a5_n, sluice_batch
  FROM public.sluice_state_win_app ORDER BY window_start, k;
SELECT name, watermark FROM sluice.pipelines WHERE name = 'win_app';
SELECT batch_id, files, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, watermark, next_watermark,
       event_time_min, event_time_max, state_rows_total AS total, state_rows_updated AS updated,
       state_rows_removed AS removed
  FROM sluice.progress('win_app') ORDER BY batch_id;
-- the late rows, each with the batch and the watermark it was late for
SELECT * FROM win_late ORDER BY batch_id, id;
-- nothing more to read
SELECT sluice.run_once('win_app');

--
-- update, the same windows: every window a batch changes is upserted; state
-- the watermark passed is evicted (all three files in one run_once).
--   batch 1: upserts [10:00) x 1/1, [10:00) y 1/2, [10:10) x 1/3; W 10:07, nothing evicted
--   batch 2: upserts [10:00) y 2/6 (lo2 hi4 avg3), [10:20) x 1/5; id 6 late;
--            W 10:21 evicts [10:00) x, [10:00) y, [10:10) x (3); 1 left
--   batch 3: id 7 late; upserts [10:20) x 2/14 (lo5 hi9 avg7), [10:20) y 1/8; W stays 10:21
--
SELECT sluice.create_pipeline('win_upd',
    sluice.csv_source(:'events', 'id int, ts timestamptz, k text, v int',
                      max_files_per_trigger => 1),
    sluice.window_sink('win_upd', '10 minutes', group_by => '{k}',
                       aggregates => '{count(*) AS n, sum(v) AS total, min(v) AS lo, max(v) AS hi, avg(v) AS mean}',
                       output_mode => 'update'),
    event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.run_once('win_upd');
SELECT * FROM win_upd ORDER BY window_start, k;
SELECT window_start, window_end, k, a1_n, a2_s, a3_v, a4_v, a5_s, a5_n, sluice_batch
  FROM public.sluice_state_win_upd ORDER BY window_start, k;
SELECT batch_id, files, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, watermark, next_watermark,
       event_time_min, event_time_max, state_rows_total AS total, state_rows_updated AS updated,
       state_rows_removed AS removed
  FROM sluice.progress('win_upd') ORDER BY batch_id;
SELECT name, watermark FROM sluice.pipelines WHERE name = 'win_upd';

--
-- sliding windows of 10 minutes every 5 minutes: each event is in two
-- windows, [f - 5 min, f + 5 min) and [f, f + 10 min), f its time floored to 5 minutes.
--   batch 1: ids 1, 2 (10:01, 10:04) -> [09:55,10:05), [10:00,10:10); id 3 (10:12) -> [10:05,10:15), [10:10,10:20)
--   batch 2: id 4 (10:08) -> [10:00,10:10), [10:05,10:15); id 5 (10:26) -> [10:20,10:30), [10:25,10:35); id 6 late
--   batch 3: id 7 (10:15) -> [10:10,10:20), [10:15,10:25); ids 8, 9 (10:20:30, 10:20:45) -> [10:15,10:25), [10:20,10:30)
--
-- complete: the whole state rewritten each batch; only the NULL event time is late, nothing evicted
--   after batch 1: [09:55) 2/3, [10:00) 2/3, [10:05) 1/3, [10:10) 1/3                       (4 updated)
--   after batch 2: [09:55) 2/3, [10:00) 3/7, [10:05) 2/7, [10:10) 1/3, [10:20) 1/5, [10:25) 1/5   (4 updated)
--   after batch 3: [09:55) 2/3, [10:00) 3/7, [10:05) 2/7, [10:10) 2/10, [10:15) 3/24, [10:20) 3/22,
--                  [10:25) 1/5                                                           (3 updated)
--   W is still tracked: NULL -> 10:07 -> 10:21 -> 10:21
--
SELECT sluice.create_pipeline('win_slide_cmp',
    sluice.csv_source(:'events', 'id int, ts timestamptz, k text, v int',
                      max_files_per_trigger => 1),
    sluice.window_sink('win_slide_cmp', '10 minutes', '5 minutes',
                       aggregates => '{count(*) AS n, sum(v) AS total}', output_mode => 'complete'),
    event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.run_once('win_slide_cmp');
SELECT * FROM win_slide_cmp ORDER BY window_start;
SELECT * FROM public.sluice_state_win_slide_cmp ORDER BY window_start;
SELECT batch_id, files, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, watermark, next_watermark,
       event_time_min, event_time_max, state_rows_total AS total, state_rows_updated AS updated,
       state_rows_removed AS removed
  FROM sluice.progress('win_slide_cmp') ORDER BY batch_id;
SELECT name, watermark FROM sluice.pipelines WHERE name = 'win_slide_cmp';
--
-- append, sliding: a row can be late for one of its windows and not for the other
--   batch 1: W NULL -> 10:07: emits [09:55,10:05) 2/3; state [10:00) 2/3, [10:05) 1/3, [10:10) 1/3
--   batch 2: W 10:07 (id 4's windows end 10:10 and 10:15: not late) -> 10:21:
--            emits [10:00,10:10) 3/7, [10:05,10:15) 2/7, [10:10,10:20) 1/3; state [10:20) 1/5, [10:25) 1/5
--   batch 3: W 10:21: id 7 is late for [10:10,10:20) only (1 pair), counted in [10:15,10:25);
--            state [10:15) 3/24, [10:20) 3/22, [10:25) 1/5; nothing emitted
--
SELECT sluice.create_pipeline('win_slide_app',
    sluice.csv_source(:'events', 'id int, ts timestamptz, k text, v int',
                      max_files_per_trigger => 1),
    sluice.window_sink('win_slide_app', '10 minutes', '5 minutes',
                       aggregates => '{count(*) AS n, sum(v) AS total}', late_rows => 'win_late2'),
    event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.run_once('win_slide_app');
SELECT * FROM win_slide_app ORDER BY window_start;
SELECT * FROM public.sluice_state_win_slide_app ORDER BY window_start;
SELECT batch_id, files, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, watermark, next_watermark,
       event_time_min, event_time_max, state_rows_total AS total, state_rows_updated AS updated,
       state_rows_removed AS removed
  FROM sluice.progress('win_slide_app') ORDER BY batch_id;
-- id 7 once, though only one of its two windows was late
SELECT * FROM win_late2 ORDER BY batch_id, id;

--
-- a transform makes the event time (a cast from text); update without a
-- watermark_delay: W stays NULL, nothing is late but a NULL event time
--   '2024-01-01 10:30:00+00'    -> [10:00,11:00)
--   '2024-01-01T11:00:00Z'      -> [11:00,12:00)
--   '2024-01-01 12:59:59.5+01'  =  11:59:59.5 UTC -> [11:00,12:00)
--   ''                          -> NULL: late
--
\set f :tx/a.csv
COPY (SELECT * FROM (VALUES (1, '2024-01-01 10:30:00+00'), (2, '2024-01-01T11:00:00Z'),
                            (3, '2024-01-01 12:59:59.5+01'), (4, NULL)) AS t(id, t))
  TO :'f' WITH (FORMAT csv, HEADER);
CREATE TABLE win_tx (window_start timestamptz, window_end timestamptz, count bigint);
-- the event time must be a timestamp after the transform, too
SELECT sluice.create_pipeline('win_tx', sluice.csv_source(:'tx', 'id int, t text'),
                              sluice.window_sink('win_tx', '1 hour', output_mode => 'update'),
                              transform => 'SELECT id, t AS ts FROM batch', event_time => 'ts');
SELECT sluice.create_pipeline('win_tx', sluice.csv_source(:'tx', 'id int, t text'),
                              sluice.window_sink('win_tx', '1 hour', output_mode => 'update'),
                              transform => 'SELECT id, t::timestamptz AS ts FROM batch', event_time => 'ts');
SELECT sluice.run_once('win_tx');
SELECT * FROM win_tx ORDER BY window_start;
SELECT batch_id, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, watermark, next_watermark,
       event_time_min, event_time_max, state_rows_total AS total, state_rows_updated AS updated,
       state_rows_removed AS removed
  FROM sluice.progress('win_tx');
SELECT name, watermark FROM sluice.pipelines WHERE name = 'win_tx';

--
-- a window has a fixed duration: a '1 day' window is 86400 seconds long
-- whatever the time zone of the worker (here America/New_York, where
-- 2024-03-10 has 23 hours)
--   '2024-03-10 12:00+00', '2024-03-10 23:30+00' -> [03-10 00:00, 03-11 00:00) UTC: 2
--   '2024-03-11 12:00+00'                        -> [03-11 00:00, 03-12 00:00) UTC: 1
--
\! mkdir -p "$SLUICE_TEST_DIR"/windows/day
\set f :day/a.csv
COPY (SELECT * FROM (VALUES (1, '2024-03-10 12:00:00+00'::timestamptz), (2, '2024-03-10 23:30:00+00'),
                            (3, '2024-03-11 12:00:00+00')) AS t(id, ts))
  TO :'f' WITH (FORMAT csv, HEADER);
CREATE TABLE win_day (window_start timestamptz, window_end timestamptz, count bigint);
ALTER DATABASE contrib_regression SET timezone = 'America/New_York';
SELECT sluice.create_pipeline('win_day', sluice.csv_source(:'day', 'id int, ts timestamptz'),
                              sluice.window_sink('win_day', '1 day', output_mode => 'update'), event_time => 'ts');
SELECT sluice.run_once('win_day');
ALTER DATABASE contrib_regression RESET timezone;
SELECT *, window_end - window_start AS length FROM win_day ORDER BY window_start;
SELECT batch_id, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, state_rows_total AS total
  FROM sluice.progress('win_day');

--
-- on_error => 'reject': the bad line is set aside, the windows get the good
-- rows.  The target is in another schema: the state table goes beside it.
--   id 1 10:01 -> [10:00,10:10); id 2 bad; id 3 10:15 -> [10:10,10:20)
--   delay 0: W NULL -> 10:15, so [10:00,10:10) 1/1 is emitted
--
CREATE SCHEMA win_s;
CREATE TABLE win_s.win_rej (window_start timestamptz, window_end timestamptz, n bigint, total bigint);
\set f :bad/a.csv
COPY (SELECT * FROM (VALUES ('1', '2024-01-01 10:01:00+00', 'x', '1'), ('2', 'not a time', 'x', '2'),
                            ('3', '2024-01-01 10:15:00+00', 'x', '3')) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.create_pipeline('win_rej',
    sluice.csv_source(:'bad', 'id int, ts timestamptz, k text, v int', on_error => 'reject'),
    sluice.window_sink('win_s.win_rej', '10 minutes', aggregates => '{count(*) AS n, sum(v) AS total}'),
    event_time => 'ts', watermark_delay => '0 seconds');
SELECT state_table FROM sluice.pipeline WHERE name = 'win_rej';
SELECT sluice.run_once('win_rej');
SELECT * FROM win_s.win_rej ORDER BY window_start;
SELECT * FROM win_s.sluice_state_win_rej ORDER BY window_start;
SELECT batch_id, attempts, input_rows, sink_rows, rejected_rows, num_rows_dropped_by_watermark AS dropped,
       watermark, next_watermark, event_time_min, event_time_max
  FROM sluice.progress('win_rej');
SELECT batch_id, regexp_replace(file, '^.*/', '') AS file, line, raw_line, sqlstate
  FROM sluice.rejects WHERE pipeline = 'win_rej';
SELECT count(*) FROM sluice.errors WHERE pipeline LIKE 'win%';

--
-- session windows: a session_gap instead of a size.  A row spans [t, t + gap);
-- rows whose spans overlap or touch are one session [first t, last t + gap)
--
SELECT sluice.window_sink('win_app', session_gap => '5 minutes', group_by => '{k}') - 'relid' AS sink;
SELECT sluice.window_sink('win_app', '10 minutes', session_gap => '5 minutes');
SELECT sluice.window_sink('win_app');
SELECT sluice.window_sink('win_app', slide => '1 minute', session_gap => '5 minutes');
SELECT sluice.window_sink('win_app', session_gap => '0 seconds');
SELECT sluice.window_sink('win_app', session_gap => '-1 minute');
SELECT sluice.window_sink('win_app', session_gap => '1 month');
SELECT sluice.create_pipeline('win_bad', sluice.csv_source(:'empty', 'id int, ts timestamptz, k text, v int'),
                              sluice.window_sink('win_app', session_gap => '5 minutes'));

-- update mode, gap 5 minutes, delay 25 minutes:
--   batch 1: x 10:00, 10:04 and 10:13 (sessions [10:00, 10:09) and [10:13, 10:18)),
--            y 10:01 and 10:30; W becomes 10:05
--   batch 2: x 10:08 bridges x's two sessions into [10:00, 10:18); y 10:06
--            touches y's first, which grows to [10:01, 10:11); x 10:05 is late (t <= W)
--   batch 3: y 10:40 moves W to 10:15: y's first session leaves the state
\! mkdir -p "$SLUICE_TEST_DIR"/windows/ses
\set ses :dir/ses
\set f :ses/a.csv
COPY (SELECT * FROM (VALUES (1, '2024-01-01 10:00:00+00'::timestamptz, 'x', 1), (2, '2024-01-01 10:04:00+00', 'x', 2),
                            (3, '2024-01-01 10:13:00+00', 'x', 3), (4, '2024-01-01 10:01:00+00', 'y', 4),
                            (5, '2024-01-01 10:30:00+00', 'y', 5)) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/windows/ses/a.csv
CREATE TABLE win_ses (window_start timestamptz, window_end timestamptz, k text, n bigint, total bigint);
CREATE TABLE win_ses_app (LIKE win_ses);
CREATE TABLE win_ses_late (LIKE win_late);
SELECT sluice.create_pipeline('win_ses',
    sluice.csv_source(:'ses', 'id int, ts timestamptz, k text, v int', max_files_per_trigger => 1),
    sluice.window_sink('win_ses', session_gap => '5 minutes', group_by => '{k}',
                       aggregates => '{count(*) AS n, sum(v) AS total}', output_mode => 'update',
                       late_rows => 'win_ses_late'),
    event_time => 'ts', watermark_delay => '25 minutes');
SELECT sluice.run_once('win_ses');
SELECT * FROM win_ses ORDER BY k, window_start;
\set f :ses/b.csv
COPY (SELECT * FROM (VALUES (6, '2024-01-01 10:08:00+00'::timestamptz, 'x', 6), (7, '2024-01-01 10:06:00+00', 'y', 7),
                            (8, '2024-01-01 10:05:00+00', 'x', 8)) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/windows/ses/b.csv
SELECT sluice.run_once('win_ses');
SELECT * FROM win_ses ORDER BY k, window_start;
SELECT * FROM sluice_state_win_ses ORDER BY k, window_start;
\set f :ses/c.csv
COPY (SELECT * FROM (VALUES (9, '2024-01-01 10:40:00+00'::timestamptz, 'y', 9)) AS t(id, ts, k, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067203 "$SLUICE_TEST_DIR"/windows/ses/c.csv
SELECT sluice.run_once('win_ses');
SELECT * FROM win_ses ORDER BY k, window_start;
SELECT window_start, window_end, k, a1_n, a2_s FROM sluice_state_win_ses ORDER BY k, window_start;
SELECT batch_id, input_rows, sink_rows, num_rows_dropped_by_watermark AS dropped, watermark, next_watermark,
       state_rows_total, state_rows_updated, state_rows_removed
  FROM sluice.progress('win_ses') ORDER BY batch_id;
SELECT batch_id, watermark, id, ts, k FROM win_ses_late;
-- the same in append mode: each session once, when W passes its end
SELECT sluice.create_pipeline('win_ses_app',
    sluice.csv_source(:'ses', 'id int, ts timestamptz, k text, v int', max_files_per_trigger => 1),
    sluice.window_sink('win_ses_app', session_gap => '5 minutes', group_by => '{k}',
                       aggregates => '{count(*) AS n, sum(v) AS total}'),
    event_time => 'ts', watermark_delay => '25 minutes');
SELECT sluice.run_once('win_ses_app');
SELECT * FROM win_ses_app ORDER BY k, window_start;
SELECT window_start, window_end, k, a1_n, a2_s FROM sluice_state_win_ses_app ORDER BY k, window_start;

-- a session that would end past the range of timestamptz fails the batch
\! mkdir -p "$SLUICE_TEST_DIR"/windows/far
\! printf 'id,ts,k,v\n1,294276-12-31 23:00:00+00,x,1\n' > "$SLUICE_TEST_DIR"/windows/far/a.csv
\set far :dir/far
CREATE TABLE win_far (LIKE win_ses);
SELECT sluice.create_pipeline('win_far', sluice.csv_source(:'far', 'id int, ts timestamptz, k text, v int'),
    sluice.window_sink('win_far', session_gap => '1 day', group_by => '{k}',
                       aggregates => '{count(*) AS n, sum(v) AS total}', output_mode => 'update'),
    event_time => 'ts');
SELECT sluice.run_once('win_far');
SELECT sluice.drop_pipeline('win_far');
-- group_by a type with no hash function
CREATE TABLE win_tsv (window_start timestamptz, window_end timestamptz, k tsvector, n bigint);
SELECT sluice.create_pipeline('win_tsv', sluice.csv_source(:'far', 'id int, ts timestamptz, k tsvector, v int'),
    sluice.window_sink('win_tsv', '1 hour', group_by => '{k}', aggregates => '{count(*) AS n}', output_mode => 'update'),
    event_time => 'ts');
-- a state table the owner altered, and a trigger that asks the batch's
-- partials for other types, fail the batch (the worker must not read a
-- datum as another type's)
ALTER TABLE sluice_state_win_ses ALTER COLUMN a1_n TYPE numeric;
\set f :ses/e.csv
COPY (SELECT 10, '2024-01-01 11:00:00+00'::timestamptz, 'y', 10) TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067204 "$SLUICE_TEST_DIR"/windows/ses/e.csv
SELECT sluice.run_once('win_ses');
ALTER TABLE sluice_state_win_ses ALTER COLUMN a1_n TYPE bigint;
CREATE FUNCTION win_peek() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM * FROM sluice._window_partials('all') AS p(a text, b text, c text, d text, e text);
    RETURN NULL;
END $$;
CREATE TRIGGER win_peek AFTER INSERT ON win_ses_app FOR EACH STATEMENT EXECUTE FUNCTION win_peek();
SELECT sluice.run_once('win_ses_app');
DROP TRIGGER win_peek ON win_ses_app;
DROP FUNCTION win_peek();
SELECT sluice.run_once('win_ses_app');
SELECT count(*) FROM win_ses_app;

-- sums of integers past the range of bigint go on in numeric, as sum(bigint) does
\! mkdir -p "$SLUICE_TEST_DIR"/windows/big
\set f :dir/big/a.csv
COPY (SELECT i, '2024-01-01 10:00:00+00'::timestamptz + i * interval '1 second', 9223372036854775800 + i
        FROM generate_series(1, 5) AS i) TO :'f' WITH (FORMAT csv, HEADER);
\set big :dir/big
CREATE TABLE win_big (window_start timestamptz, window_end timestamptz, total numeric, mean numeric, n bigint);
SELECT sluice.create_pipeline('win_big', sluice.csv_source(:'big', 'id int, ts timestamptz, v bigint'),
    sluice.window_sink('win_big', '1 hour', aggregates => '{sum(v) AS total, avg(v) AS mean, count(v) AS n}',
                       output_mode => 'update'),
    event_time => 'ts');
SELECT sluice.run_once('win_big');
SELECT total, mean, n, total = (SELECT sum(9223372036854775800 + i) FROM generate_series(1, 5) AS i) AS exact
  FROM win_big;

--
-- the values the table of partials keeps: text groups long and short and
-- null, min and max of text that grow and shrink, numeric sums whose digits
-- grow; folded in one part, then in many (sluice.window_memory at its
-- least), and both the same as GROUP BY over the same rows
--
\! mkdir -p "$SLUICE_TEST_DIR"/windows/kept
\set f :dir/kept/a.csv
CREATE TABLE win_kept_src AS
  SELECT i AS id, '2024-01-01 00:00:00+00'::timestamptz + i * interval '37 seconds' AS ts,
         CASE WHEN i % 11 = 0 THEN NULL WHEN i % 3 = 0 THEN repeat('k', 150 + i % 7) ELSE 'k' || i % 5 END AS k,
         repeat(chr(97 + i % 26), 1 + (i * 7) % 200) AS w,
         (10::numeric ^ (i % 25)) + i / 7.0 AS v
    FROM generate_series(1, 3000) AS i;
COPY win_kept_src TO :'f' WITH (FORMAT csv, HEADER);
\set kept :dir/kept
CREATE TABLE win_kept_ref AS
  SELECT date_bin('1 hour', ts, '2024-01-01') AS window_start, date_bin('1 hour', ts, '2024-01-01') + interval '1 hour' AS window_end,
         k, count(*) AS n, sum(v) AS total, avg(v) AS mean, min(w) AS lo, max(w) AS hi, min(v) AS vlo, max(v) AS vhi
    FROM win_kept_src GROUP BY 1, 2, 3;
CREATE TABLE win_kept (LIKE win_kept_ref);
CREATE TABLE win_kept_parts (LIKE win_kept_ref);
\set kept_aggs '{count(*) AS n, sum(v) AS total, avg(v) AS mean, min(w) AS lo, max(w) AS hi, min(v) AS vlo, max(v) AS vhi}'
\set kept_cols 'id int, ts timestamptz, k text, w text, v numeric'
SELECT sluice.create_pipeline(t, sluice.csv_source(:'kept', :'kept_cols'),
    sluice.window_sink(t, '1 hour', group_by => '{k}', aggregates => :'kept_aggs', output_mode => 'complete'),
    event_time => 'ts') FROM (VALUES ('win_kept')) AS x(t);
SELECT sluice.run_once('win_kept');
SELECT current_user AS me \gset
ALTER ROLE :"me" IN DATABASE :"DBNAME" SET sluice.window_memory = 64;
SELECT sluice.create_pipeline(t, sluice.csv_source(:'kept', :'kept_cols'),
    sluice.window_sink(t, '1 hour', group_by => '{k}', aggregates => :'kept_aggs', output_mode => 'complete'),
    event_time => 'ts') FROM (VALUES ('win_kept_parts')) AS x(t);
SELECT sluice.run_once('win_kept_parts');
ALTER ROLE :"me" IN DATABASE :"DBNAME" RESET sluice.window_memory;
SELECT (SELECT count(*) FROM win_kept_ref) AS windows,
       (SELECT count(*) FROM win_kept_ref WHERE k IS NULL) AS null_groups,
       (SELECT max(length(k)) FROM win_kept_ref) AS longest_group,
       (SELECT max(scale(total)) FROM win_kept_ref) AS sum_scale,
       (SELECT count(*) FROM (TABLE win_kept EXCEPT ALL TABLE win_kept_ref) AS x) AS one_part_not_in_ref,
       (SELECT count(*) FROM (TABLE win_kept_ref EXCEPT ALL TABLE win_kept) AS x) AS ref_not_in_one_part,
       (SELECT count(*) FROM (TABLE win_kept_parts EXCEPT ALL TABLE win_kept_ref) AS x) AS parts_not_in_ref,
       (SELECT count(*) FROM (TABLE win_kept_ref EXCEPT ALL TABLE win_kept_parts) AS x) AS ref_not_in_parts;
-- the second folded in parts: each merged its windows into the state table
SELECT a.state_rows_updated AS one_part_upserted, b.state_rows_updated > a.state_rows_updated AS parts_upserted_more
  FROM sluice.progress('win_kept') AS a, sluice.progress('win_kept_parts') AS b;
SELECT sluice.drop_pipeline('win_kept');
SELECT sluice.drop_pipeline('win_kept_parts');
DROP TABLE win_kept_src, win_kept_ref, win_kept, win_kept_parts;

--
-- drop_pipeline() drops the state table, not the target nor the late rows
--
SELECT sluice.drop_pipeline('win_app');
SELECT to_regclass('public.sluice_state_win_app') AS state_table, to_regclass('win_app') AS target,
       to_regclass('win_late') AS late_rows;
SELECT sluice.drop_pipeline('win_rej');
SELECT to_regclass('win_s.sluice_state_win_rej') AS state_table;
SELECT sluice.drop_pipeline(name) FROM sluice.pipelines ORDER BY name;
SELECT count(*) FROM pg_class WHERE relname LIKE 'sluice\_state\_%';

DROP SCHEMA win_s CASCADE;
DROP TABLE win_ses, win_ses_app, win_ses_late, win_big, win_far, win_tsv;
DROP TABLE win_app, win_upd, win_slide_app, win_slide_cmp, win_late, win_late2, win_tx, win_day, win_plain,
           win_bad_t1, win_bad_t2, win_bad_t3, win_bad_late1, win_bad_late2;
\! rm -rf "$SLUICE_TEST_DIR"/windows

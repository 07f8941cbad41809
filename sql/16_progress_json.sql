--
-- 16_progress_json: progress_json() gives the last n committed batches,
-- newest first, shaped like Spark's StreamingQueryProgress, and every value
-- agrees with sluice.progress(); metrics() gives the numbers of each
-- pipeline the caller may see, for Prometheus.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/pj
\! rm -rf "$SLUICE_TEST_DIR"/pj && mkdir -p "$SLUICE_TEST_DIR"/pj
\! printf 'id,v,ts\n1,a,2024-01-01 10:00:00+00\n2,b,2024-01-01 10:01:00+00\n' > "$SLUICE_TEST_DIR"/pj/f1.csv && touch -d @1700000001 "$SLUICE_TEST_DIR"/pj/f1.csv
\! printf 'id,v,ts\n3,c,2024-01-01 10:12:00+00\n4,d,2024-01-01 10:03:00+00\n5,e,2024-01-01 10:13:00+00\n' > "$SLUICE_TEST_DIR"/pj/f2.csv && touch -d @1700000002 "$SLUICE_TEST_DIR"/pj/f2.csv

CREATE TABLE pj_t (id int, v text, ts timestamptz);
SELECT sluice.create_pipeline('pj', sluice.csv_source(:'dir', 'id int, v text, ts timestamptz', max_files_per_trigger => 1),
                              sluice.append_sink('pj_t'), 'available_now');
SELECT sluice.run_once('pj') AS batches;

-- the shape: Spark's keys, nothing else
SELECT jsonb_object_keys(j) AS key FROM sluice.progress_json('pj') AS j ORDER BY 1;
SELECT jsonb_object_keys(j->'durationMs') AS key FROM sluice.progress_json('pj') AS j ORDER BY 1;
SELECT jsonb_object_keys(j->'sources'->0) AS key FROM sluice.progress_json('pj') AS j ORDER BY 1;
-- what does not change from run to run
SELECT j->'batchId' AS batch, j->'numInputRows' AS rows, j->>'name' AS name,
       j->'sources'->0->>'description' LIKE 'FileStreamSource[%/pj]' AS source,
       j->'sources'->0->'startOffset' AS start_offset,
       jsonb_array_length(j->'sources'->0->'endOffset'->'files') AS end_files,
       j->'sources'->0->'metrics' AS metrics, j->'sink' AS sink
  FROM sluice.progress_json('pj', 5) AS j;
-- every value agrees with progress(); the ids are uuids, the same for both batches of the run
SELECT count(*) AS batches,
       bool_and((j->>'numInputRows')::bigint = p.input_rows AND (j->'sink'->>'numOutputRows')::bigint = p.sink_rows
                AND (j->'durationMs'->>'triggerExecution')::numeric = (p.duration_ms->>'total')::numeric
                AND (j->'durationMs'->>'queryPlanning')::numeric = (p.duration_ms->>'plan')::numeric
                AND (j->'durationMs'->>'addBatch')::numeric = (p.duration_ms->>'write')::numeric
                AND (j->>'processedRowsPerSecond')::numeric IS NOT DISTINCT FROM p.rows_per_second
                AND j->'sources'->0->'startOffset' = p.start_offset AND j->'sources'->0->'endOffset' = p.end_offset
                AND (j->'sources'->0->'metrics'->>'filesBehindLatest')::bigint = p.backlog
                AND (j->>'timestamp')::timestamptz = date_trunc('milliseconds', p.planned_at)
                AND j->'sources'->0->'latestOffset' = jsonb_build_object('log_offset', p.batch_id)) AS agree,
       count(DISTINCT j->>'runId') AS runs, bool_and((j->>'id')::uuid IS NOT NULL AND (j->>'runId')::uuid IS NOT NULL) AS uuids,
       bool_and(j->>'id' = (SELECT uid::text FROM sluice.pipeline WHERE name = 'pj')) AS stable_id
  FROM sluice.progress_json('pj', 5) AS j JOIN sluice.progress('pj') AS p ON p.batch_id = (j->>'batchId')::bigint;
-- inputRowsPerSecond: rows over the time since the batch before started (none for the first)
SELECT j->'batchId' AS batch, j ? 'inputRowsPerSecond' AS has_input_rate FROM sluice.progress_json('pj', 5) AS j;
-- a new run, a new runId
\! printf 'id,v,ts\n6,f,2024-01-01 10:20:00+00\n' > "$SLUICE_TEST_DIR"/pj/f3.csv && touch -d @1700000003 "$SLUICE_TEST_DIR"/pj/f3.csv
SELECT sluice.run_once('pj') AS batches;
SELECT count(DISTINCT j->>'runId') AS runs, count(DISTINCT j->>'id') AS ids FROM sluice.progress_json('pj', 5) AS j;

-- an event-time pipeline: eventTime and the window's state
CREATE TABLE pj_w (window_start timestamptz, window_end timestamptz, n bigint, PRIMARY KEY (window_start, window_end));
SELECT sluice.create_pipeline('pjw', sluice.csv_source(:'dir', 'id int, v text, ts timestamptz', max_files_per_trigger => 1),
                              sluice.window_sink('pj_w', '10 minutes', NULL, '{}', '{count(*) AS n}'), 'available_now',
                              event_time => 'ts', watermark_delay => '5 minutes');
SELECT sluice.run_once('pjw') AS batches;
SELECT bool_and((j->'eventTime'->>'avg')::timestamptz = date_trunc('milliseconds', p.event_time_avg)
                AND (j->'eventTime'->>'min')::timestamptz = p.event_time_min) AS event_times_agree
  FROM sluice.progress_json('pjw', 5) AS j JOIN sluice.progress('pjw') AS p ON p.batch_id = (j->>'batchId')::bigint;
SELECT j->'batchId' AS batch, j->'eventTime' AS event_time,
       (j->'stateOperators'->0) - 'memoryUsedBytes' AS state,
       (j->'stateOperators'->0->>'memoryUsedBytes')::bigint > 0 AS has_memory,
       j->'sink'->>'description' AS sink
  FROM sluice.progress_json('pjw', 5) AS j;

-- sluice.pipelines: the last minute's rates, backlog, watermark lag and state
SELECT p.name, p.input_rows_per_second, p.processed_rows_per_second > 0 AS processed, p.backlog,
       p.watermark_lag = (SELECT event_time_max - p.watermark FROM sluice.progress(p.name, 1)) AS lag_ok,
       p.watermark_lag, p.state_rows, p.workers, p.attempts, p.next_retry_at
  FROM sluice.pipelines AS p WHERE p.name IN ('pj', 'pjw') ORDER BY p.name;

-- metrics(): numbers for Prometheus, one row per pipeline
SELECT pipeline, running, failed, batches_total, input_rows_total, output_rows_total, rejected_rows_total,
       late_rows_total, failures_total, backlog, workers, desired_workers, state_rows, retry_attempts,
       watermark_seconds = extract(epoch FROM (SELECT watermark FROM sluice.pipeline WHERE name = pipeline)) AS watermark_ok,
       watermark_lag_seconds, last_batch_duration_seconds > 0 AS duration_ok
  FROM sluice.metrics() ORDER BY pipeline;

-- dashboard(): a self-contained SVG, well-formed, with one chart per measure
SELECT xml_is_well_formed_document(d) AS well_formed, d LIKE '<svg xmlns="http://www.w3.org/2000/svg"%' AS svg,
       (length(d) - length(replace(d, '<polyline', ''))) / length('<polyline') AS lines,
       d LIKE '%sluice pipeline pjw%' AS title, d LIKE '%Watermark against the latest event time%' AS watermark_chart,
       d LIKE '%rows/s%' AND d LIKE '%>ms<%' AS units
  FROM sluice.dashboard('pjw') AS d;
SELECT (length(d) - length(replace(d, '<polyline', ''))) / length('<polyline') AS lines,
       d LIKE '%Watermark against%' AS watermark_chart
  FROM sluice.dashboard('pj', 2) AS d;
SELECT sluice.dashboard('pj', 0);
SELECT sluice.dashboard('pj', 1001);

-- errors; another role sees none of it
SELECT sluice.progress_json('no_such_pipeline');
SELECT count(*) FROM sluice.progress_json('pj', 0);
CREATE ROLE regress_pj_other LOGIN;
SET ROLE regress_pj_other;
SELECT sluice.progress_json('pj');
SELECT sluice.dashboard('pj');
SELECT count(*) FROM sluice.metrics();
RESET ROLE;
GRANT pg_read_all_stats TO regress_pj_other;
SET ROLE regress_pj_other;
SELECT string_agg(pipeline, ',' ORDER BY pipeline) FROM sluice.metrics();
RESET ROLE;
DROP ROLE regress_pj_other;

SELECT sluice.drop_pipeline('pj'), sluice.drop_pipeline('pjw');
DROP TABLE pj_t, pj_w;

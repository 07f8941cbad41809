--
-- 17_dedupe: create_pipeline(..., dedupe): the parameter's errors, and rows
-- resent in a batch and across batches dropped before an append sink, with
-- their counts in progress(), progress_json() and the keys remembered until
-- the watermark passes them.  (TAP 026 compares it with a reference model,
-- for every sink and through crashes.)
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/dd
\! rm -rf "$SLUICE_TEST_DIR"/dd && mkdir -p "$SLUICE_TEST_DIR"/dd
\set cols 'id int, k text, ts timestamptz, v point'
CREATE TABLE dd_t (id int, k text, ts timestamptz, v point);

-- errors
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              dedupe => '{id}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', dedupe => '{id}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              watermark_delay => '1 minute', dedupe => '{id}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '1 minute');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '1 minute', dedupe => '{}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '1 minute', dedupe => '{id, NULL}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '1 minute', dedupe => '{id, id}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '1 minute', dedupe => '{nope}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'k', watermark_delay => '1 minute', dedupe => '{id}');
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '-1 minute', dedupe => '{id}');
-- a key the unique index of the keys cannot take
SELECT sluice.create_pipeline('dd_point', sluice.csv_source(:'dir', :'cols'), sluice.append_sink('dd_t'),
                              event_time => 'ts', watermark_delay => '1 minute', dedupe => '{id, v}');
SELECT count(*) FROM sluice.pipeline WHERE name = 'dd_point';

-- a key with no hash function
CREATE TABLE dd_ts (id int, k tsvector, ts timestamptz);
SELECT sluice.create_pipeline('dd_bad', sluice.csv_source(:'dir', 'id int, k tsvector, ts timestamptz'),
                              sluice.append_sink('dd_ts'), event_time => 'ts', watermark_delay => '1 minute',
                              dedupe => '{k}');
DROP TABLE dd_ts;

-- by id, delay 10 minutes:
--   batch 1: 1 at 10:00, 2 at 10:01, 1 again, 3 with no time (late): W becomes 9:51
--   batch 2: 2 again (10:01), 4 at 10:30, 5 at 9:40 (late: at or before W): W becomes 10:20,
--            which forgets keys 1 and 2
--   batch 3: 1 at 10:25 (its key is forgotten: it goes through), 4 again
SELECT sluice.create_pipeline('dd', sluice.csv_source(:'dir', :'cols', max_files_per_trigger => 1),
                              sluice.append_sink('dd_t'), event_time => 'ts', watermark_delay => '10 minutes',
                              dedupe => '{id}');
SELECT dedupe, dedupe_table FROM sluice.pipeline WHERE name = 'dd';
\! printf 'id,k,ts,v\n1,a,2024-01-01 10:00:00+00,\n2,b,2024-01-01 10:01:00+00,\n1,a,2024-01-01 10:00:00+00,\n3,c,,\n' > "$SLUICE_TEST_DIR"/dd/a.csv && touch -d @1700000001 "$SLUICE_TEST_DIR"/dd/a.csv
SELECT sluice.run_once('dd');
\! printf 'id,k,ts,v\n2,b,2024-01-01 10:01:00+00,\n4,d,2024-01-01 10:30:00+00,\n5,e,2024-01-01 09:40:00+00,\n' > "$SLUICE_TEST_DIR"/dd/b.csv && touch -d @1700000002 "$SLUICE_TEST_DIR"/dd/b.csv
SELECT sluice.run_once('dd');
SELECT id, sluice_event_time FROM sluice_dedupe_dd ORDER BY id;
\! printf 'id,k,ts,v\n1,a,2024-01-01 10:25:00+00,\n4,d,2024-01-01 10:30:00+00,\n' > "$SLUICE_TEST_DIR"/dd/c.csv && touch -d @1700000003 "$SLUICE_TEST_DIR"/dd/c.csv
SELECT sluice.run_once('dd');
SELECT id, k, ts FROM dd_t ORDER BY ts, id;
SELECT id, sluice_event_time, sluice_batch FROM sluice_dedupe_dd ORDER BY id;
SELECT batch_id, input_rows, sink_rows, num_rows_dropped_by_watermark AS late, num_duplicates_dropped AS dups,
       watermark, next_watermark, event_time_min, event_time_max, state_rows_total
  FROM sluice.progress('dd') ORDER BY batch_id;
SELECT j->'batchId' AS batch, (j->'stateOperators'->0) - 'memoryUsedBytes' AS state,
       j->'eventTime'->>'watermark' AS watermark
  FROM sluice.progress_json('dd', 3) AS j;
SELECT name, watermark FROM sluice.pipelines WHERE name = 'dd';
-- with a window sink, the rows deduplication drops as late go to its
-- late_rows table, as the sink's own late rows do; duplicates do not:
--   batch 1: 1 at 10:00, 1 again, 2 with no time (late): W becomes 9:50
--   batch 2: 3 at 10:30, 4 at 9:45 (late: at or before W), 3 again: W becomes 10:20
\! mkdir -p "$SLUICE_TEST_DIR"/dd_win
\set wdir :test_dir/dd_win
CREATE TABLE dd_win (window_start timestamptz, window_end timestamptz, k text, n bigint);
CREATE TABLE dd_win_late (batch_id bigint, watermark timestamptz, id int, k text, ts timestamptz);
SELECT sluice.create_pipeline('dd_win', sluice.csv_source(:'wdir', :'cols', max_files_per_trigger => 1),
    sluice.window_sink('dd_win', '10 minutes', group_by => '{k}', aggregates => '{count(*) AS n}',
                       output_mode => 'update', late_rows => 'dd_win_late'),
    event_time => 'ts', watermark_delay => '10 minutes', dedupe => '{id}');
\! printf 'id,k,ts,v\n1,a,2024-01-01 10:00:00+00,\n1,a,2024-01-01 10:00:00+00,\n2,b,,\n' > "$SLUICE_TEST_DIR"/dd_win/a.csv && touch -d @1700000001 "$SLUICE_TEST_DIR"/dd_win/a.csv
\! printf 'id,k,ts,v\n3,c,2024-01-01 10:30:00+00,\n4,d,2024-01-01 09:45:00+00,\n3,c,2024-01-01 10:30:00+00,\n' > "$SLUICE_TEST_DIR"/dd_win/b.csv && touch -d @1700000002 "$SLUICE_TEST_DIR"/dd_win/b.csv
SELECT sluice.run_once('dd_win');
SELECT * FROM dd_win_late ORDER BY batch_id, id;
SELECT * FROM dd_win ORDER BY window_start, k;
SELECT batch_id, input_rows, num_rows_dropped_by_watermark AS late, num_duplicates_dropped AS dups, watermark
  FROM sluice.progress('dd_win') ORDER BY batch_id;
SELECT sluice.drop_pipeline('dd_win');
DROP TABLE dd_win, dd_win_late;
\! rm -rf "$SLUICE_TEST_DIR"/dd_win

-- a key table the owner altered fails the batch, which loses nothing
ALTER TABLE sluice_dedupe_dd ALTER COLUMN id TYPE bigint;
\! printf 'id,k,ts,v\n9,z,2024-01-01 10:40:00+00,\n' > "$SLUICE_TEST_DIR"/dd/d.csv && touch -d @1700000004 "$SLUICE_TEST_DIR"/dd/d.csv
SELECT sluice.run_once('dd');
SELECT count(*) FROM dd_t WHERE id = 9;
SELECT state FROM sluice.pipelines WHERE name = 'dd';
-- the sink and the event time cannot change; the keys go with the pipeline
SELECT sluice.alter_pipeline('dd', event_time => 'k');
SELECT sluice.drop_pipeline('dd');
SELECT to_regclass('sluice_dedupe_dd') AS keys_dropped_with_the_pipeline;
DROP TABLE dd_t;
\! rm -rf "$SLUICE_TEST_DIR"/dd

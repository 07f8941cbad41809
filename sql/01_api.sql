--
-- 01_api: the SQL interface on the happy path: sources and sinks as jsonb,
-- create / run_once / progress / pipelines / start / stop / drop.
--
CREATE EXTENSION sluice;
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run;
-- where a path is printed, it is printed as $SLUICE_TEST_DIR/...
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/api

\i test/regress/wait_until.sql

-- the extension's objects
SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'sluice' AND p.proname !~ '^_'
 ORDER BY 1;
SELECT c.relname, c.relkind, c.relrowsecurity
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'sluice' AND c.relkind IN ('r', 'v')
 ORDER BY 1;

-- a source is a jsonb description; types come back canonical
SELECT replace(jsonb_pretty(sluice.csv_source(:'dir' || '/',
                                              'id int, amount numeric(12,2), ts timestamptz, note text')),
               :'test_dir', '$SLUICE_TEST_DIR') AS jsonb_pretty;
SELECT sluice.csv_source('/', 'id int8', header => false, delimiter => ';',
                         pattern => 'part-*.txt', max_files_per_trigger => 3,
                         quote => '''', escape => '\', null_string => 'NULL',
                         encoding => 'LATIN1') - 'columns' AS source;
SELECT sluice.csv_source('/tmp//x//', '"Weird Name" varchar(10), "select" bool')->'columns' AS columns,
       sluice.csv_source('/tmp//x//', 'a int')->>'dir' AS dir;

-- a sink names its table; relid is the table's oid
CREATE TABLE api_target (id int PRIMARY KEY, amount numeric(12,2), ts timestamptz, note text,
                         loaded_at timestamptz DEFAULT now());
SELECT sluice.append_sink('api_target') - 'relid' AS sink,
       (sluice.append_sink('api_target')->>'relid')::oid = 'api_target'::regclass AS relid_ok;
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."Odd Table" (id int);
SELECT sluice.append_sink('"Odd Schema"."Odd Table"')->>'target' AS target;
DROP SCHEMA "Odd Schema" CASCADE;

-- five files, whose mtimes do not follow their names:
-- f3 (oldest), f1, f5, f2, f4 (newest)
\! rm -rf "$SLUICE_TEST_DIR"/api && mkdir -p "$SLUICE_TEST_DIR"/api
\set f :dir/f1.csv
COPY (SELECT g AS id, g * 1.25 AS amount, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour' AS ts,
             'row ' || g AS note
        FROM generate_series(1, 10) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :dir/f2.csv
COPY (SELECT g AS id, g * 1.25 AS amount, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour' AS ts,
             CASE WHEN g % 2 = 0 THEN 'comma, "quoted"' END AS note
        FROM generate_series(11, 30) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :dir/f3.csv
COPY (SELECT g AS id, g * 1.25 AS amount, NULL AS ts, E'multi\nline' AS note
        FROM generate_series(31, 33) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :dir/f4.csv
COPY (SELECT g AS id, g * 1.25 AS amount, NULL AS ts, NULL AS note
        FROM generate_series(34, 40) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :dir/f5.csv
COPY (SELECT g AS id, 0 AS amount, NULL AS ts, 'x' AS note
        FROM generate_series(41, 41) g) TO :'f' WITH (FORMAT csv, HEADER);
-- not matching the pattern, or hidden: never read
\set f :dir/ignored.txt
COPY (SELECT 1000 AS id) TO :'f' WITH (FORMAT csv, HEADER);
\set f :dir/.hidden.csv
COPY (SELECT 1001 AS id) TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/api/f3.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/api/f1.csv
\! touch -d @1704067203 "$SLUICE_TEST_DIR"/api/f5.csv
\! touch -d @1704067204 "$SLUICE_TEST_DIR"/api/f2.csv
\! touch -d @1704067205 "$SLUICE_TEST_DIR"/api/f4.csv
\! touch -d @1704067200 "$SLUICE_TEST_DIR"/api/ignored.txt "$SLUICE_TEST_DIR"/api/.hidden.csv

-- the source's columns may be a subset, in any order; loaded_at keeps its default
SELECT sluice.create_pipeline('api',
    sluice.csv_source(:'dir', 'id int, amount numeric, ts timestamptz, note text',
                      max_files_per_trigger => 2),
    sluice.append_sink('api_target'),
    trigger => 'available_now');

-- a new pipeline is stopped and has done nothing
SELECT name, owner = current_user::regrole AS owner_ok, state, trigger, source_type, target,
       worker_pid, batch_in_flight, last_batch_id, last_batch_at, last_input_rows,
       last_rows_per_second, batches, input_rows, files_pending, last_error, last_error_at
  FROM sluice.pipelines;
SELECT * FROM sluice.progress('api');
SELECT count(*) FROM sluice.errors;

-- run_once drains the directory in batches of at most 2 files, oldest first
SELECT sluice.run_once('api');
SELECT count(*), count(DISTINCT id), sum(amount), count(ts), count(note),
       count(*) FILTER (WHERE note = E'multi\nline') AS multiline,
       count(*) FILTER (WHERE note = 'comma, "quoted"') AS quoted,
       count(*) FILTER (WHERE loaded_at IS NULL) AS no_default
  FROM api_target;
SELECT batch_id, status, attempts, files, input_rows, bytes,
       rows_per_second > 0 AS rps_ok,
       duration_ms ?& ARRAY['plan', 'write', 'total'] AS durations_ok,
       start_offset,
       end_offset->'log_offset' AS end_log_offset,
       replace((SELECT jsonb_agg(f - 'mtime') FROM jsonb_array_elements(end_offset->'files') f)::text,
               :'test_dir', '$SLUICE_TEST_DIR') AS end_files,
       planned_at <= committed_at AS times_ok
  FROM sluice.progress('api');
-- the mtimes recorded are the files' own
SELECT replace(f->>'path', :'test_dir', '$SLUICE_TEST_DIR') AS path,
       extract(epoch FROM (f->>'mtime')::timestamptz) AS mtime
  FROM sluice.progress('api') p, jsonb_array_elements(p.end_offset->'files') f
 ORDER BY 2;
SELECT batch_id FROM sluice.progress('api', 1);
SELECT name, state, worker_pid, batch_in_flight, last_batch_id, last_input_rows,
       last_batch_at IS NOT NULL AS last_batch_at_set, last_rows_per_second > 0 AS last_rps_ok,
       batches, input_rows, files_pending, last_error
  FROM sluice.pipelines;

-- nothing left: a second run_once commits no batch
SELECT sluice.run_once('api');
SELECT count(*) FROM api_target;
SELECT count(*) FROM sluice.progress('api');

-- a new file is picked up by the next run, as batch 4
\set f :dir/f6.csv
COPY (SELECT g AS id, 1 AS amount, NULL AS ts, NULL AS note FROM generate_series(42, 44) g)
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.run_once('api');
SELECT batch_id, files, input_rows,
       replace(end_offset->'files'->0->>'path', :'test_dir', '$SLUICE_TEST_DIR') AS path
  FROM sluice.progress('api', 1);
SELECT count(*), max(id) FROM api_target;

-- start: the launcher gives the pipeline a worker, which drains what
-- arrives; an available_now pipeline is stopped again once it drained
\set f :dir/f7.csv
COPY (SELECT g AS id, 2 AS amount, NULL AS ts, NULL AS note FROM generate_series(45, 46) g)
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.start('api');
SELECT wait_until($$(SELECT count(*) = 46 FROM api_target)$$);
SELECT wait_until($$(SELECT state = 'stopped' AND worker_pid IS NULL FROM sluice.pipelines WHERE name = 'api')$$);
SELECT name, state, last_batch_id, batches, input_rows, files_pending FROM sluice.pipelines;

-- a pipeline with an interval trigger keeps its worker
CREATE TABLE api_target2 (id int, amount numeric, ts timestamptz, note text);
SELECT sluice.create_pipeline('api2',
    sluice.csv_source(:'dir', 'id int, amount numeric, ts timestamptz, note text',
                      pattern => 'f[67].csv'),
    sluice.append_sink('api_target2'), '100 milliseconds');
SELECT sluice.start('api2');
SELECT state FROM sluice.pipelines WHERE name = 'api2';
-- (backpressure takes the two files one at a time: the first batch of a backlog takes one)
SELECT wait_until($$(SELECT worker_pid IS NOT NULL AND batches = 2 FROM sluice.pipelines WHERE name = 'api2')$$);
SELECT count(*) FROM api_target2;
SELECT backend_type, application_name FROM pg_stat_activity
 WHERE pid = (SELECT worker_pid FROM sluice.pipelines WHERE name = 'api2');
-- run_once is refused while it runs
SELECT sluice.run_once('api2');
-- start is idempotent
SELECT sluice.start('api2');
SELECT state FROM sluice.pipelines WHERE name = 'api2';
-- stop ends the worker
SELECT sluice.stop('api2');
SELECT wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'api2')$$);
SELECT name, state, batches, input_rows, files_pending FROM sluice.pipelines ORDER BY name;
SELECT sluice.run_once('api2');
SELECT sluice.stop('api2');

-- start and stop act at commit: a rolled back start starts nothing
BEGIN;
SELECT sluice.start('api2');
ROLLBACK;
SELECT state FROM sluice.pipelines WHERE name = 'api2';

-- drop_pipeline forgets the pipeline with its batches, files and errors
SELECT sluice.drop_pipeline('api');
SELECT sluice.drop_pipeline('api2');
SELECT count(*) FROM sluice.pipelines;
SELECT (SELECT count(*) FROM sluice.pipeline) AS pipelines, (SELECT count(*) FROM sluice.batch) AS batches,
       (SELECT count(*) FROM sluice.file) AS files, (SELECT count(*) FROM sluice.error) AS errors;
-- the target keeps its rows
SELECT count(*) FROM api_target;

-- a name can be used again after a drop; the new pipeline starts from scratch
SELECT sluice.create_pipeline('api',
    sluice.csv_source(:'dir', 'id int, amount numeric, ts timestamptz, note text',
                      pattern => 'f5.csv'),
    sluice.append_sink('api_target2'));
SELECT sluice.run_once('api');
SELECT batch_id, files, input_rows FROM sluice.progress('api');
SELECT sluice.drop_pipeline('api');

DROP TABLE api_target, api_target2;
DROP FUNCTION wait_until(text);
\! rm -rf "$SLUICE_TEST_DIR"/api

--
-- 15_alter: alter_pipeline() changes what Spark lets a restarted query
-- change (limits per trigger, the trigger, backpressure, a transform that
-- gives the sink the same columns, the worker counts), refuses the rest with an error that says
-- to create a new pipeline, and is its owner's alone.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/alter
\! rm -rf "$SLUICE_TEST_DIR"/alter && mkdir -p "$SLUICE_TEST_DIR"/alter
\! for i in 1 2 3 4 5 6; do printf 'id,v\n%d,v%d\n' $i $i > "$SLUICE_TEST_DIR"/alter/f$i.csv; touch -d @170000000$i "$SLUICE_TEST_DIR"/alter/f$i.csv; done

CREATE TABLE alter_t (id int, v text);
SELECT sluice.create_pipeline('alt', sluice.csv_source(:'dir', 'id int, v text', max_files_per_trigger => 1),
                              sluice.append_sink('alter_t'), '1 second');
CREATE VIEW alter_row AS
SELECT trigger, source->'max_files_per_trigger' AS max_files, source->'max_bytes_per_trigger' AS max_bytes,
       backpressure, transform, min_workers, max_workers
  FROM sluice.pipeline WHERE name = 'alt';
TABLE alter_row;
-- create_pipeline() checks worker counts as alter_pipeline() does
SELECT sluice.create_pipeline('alt2', sluice.csv_source(:'dir', 'id int, v text'), sluice.append_sink('alter_t'),
                              min_workers => 0);
SELECT sluice.create_pipeline('alt2', sluice.csv_source(:'dir', 'id int, v text'), sluice.append_sink('alter_t'),
                              min_workers => 3, max_workers => 2);
SELECT sluice.create_pipeline('alt2', sluice.csv_source(:'dir', 'id int, v text'), sluice.append_sink('alter_t'),
                              max_workers => NULL);

-- what may change; NULL leaves a value as it was
SELECT sluice.alter_pipeline('alt', trigger => '200 milliseconds', max_files_per_trigger => 2,
                             backpressure => false);
TABLE alter_row;
SELECT sluice.alter_pipeline('alt', max_bytes_per_trigger => 1000000,
                             transform => 'SELECT id + 100 AS id, upper(v) AS v FROM batch');
TABLE alter_row;
-- the limits of a source described anew; 0 takes a limit away, '' the transform
SELECT sluice.alter_pipeline('alt', source => sluice.csv_source(:'dir', 'id int, v text', max_files_per_trigger => 4));
SELECT sluice.alter_pipeline('alt', max_bytes_per_trigger => 0, transform => '');
TABLE alter_row;
-- the next worker takes the new limit: 4 files, then 2
SELECT sluice.run_once('alt') AS batches;
SELECT string_agg(files::text, ' ' ORDER BY batch_id) AS files FROM sluice.progress('alt');

-- what may not
SELECT sluice.alter_pipeline('alt', source => sluice.csv_source(:'dir', 'id int, v text', pattern => '*.txt'));
SELECT sluice.alter_pipeline('alt', source => sluice.csv_source(:'dir', 'id int', max_files_per_trigger => 4));
CREATE TABLE alter_other (id int, v text);
SELECT sluice.alter_pipeline('alt', sink => sluice.append_sink('alter_other'));
SELECT sluice.alter_pipeline('alt', sink => sluice.append_sink('alter_t'));  -- the same sink: nothing changes
SELECT sluice.alter_pipeline('alt', event_time => 'v');
SELECT sluice.alter_pipeline('alt', transform => 'SELECT id FROM batch');
SELECT sluice.alter_pipeline('alt', transform => 'SELECT id::text AS id, v FROM batch');
SELECT sluice.alter_pipeline('alt', transform => 'DELETE FROM alter_t');
SELECT sluice.alter_pipeline('alt', max_offsets_per_trigger => 10);
SELECT sluice.alter_pipeline('alt', max_files_per_trigger => -1);
SELECT sluice.alter_pipeline('alt', trigger => 'soon');
SELECT sluice.alter_pipeline('alt', backpressure => NULL);  -- NULL: unchanged
-- worker counts: 1 <= min_workers <= max_workers <= sluice.max_workers
SELECT sluice.alter_pipeline('alt', max_workers => 3);
SELECT sluice.alter_pipeline('alt', min_workers => 2);
SELECT min_workers, max_workers FROM alter_row;
SELECT sluice.alter_pipeline('alt', min_workers => 0);
SELECT sluice.alter_pipeline('alt', max_workers => 1);  -- below min_workers 2
SELECT sluice.alter_pipeline('alt', max_workers => current_setting('sluice.max_workers')::int + 1);
SELECT sluice.alter_pipeline('alt', min_workers => 1, max_workers => 1);
SELECT sluice.alter_pipeline('no_such_pipeline', trigger => '1 second');
SELECT sluice.alter_pipeline(NULL);
TABLE alter_row;

-- another role can neither see nor change it
CREATE ROLE regress_alter_other LOGIN;
SET ROLE regress_alter_other;
SELECT sluice.alter_pipeline('alt', trigger => '1 hour');
RESET ROLE;
SELECT trigger FROM alter_row;

DROP VIEW alter_row;
SELECT sluice.drop_pipeline('alt');
DROP TABLE alter_t, alter_other;
DROP ROLE regress_alter_other;

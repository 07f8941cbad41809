--
-- 02_errors: every error a user can cause through the SQL interface, and a
-- batch that fails at run time.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
-- the PL/pgSQL line numbers of the raising functions are not the point here
\set SHOW_CONTEXT never
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run;
-- where a path is printed, it is printed as $SLUICE_TEST_DIR/... (an error
-- that names a file is printed through test/psql_test_dir)
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/errors
\set empty :dir/empty
\set bad :dir/bad

\i test/regress/wait_until.sql

\! rm -rf "$SLUICE_TEST_DIR"/errors && mkdir -p "$SLUICE_TEST_DIR"/errors/bad "$SLUICE_TEST_DIR"/errors/empty
\set f :dir/a_file.csv
COPY (SELECT 1 AS id) TO :'f' WITH (FORMAT csv, HEADER);

--
-- csv_source(): column lists
--
SELECT sluice.csv_source('/tmp', 'id int,');
SELECT sluice.csv_source('/tmp', 'id');
SELECT sluice.csv_source('/tmp', '');
SELECT sluice.csv_source('/tmp', 'id int); DROP TABLE pg_class; CREATE TABLE x (y int');
SELECT sluice.csv_source('/tmp', 'id int, amount nosuchtype');
SELECT sluice.csv_source('/tmp', 'id int PRIMARY KEY');
SELECT sluice.csv_source('/tmp', 'id int NOT NULL');
SELECT sluice.csv_source('/tmp', 'id int DEFAULT 1');
SELECT sluice.csv_source('/tmp', 'v text COLLATE "C"');
SELECT sluice.csv_source('/tmp', 'id int, PRIMARY KEY (id)');
SELECT sluice.csv_source('/tmp', 'LIKE pg_class');
SELECT sluice.csv_source('/tmp', 'id int, v text, ID bigint');
SELECT sluice.csv_source('/tmp', 'id int) PARTITION BY RANGE (id');
-- arguments that must not be null
SELECT sluice.csv_source(NULL, 'id int');
SELECT sluice.csv_source('/tmp', NULL);
SELECT sluice.csv_source('/tmp', 'id int', header => NULL);
SELECT sluice.csv_source('/tmp', 'id int', pattern => NULL);

--
-- csv_source(): directory and COPY options
--
SELECT sluice.csv_source('tmp/data', 'id int');
SELECT sluice.csv_source('', 'id int');
SELECT sluice.csv_source('/tmp', 'id int', delimiter => ',,');
SELECT sluice.csv_source('/tmp', 'id int', delimiter => '"');
SELECT sluice.csv_source('/tmp', 'id int', quote => 'ab');
SELECT sluice.csv_source('/tmp', 'id int', escape => '');
SELECT sluice.csv_source('/tmp', 'id int', null_string => E'a\nb');
SELECT sluice.csv_source('/tmp', 'id int', encoding => 'no_such_encoding');
SELECT sluice.csv_source('/tmp', 'id int', max_files_per_trigger => 0);
SELECT sluice.csv_source('/tmp', 'id int', max_files_per_trigger => -5);
SELECT sluice.csv_source('/tmp', 'id int', max_bytes_per_trigger => 0);

--
-- append_sink(): the target must exist
--
SELECT sluice.append_sink('no_such_table');
SELECT sluice.append_sink(NULL) IS NULL AS null_sink;

--
-- create_pipeline()
--
CREATE TABLE errors_target (id int PRIMARY KEY, v text, doubled int GENERATED ALWAYS AS (id * 2) STORED,
                            ts timestamptz);
CREATE VIEW errors_view AS SELECT id, v FROM errors_target;
CREATE SEQUENCE errors_seq;

-- directories that cannot be listed
\! test/psql_test_dir -v SHOW_CONTEXT=never -c "SELECT sluice.create_pipeline('e', sluice.csv_source('$SLUICE_TEST_DIR/errors/no_such_dir', 'id int'), sluice.append_sink('errors_target'))"
\! test/psql_test_dir -v SHOW_CONTEXT=never -c "SELECT sluice.create_pipeline('e', sluice.csv_source('$SLUICE_TEST_DIR/errors/a_file.csv', 'id int'), sluice.append_sink('errors_target'))"
-- triggers
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'), 'soon');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'), '-1 second');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'), '');
-- null arguments
SELECT sluice.create_pipeline(NULL, sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              NULL);
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'), NULL);
-- sources and sinks not made by csv_source() and append_sink()
SELECT sluice.create_pipeline('e', '{"type": "kafka"}', sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', '[]', sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              '{"type": "merge"}');
-- targets that are not tables
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_view'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_seq'));
-- source columns that the target cannot take
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, nope text'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, "ID" int'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, doubled int'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ts point'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id text'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, ctid tid'),
                              sluice.append_sink('errors_target'));
-- ... but implicit and assignment casts are fine (COPY parses into the target's types)
SELECT sluice.create_pipeline('ok', sluice.csv_source(:'empty', 'id int2, v varchar(3), ts date'),
                              sluice.append_sink('errors_target'));
-- names
SELECT sluice.create_pipeline('ok', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('OK', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline('', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'));
SELECT sluice.create_pipeline(repeat('n', 64), sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'));
-- 63 characters are fine
SELECT sluice.create_pipeline(repeat('n', 63), sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('errors_target'));
SELECT name FROM sluice.pipelines ORDER BY name;
SELECT sluice.drop_pipeline('OK');
SELECT sluice.drop_pipeline(repeat('n', 63));

--
-- pipelines that do not exist (names are case-sensitive)
--
SELECT sluice.start('nope');
SELECT sluice.stop('nope');
SELECT sluice.drop_pipeline('nope');
SELECT sluice.run_once('nope');
SELECT * FROM sluice.progress('nope');
SELECT sluice.start('Ok');
SELECT sluice.start(NULL) IS NULL AS strict;

--
-- a database other than sluice.database
--
CREATE DATABASE regress_sluice_other;
\c regress_sluice_other
SET client_min_messages = warning;
CREATE EXTENSION sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
CREATE TABLE t (id int);
SELECT sluice.create_pipeline('other', sluice.csv_source(:'empty', 'id int'),
                              sluice.append_sink('t'));
SELECT sluice.run_once('other');
SELECT count(*) FROM sluice.pipeline;
\c contrib_regression
DROP DATABASE regress_sluice_other;
\set SHOW_CONTEXT never

--
-- a batch that fails at run time: a malformed line in the second of two
-- files of a batch
--
\set f :bad/a.csv
COPY (SELECT g AS id, 'a' || g AS v FROM generate_series(1, 3) g)
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :bad/b.csv
COPY (SELECT * FROM (VALUES ('4', 'b4'), ('five', 'b5'), ('6', 'b6')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :bad/c.csv
COPY (SELECT g AS id, 'c' || g AS v FROM generate_series(7, 8) g)
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/errors/bad/a.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/errors/bad/b.csv
\! touch -d @1704067203 "$SLUICE_TEST_DIR"/errors/bad/c.csv
TRUNCATE errors_target;
SELECT sluice.create_pipeline('bad', sluice.csv_source(:'bad', 'id int, v text',
                                                       max_files_per_trigger => 2),
                              sluice.append_sink('errors_target'));
-- run_once raises the batch's error, with the file and the line
\! test/psql_test_dir -c "SELECT sluice.run_once('bad')"
-- nothing of the batch is visible, not even the rows of its good first file
SELECT count(*) FROM errors_target;
SELECT name, state, worker_pid, batches, input_rows, files_pending, last_error,
       last_error_at IS NOT NULL AS last_error_at_set
  FROM sluice.pipelines WHERE name = 'bad';
SELECT pipeline, batch_id, sqlstate, message, detail, hint,
       replace(context, :'test_dir', '$SLUICE_TEST_DIR') AS context
  FROM sluice.errors;
-- the batch stays planned, with the same files, for a retry
SELECT batch_id, status, attempts, files, input_rows,
       replace((SELECT jsonb_agg(f->>'path') FROM jsonb_array_elements(end_offset->'files') f)::text,
               :'test_dir', '$SLUICE_TEST_DIR') AS files
  FROM sluice.progress('bad');
SELECT replace(path, :'test_dir', '$SLUICE_TEST_DIR') AS path, batch_id, committed FROM sluice.file ORDER BY path;

-- a retry of the unchanged batch fails again, the same way
SELECT sluice.run_once('bad');
SELECT batch_id, status, attempts FROM sluice.progress('bad');
SELECT batch_id, sqlstate, message FROM sluice.errors ORDER BY time;

-- fixed: the retry takes up batch 1 again and commits it, then batch 2
\set f :bad/b.csv
COPY (SELECT * FROM (VALUES ('4', 'b4'), ('5', 'b5'), ('6', 'b6')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.run_once('bad');
SELECT id, v FROM errors_target ORDER BY id;
SELECT batch_id, status, attempts, files, input_rows,
       replace((SELECT jsonb_agg(f->>'path') FROM jsonb_array_elements(end_offset->'files') f)::text,
               :'test_dir', '$SLUICE_TEST_DIR') AS files
  FROM sluice.progress('bad');
SELECT name, state, batches, input_rows, files_pending, last_error FROM sluice.pipelines WHERE name = 'bad';
SELECT count(*) FROM sluice.errors;
SELECT sluice.run_once('bad');

-- a row the target refuses (a duplicate key) fails the batch the same way
\set f :bad/d.csv
COPY (SELECT * FROM (VALUES (9, 'd9'), (1, 'again')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! test/psql_test_dir -c "SELECT sluice.run_once('bad')"
SELECT count(*) FROM errors_target;
SELECT batch_id, sqlstate, message, detail FROM sluice.errors ORDER BY time DESC LIMIT 1;
\! rm "$SLUICE_TEST_DIR"/errors/bad/d.csv

-- the planned batch lists a file that is gone now
\! test/psql_test_dir -c "SELECT sluice.run_once('bad')"
SELECT name, state, files_pending FROM sluice.pipelines WHERE name = 'bad';

-- a target cannot be dropped while a pipeline writes into it
CREATE TABLE errors_gone (id int, v text);
SELECT sluice.create_pipeline('gone', sluice.csv_source(:'bad', 'id int, v text'),
                              sluice.append_sink('errors_gone'));
DROP TABLE errors_gone;
\set VERBOSITY terse
SELECT sluice.run_once('gone');
\set VERBOSITY default
SELECT pipeline, batch_id, sqlstate, message FROM sluice.errors WHERE pipeline = 'gone';

-- a pipeline is visible to its worker only once committed
BEGIN;
SELECT sluice.create_pipeline('uncommitted', sluice.csv_source(:'bad', 'id int, v text'),
                              sluice.append_sink('errors_target'));
DO $$
BEGIN
    PERFORM sluice.run_once('uncommitted');
EXCEPTION WHEN undefined_object THEN
    RAISE NOTICE 'run_once: %', regexp_replace(SQLERRM, '[0-9]+', 'N');
END
$$;
ROLLBACK;

-- a cancelled run_once stops its worker; the batch in flight rolls back
CREATE TABLE errors_slow (id int, v text);
CREATE FUNCTION errors_slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(1);
    RETURN NEW;
END
$$;
CREATE TRIGGER slow BEFORE INSERT ON errors_slow FOR EACH ROW EXECUTE FUNCTION errors_slow_row();
SELECT sluice.create_pipeline('slow', sluice.csv_source(:'bad', 'id int, v text',
                                                        pattern => '[ab].csv'),
                              sluice.append_sink('errors_slow'));
SET statement_timeout = '2s';
SELECT sluice.run_once('slow');
RESET statement_timeout;
SELECT wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'slow')$$);
SELECT count(*) FROM errors_slow;
SELECT name, state, batches FROM sluice.pipelines WHERE name = 'slow';
SELECT batch_id, status, attempts FROM sluice.progress('slow');
DROP TRIGGER slow ON errors_slow;
SELECT sluice.run_once('slow');
SELECT count(*) FROM errors_slow;
SELECT batch_id, status, attempts, files, input_rows FROM sluice.progress('slow');

SELECT sluice.drop_pipeline('bad');
SELECT sluice.drop_pipeline('slow');
SELECT sluice.drop_pipeline('gone');
DROP TABLE errors_gone;
SELECT sluice.drop_pipeline('ok');
SELECT count(*) FROM sluice.pipelines;
DROP VIEW errors_view;
DROP TABLE errors_target;
DROP SEQUENCE errors_seq;
DROP TABLE errors_slow;
DROP FUNCTION errors_slow_row();
DROP FUNCTION wait_until(text);
\! rm -rf "$SLUICE_TEST_DIR"/errors

--
-- 03_security: who may create pipelines, who sees and controls them, and
-- as whom their workers run.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run;
-- where a path is printed, it is printed as $SLUICE_TEST_DIR/... (an error
-- that names a file is printed through test/psql_test_dir)
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/security
\set alice :dir/alice
\set bob :dir/bob

\! rm -rf "$SLUICE_TEST_DIR"/security && mkdir -p "$SLUICE_TEST_DIR"/security/alice "$SLUICE_TEST_DIR"/security/bob
\set f :alice/1.csv
COPY (SELECT g AS id, 'alice' || g AS v FROM generate_series(1, 3) g)
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :bob/1.csv
COPY (SELECT g AS id, 'bob' || g AS v FROM generate_series(1, 2) g)
  TO :'f' WITH (FORMAT csv, HEADER);

CREATE ROLE regress_sluice_alice LOGIN;
CREATE ROLE regress_sluice_bob LOGIN;
CREATE ROLE regress_sluice_nologin NOLOGIN;
GRANT pg_read_server_files TO regress_sluice_bob, regress_sluice_nologin;
CREATE TABLE sec_alice (id int, v text);
CREATE TABLE sec_bob (id int, v text);
CREATE TABLE sec_locked (id int, v text);
GRANT SELECT, INSERT ON sec_alice TO regress_sluice_alice;
GRANT SELECT, INSERT ON sec_bob TO regress_sluice_bob;
GRANT SELECT, INSERT ON sec_locked TO regress_sluice_nologin;

--
-- creating a pipeline takes LOGIN and pg_read_server_files
--
SET ROLE regress_sluice_alice;
SELECT sluice.create_pipeline('alice_p',
    sluice.csv_source(:'alice', 'id int, v text'),
    sluice.append_sink('sec_alice'));
-- the internal directory listing is guarded the same way
SELECT count(*) FROM sluice._list_files(:'alice', '*');
-- and only a superuser may make workers crash
SET sluice.crash_at = 'after_plan';
RESET ROLE;

SET ROLE regress_sluice_nologin;
SELECT sluice.create_pipeline('nologin_p',
    sluice.csv_source(:'alice', 'id int, v text'),
    sluice.append_sink('sec_locked'));
RESET ROLE;

GRANT pg_read_server_files TO regress_sluice_alice;
SET ROLE regress_sluice_alice;
SELECT sluice.create_pipeline('alice_p',
    sluice.csv_source(:'alice', 'id int, v text'),
    sluice.append_sink('sec_alice'));
-- ... and INSERT on the target
SELECT sluice.create_pipeline('alice_locked',
    sluice.csv_source(:'alice', 'id int, v text'),
    sluice.append_sink('sec_locked'));
SELECT sluice.run_once('alice_p');
SELECT name, owner, state, batches, input_rows, files_pending FROM sluice.pipelines;
-- alice cannot make her pipeline run as someone else
UPDATE sluice.pipeline SET owner = 'regress_sluice_bob'::regrole WHERE name = 'alice_p';
INSERT INTO sluice.pipeline (name, owner, source, sink, trigger)
SELECT 'alice_as_bob', 'regress_sluice_bob'::regrole, source, sink, trigger
  FROM sluice.pipeline WHERE name = 'alice_p';
RESET ROLE;

-- a failed batch of alice's, for the errors she alone sees
\set f :alice/2.csv
COPY (SELECT 'x' AS id, 'bad' AS v) TO :'f' WITH (FORMAT csv, HEADER);
SET ROLE regress_sluice_alice;
SELECT sluice.run_once('alice_p');
SELECT pipeline, batch_id, sqlstate, message FROM sluice.errors;
RESET ROLE;
SELECT id AS alice_id FROM sluice.pipeline WHERE name = 'alice_p' \gset

--
-- bob sees and controls only his own pipelines
--
SET ROLE regress_sluice_bob;
SELECT sluice.create_pipeline('bob_p',
    sluice.csv_source(:'bob', 'id int, v text'),
    sluice.append_sink('sec_bob'));
SELECT sluice.run_once('bob_p');
SELECT name, owner, state, batches, input_rows FROM sluice.pipelines;
SELECT count(*) FROM sluice.errors;
SELECT (SELECT count(*) FROM sluice.pipeline) AS pipelines, (SELECT count(*) FROM sluice.batch) AS batches,
       (SELECT count(*) FROM sluice.file) AS files, (SELECT count(*) FROM sluice.error) AS errors;
SELECT * FROM sluice.progress('alice_p');
SELECT sluice.start('alice_p');
SELECT sluice.stop('alice_p');
SELECT sluice.run_once('alice_p');
SELECT sluice.drop_pipeline('alice_p');
-- nor through the catalog tables
UPDATE sluice.pipeline SET state = 'running' WHERE id = :alice_id;
DELETE FROM sluice.batch WHERE pipeline_id = :alice_id;
DELETE FROM sluice.pipeline WHERE id = :alice_id;
INSERT INTO sluice.error (pipeline_id, sqlstate, message) VALUES (:alice_id, '01000', 'forged');
RESET ROLE;

-- a superuser sees everything, and alice's pipeline is untouched
SELECT name, owner, state, batches, input_rows FROM sluice.pipelines ORDER BY name;
SELECT pipeline, batch_id, sqlstate FROM sluice.errors ORDER BY pipeline, time;

--
-- the worker runs as the pipeline's owner, whoever calls run_once()
--
\set f :alice/2.csv
COPY (SELECT 4 AS id, 'alice4' AS v) TO :'f' WITH (FORMAT csv, HEADER);
REVOKE INSERT ON sec_alice FROM regress_sluice_alice;
\! test/psql_test_dir -c "SELECT sluice.run_once('alice_p')"
SELECT count(*) FROM sec_alice;
SELECT pipeline, batch_id, sqlstate, message FROM sluice.errors ORDER BY time DESC LIMIT 1;
GRANT INSERT ON sec_alice TO regress_sluice_alice;
SELECT sluice.run_once('alice_p');
SELECT id, v FROM sec_alice ORDER BY id;

-- an owner who lost pg_read_server_files can no longer run it
REVOKE pg_read_server_files FROM regress_sluice_alice;
\set f :alice/3.csv
COPY (SELECT 5 AS id, 'alice5' AS v) TO :'f' WITH (FORMAT csv, HEADER);
\set SHOW_CONTEXT errors
SELECT sluice.run_once('alice_p');
\set SHOW_CONTEXT never
SELECT pipeline, batch_id, sqlstate, message, detail, hint FROM sluice.errors ORDER BY time DESC LIMIT 1;
SELECT count(*) FROM sec_alice;
SET ROLE regress_sluice_alice;
SELECT name, state, files_pending FROM sluice.pipelines;
RESET ROLE;

SELECT sluice.drop_pipeline('alice_p');
SELECT sluice.drop_pipeline('bob_p');
SELECT count(*) FROM sluice.pipelines;
DROP TABLE sec_alice, sec_bob, sec_locked;
DROP ROLE regress_sluice_alice, regress_sluice_bob, regress_sluice_nologin;
\! rm -rf "$SLUICE_TEST_DIR"/security

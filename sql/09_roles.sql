--
-- 09_roles: pipelines and the roles that own them.  A role that owns
-- pipelines cannot be dropped, here or from another database; DROP OWNED
-- and REASSIGN OWNED take its pipelines along; an owner that can no longer
-- log in or read server files gets a failed pipeline with the reason.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/roles

\i test/regress/wait_until.sql

\! rm -rf "$SLUICE_TEST_DIR"/roles && mkdir -p "$SLUICE_TEST_DIR"/roles
\set f :dir/1.csv
COPY (SELECT g AS id FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER);

CREATE ROLE regress_sluice_owner LOGIN;
CREATE ROLE regress_sluice_heir LOGIN;
GRANT pg_read_server_files TO regress_sluice_owner, regress_sluice_heir;
CREATE TABLE roles_t (id int);
GRANT SELECT, INSERT ON roles_t TO regress_sluice_owner, regress_sluice_heir;

SET ROLE regress_sluice_owner;
SELECT sluice.create_pipeline('roles_p', sluice.csv_source(:'dir', 'id int'),
                              sluice.append_sink('roles_t'));
SELECT sluice.run_once('roles_p');
RESET ROLE;

-- not while it owns a pipeline
DROP ROLE regress_sluice_owner;
DROP ROLE IF EXISTS regress_sluice_nobody, regress_sluice_owner;
-- nor from another database, once the launcher has looked at the catalog
SELECT wait_until($$EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'sluice launcher' AND state = 'idle')$$);
\c postgres
DROP ROLE regress_sluice_owner;
\c contrib_regression
\set SHOW_CONTEXT never
SELECT count(*) AS roles FROM pg_roles WHERE rolname = 'regress_sluice_owner';

-- REASSIGN OWNED hands the pipeline over, with its batches and files
REASSIGN OWNED BY regress_sluice_owner TO regress_sluice_heir;
SELECT name, owner, batches, input_rows FROM sluice.pipelines WHERE name = 'roles_p';
-- the new owner sees it and runs it; the old one no longer sees it
SET ROLE regress_sluice_owner;
SELECT count(*) AS visible FROM sluice.pipelines;
SELECT sluice.start('roles_p');
RESET ROLE;
\set f :dir/2.csv
COPY (SELECT g AS id FROM generate_series(4, 5) g) TO :'f' WITH (FORMAT csv, HEADER);
SET ROLE regress_sluice_heir;
SELECT sluice.run_once('roles_p');
SELECT count(*) AS rows, count(DISTINCT id) AS ids FROM roles_t;
RESET ROLE;
-- DROP OWNED BY the old owner leaves the heir's pipeline alone, and the
-- old owner can go
DROP OWNED BY regress_sluice_owner;
DROP ROLE regress_sluice_owner;
SELECT name, owner FROM sluice.pipelines WHERE name = 'roles_p';

-- an owner who can no longer log in: the launcher fails the pipeline with
-- the reason instead of starting workers that cannot connect
SET ROLE regress_sluice_heir;
SELECT sluice.start('roles_p');
RESET ROLE;
SELECT wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'roles_p')$$);
ALTER ROLE regress_sluice_heir NOLOGIN;
SELECT sluice._wake();
SELECT wait_until($$(SELECT state = 'failed' AND worker_pid IS NULL FROM sluice.pipelines WHERE name = 'roles_p')$$);
SELECT pipeline, sqlstate, message, detail, hint FROM sluice.errors WHERE pipeline = 'roles_p';
-- run_once() says so too, even to a superuser
SELECT sluice.run_once('roles_p');
-- once it can log in again, start() brings it back
ALTER ROLE regress_sluice_heir LOGIN;
SET ROLE regress_sluice_heir;
SELECT sluice.start('roles_p');
RESET ROLE;
SELECT wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'roles_p')$$);
-- the same without pg_read_server_files
REVOKE pg_read_server_files FROM regress_sluice_heir;
SELECT sluice._wake();
SELECT wait_until($$(SELECT state = 'failed' AND worker_pid IS NULL FROM sluice.pipelines WHERE name = 'roles_p')$$);
SELECT message, detail FROM sluice.errors WHERE pipeline = 'roles_p' ORDER BY time DESC LIMIT 1;

-- DROP OWNED BY the owner drops the pipeline, and then the role can go
DROP OWNED BY regress_sluice_heir;
SELECT count(*) AS pipelines FROM sluice.pipeline WHERE name = 'roles_p';
DROP ROLE regress_sluice_heir;

DROP TABLE roles_t;
DROP FUNCTION wait_until(text);
\! rm -rf "$SLUICE_TEST_DIR"/roles

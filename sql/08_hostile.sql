--
-- 08_hostile: a hostile login, without special privileges, against another
-- user's pipelines.  Every attack is refused or harmless, and each section
-- checks that nothing happened: the victim's pipelines, batches, files,
-- errors and target rows are as they were, her run_once() still commits,
-- her running pipeline still drains what arrives, and nothing forged exists.
--
-- regress_sluice_victim  LOGIN, pg_read_server_files: owns the pipelines
-- regress_sluice_hostile LOGIN only
-- regress_sluice_reader  LOGIN, pg_read_server_files (may create pipelines of her own)
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
CREATE EXTENSION IF NOT EXISTS dblink;   -- second sessions, as other roles
RESET client_min_messages;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

SELECT current_user AS superuser \gset
-- the test's files go under $SLUICE_TEST_DIR/hostile, a new directory for
-- each run, one directory per pipeline; no path is printed.  Files for the
-- running pipeline are written to stage/ and moved into its directory whole.
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/hostile
\set append :dir/append
\set tx :dir/tx
\set merge :dir/merge
\set win :dir/win
\set fn :dir/fn
\set run :dir/run
\set reader :dir/reader
\set misc :dir/misc
\set stage :dir/stage
\! rm -rf "$SLUICE_TEST_DIR"/hostile && mkdir -p "$SLUICE_TEST_DIR"/hostile/append "$SLUICE_TEST_DIR"/hostile/tx "$SLUICE_TEST_DIR"/hostile/merge "$SLUICE_TEST_DIR"/hostile/win "$SLUICE_TEST_DIR"/hostile/fn "$SLUICE_TEST_DIR"/hostile/run "$SLUICE_TEST_DIR"/hostile/reader "$SLUICE_TEST_DIR"/hostile/misc "$SLUICE_TEST_DIR"/hostile/stage

-- The helpers pin their search_path: the hostile role plants objects in
-- public later on, and these must not pick them up.

-- wait (at most ~30 s) until a boolean query is true (not test/regress/wait_until.sql,
-- whose search_path is the caller's)
CREATE FUNCTION wait_until(cond text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXECUTE 'SELECT (' || cond || ')' INTO ok;
        IF ok THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RAISE EXCEPTION 'timed out waiting for: %', cond;
END
$$;

-- run a statement as the current role: 'done', or the error it raised
CREATE FUNCTION attempt(stmt text) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE stmt;
    RETURN 'done';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLERRM;
END
$$;
GRANT EXECUTE ON FUNCTION attempt(text) TO PUBLIC;

-- libpq connection string for a second session of this database as a role
\i test/regress/conninfo.sql

CREATE ROLE regress_sluice_victim LOGIN;
CREATE ROLE regress_sluice_hostile LOGIN;
CREATE ROLE regress_sluice_reader LOGIN;
GRANT pg_read_server_files TO regress_sluice_victim, regress_sluice_reader;
CREATE SCHEMA hostile_own AUTHORIZATION regress_sluice_hostile;   -- a schema of her own
-- the victim's search_path includes public, where the hostile role will plant things
ALTER ROLE regress_sluice_victim SET search_path = "$user", public;

--
-- The victim: her own schema and tables, and one pipeline of each sink kind
--
CREATE SCHEMA hostile_victim AUTHORIZATION regress_sluice_victim;
SET ROLE regress_sluice_victim;
SET search_path = "$user", public;
CREATE TABLE hostile_victim.t (id int, v text);
CREATE TABLE hostile_victim.tx (id int, v text);
CREATE TABLE hostile_victim.m (id int PRIMARY KEY, v text, n numeric);
-- varchar groups: a window sink compares them, and public.=(varchar, varchar) will be planted
CREATE TABLE hostile_victim.w (window_start timestamptz, window_end timestamptz, k varchar, n bigint, total bigint);
CREATE TABLE hostile_victim.f_log (batch_id bigint, n bigint);
CREATE TABLE hostile_victim.r (id int, v text);
CREATE FUNCTION hostile_victim.f_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE pg_catalog.format('SELECT count(*) FROM %s', batch) INTO n;
    INSERT INTO hostile_victim.f_log VALUES (batch_id, n);
END
$$;
REVOKE EXECUTE ON FUNCTION hostile_victim.f_sink(bigint, regclass) FROM PUBLIC;
RESET ROLE;

\set f :append/1.csv
COPY (SELECT g AS id, 'a' || g AS v FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :tx/1.csv
COPY (SELECT g AS id, 'x' || g AS v FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :merge/1.csv
COPY (SELECT g AS id, 'm' || g AS v, g * 1.5 AS n FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :win/1.csv
COPY (SELECT g AS id, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' AS ts,
             CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END AS k, g AS x
        FROM generate_series(1, 4) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :fn/1.csv
COPY (SELECT g AS id FROM generate_series(1, 5) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :run/1.csv
COPY (SELECT g AS id, 'r' || g AS v FROM generate_series(1, 2) g) TO :'f' WITH (FORMAT csv, HEADER);

SET ROLE regress_sluice_victim;
SELECT sluice.create_pipeline('victim_append',
    sluice.csv_source(:'append', 'id int, v text'),
    sluice.append_sink('hostile_victim.t'));
SELECT sluice.create_pipeline('victim_tx',
    sluice.csv_source(:'tx', 'id int, v text'),
    sluice.append_sink('hostile_victim.tx'), transform => 'SELECT id, upper(v) AS v FROM batch');
SELECT sluice.create_pipeline('victim_merge',
    sluice.csv_source(:'merge', 'id int, v text, n numeric'),
    sluice.merge_sink('hostile_victim.m', '{id}'));
SELECT sluice.create_pipeline('victim_win',
    sluice.csv_source(:'win', 'id int, ts timestamptz, k varchar, x int'),
    sluice.window_sink('hostile_victim.w', '10 minutes', group_by => '{k}',
                       aggregates => '{count(*) AS n, sum(x) AS total}', output_mode => 'update'),
    event_time => 'ts');
SELECT sluice.create_pipeline('victim_fn',
    sluice.csv_source(:'fn', 'id int'),
    sluice.function_sink('hostile_victim.f_sink(bigint, regclass)'));
SELECT sluice.create_pipeline('victim_run',
    sluice.csv_source(:'run', 'id int, v text'),
    sluice.append_sink('hostile_victim.r'), '100 milliseconds');
SELECT sluice.run_once('victim_append'), sluice.run_once('victim_tx'), sluice.run_once('victim_merge'),
       sluice.run_once('victim_win'), sluice.run_once('victim_fn');
SELECT sluice.start('victim_run');
RESET ROLE;
SELECT wait_until($$(SELECT count(*) = 2 FROM hostile_victim.r)$$);
SELECT name, state, batches, input_rows FROM sluice.pipelines WHERE owner = 'regress_sluice_victim'::regrole ORDER BY name;

-- everything of the victim's that an attack could change, as text rows
CREATE FUNCTION victim_state() RETURNS TABLE (what text, val text) LANGUAGE sql
SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres' SET extra_float_digits = 1 AS $$
    WITH p AS (SELECT * FROM sluice.pipeline WHERE owner = 'regress_sluice_victim'::regrole)
    SELECT 'pipeline', p::text FROM p
    UNION ALL
    SELECT 'batch', b::text FROM sluice.batch b WHERE b.pipeline_id IN (SELECT id FROM p)
    UNION ALL
    SELECT 'file', f::text FROM sluice.file f WHERE f.pipeline_id IN (SELECT id FROM p)
    UNION ALL
    SELECT 'error', e::text FROM sluice.error e WHERE e.pipeline_id IN (SELECT id FROM p)
    UNION ALL
    SELECT 'reject', r::text FROM sluice.reject r WHERE r.pipeline_id IN (SELECT id FROM p)
    UNION ALL SELECT 't', x::text FROM hostile_victim.t x
    UNION ALL SELECT 'tx', x::text FROM hostile_victim.tx x
    UNION ALL SELECT 'm', x::text FROM hostile_victim.m x
    UNION ALL SELECT 'w', x::text FROM hostile_victim.w x
    UNION ALL SELECT 'w state', x::text FROM hostile_victim.sluice_state_victim_win x
    UNION ALL SELECT 'f_log', x::text FROM hostile_victim.f_log x
    UNION ALL SELECT 'r', x::text FROM hostile_victim.r x
    UNION ALL
    -- and nothing else: pipelines are the victim's or none, tables are hers
    SELECT 'other pipeline', p::text FROM sluice.pipeline p WHERE owner <> 'regress_sluice_victim'::regrole
    UNION ALL
    SELECT 'relation', c.oid::regclass::text || ' ' || c.relkind::text || ' ' || c.relowner::regrole::text
      FROM pg_class c WHERE c.relnamespace = 'hostile_victim'::regnamespace
$$;
CREATE TABLE victim_snapshot AS SELECT * FROM victim_state();
-- what changed since the snapshot (nothing, each time it is called below)
CREATE FUNCTION victim_changes() RETURNS TABLE (change text, what text, val text) LANGUAGE sql
SET search_path = pg_catalog, pg_temp AS $$
    (SELECT 'gone', * FROM public.victim_snapshot EXCEPT ALL SELECT 'gone', * FROM public.victim_state())
    UNION ALL
    (SELECT 'new', * FROM public.victim_state() EXCEPT ALL SELECT 'new', * FROM public.victim_snapshot)
$$;
SELECT count(*) > 20 AS snapshot_has_rows FROM victim_snapshot;
SELECT id AS victim_append_id FROM sluice.pipeline WHERE name = 'victim_append' \gset
SELECT id AS victim_run_id FROM sluice.pipeline WHERE name = 'victim_run' \gset
SELECT 'hostile_victim.t'::regclass::oid AS victim_t_oid, 'hostile_victim.m'::regclass::oid AS victim_m_oid,
       'hostile_victim.w'::regclass::oid AS victim_w_oid,
       'hostile_victim.sluice_state_victim_win'::regclass::oid AS victim_state_oid \gset

-- the victim still works: victim_files(n) writes a new file for her append
-- pipeline, and one in stage/ that is then moved into her running pipeline's
-- directory; after her run_once(),
-- victim_works(n) waits until the running one drained its file, checks that
-- both rows arrived once, and takes a new snapshot
CREATE FUNCTION victim_files(n int, dir text) RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE 'COPY (SELECT ' || 100 * n || ' AS id, ''check'' AS v) TO '
            || quote_literal(dir || '/append/check' || n || '.csv') || ' WITH (FORMAT csv, HEADER)';
    EXECUTE 'COPY (SELECT ' || 100 * n || ' AS id, ''check'' AS v) TO '
            || quote_literal(dir || '/stage/check' || n || '.csv') || ' WITH (FORMAT csv, HEADER)';
END
$$;
CREATE FUNCTION victim_works(n int) RETURNS text LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.wait_until('(SELECT count(*) = 1 FROM hostile_victim.r WHERE id = ' || 100 * n || ')');
    IF (SELECT count(*) FROM hostile_victim.t WHERE id = 100 * n) <> 1 THEN
        RETURN 'the append pipeline did not commit its new file';
    END IF;
    DELETE FROM public.victim_snapshot;
    INSERT INTO public.victim_snapshot SELECT * FROM public.victim_state();
    RETURN 'both committed';
END
$$;

--
-- 1. Writes of every kind on the catalog, by a login without privileges
--    and by one that can read server files
--
SET ROLE regress_sluice_hostile;
-- what she sees: her own rows, which are none
SELECT (SELECT count(*) FROM sluice.pipeline) AS pipelines, (SELECT count(*) FROM sluice.batch) AS batches,
       (SELECT count(*) FROM sluice.file) AS files, (SELECT count(*) FROM sluice.error) AS errors,
       (SELECT count(*) FROM sluice.reject) AS rejects, (SELECT count(*) FROM sluice.pipelines) AS pipelines_view;
COPY (SELECT * FROM sluice.pipeline) TO STDOUT;
COPY sluice.batch TO STDOUT;
-- a forged running pipeline owned by the victim, straight into the catalog
INSERT INTO sluice.pipeline (name, owner, source, sink, target, trigger, state)
VALUES ('forged', 'regress_sluice_victim', sluice.csv_source(:'append', 'id int, v text'),
        '{"type": "append"}', :victim_t_oid, '1 second', 'running');
INSERT INTO sluice.pipeline (name, owner, source, sink, trigger)
SELECT name || '_copy', owner, source, sink, trigger FROM sluice.pipeline;
-- the victim's rows, by id (she cannot see them, but ids are guessable)
UPDATE sluice.pipeline SET state = 'running' WHERE id = :victim_append_id;
UPDATE sluice.pipeline SET owner = 'regress_sluice_hostile' WHERE true;
DELETE FROM sluice.pipeline WHERE id = :victim_append_id;
DELETE FROM sluice.batch WHERE pipeline_id = :victim_append_id;
UPDATE sluice.file SET committed = false WHERE pipeline_id = :victim_append_id;
INSERT INTO sluice.file (pipeline_id, path, size, mtime, batch_id, committed)
VALUES (:victim_append_id, :'append' || '/never.csv', 0, now(), 99, true);
INSERT INTO sluice.batch (pipeline_id, batch_id, status, planned_at) VALUES (:victim_append_id, 99, 'planned', now());
INSERT INTO sluice.error (pipeline_id, sqlstate, message) VALUES (:victim_append_id, '01000', 'forged');
INSERT INTO sluice.reject (pipeline_id, batch_id, sqlstate, message) VALUES (:victim_append_id, 1, '22P02', 'forged');
MERGE INTO sluice.pipeline p USING (SELECT :victim_append_id AS id) s ON p.id = s.id
 WHEN MATCHED THEN UPDATE SET state = 'running';
WITH d AS (DELETE FROM sluice.file RETURNING *) SELECT count(*) FROM d;
-- every table, every kind of write; in one transaction, which in the end
-- holds no lock stronger than ACCESS SHARE on the catalog's tables, indexes
-- and views (sequences: a refused nextval() still leaves its ROW EXCLUSIVE
-- lock, which PostgreSQL takes before the privilege check)
BEGIN;
SELECT t AS "table", k AS statement, attempt(s) AS result
  FROM unnest(ARRAY['pipeline', 'batch', 'file', 'error', 'reject', 'kafka_offset']) WITH ORDINALITY AS tt(t, tn),
       LATERAL (VALUES (1, 'insert', 'INSERT INTO sluice.' || t || ' DEFAULT VALUES'),
                       (2, 'update', 'UPDATE sluice.' || t || ' x SET '
                                     || CASE t WHEN 'pipeline' THEN 'state = x.state' ELSE 'pipeline_id = x.pipeline_id' END),
                       (3, 'delete', 'DELETE FROM sluice.' || t),
                       (4, 'truncate', 'TRUNCATE sluice.' || t),
                       (5, 'truncate cascade', 'TRUNCATE sluice.' || t || ' CASCADE'),
                       (6, 'merge', 'MERGE INTO sluice.' || t || ' x USING (SELECT 1) s ON false WHEN NOT MATCHED THEN INSERT DEFAULT VALUES'),
                       (7, 'merge do nothing', 'MERGE INTO sluice.' || t || ' x USING (SELECT 1) s ON false WHEN NOT MATCHED THEN DO NOTHING'),
                       (8, 'copy from', 'COPY sluice.' || t || ' FROM ' || quote_literal(:'append' || '/1.csv')),
                       (9, 'copy from program', 'COPY sluice.' || t || ' FROM PROGRAM ''true''')) AS st(kn, k, s)
 ORDER BY tn, kn;
-- the sequences (which she may read, for pg_dump)
SELECT s AS sequence, f AS call, attempt(s2) AS result
  FROM unnest(ARRAY['pipeline_id_seq', 'error_id_seq', 'reject_id_seq']) WITH ORDINALITY AS ss(s, sn),
       LATERAL (VALUES (1, 'nextval', 'SELECT nextval(''sluice.' || s || ''')'),
                       (2, 'setval', 'SELECT setval(''sluice.' || s || ''', 1000)'),
                       (3, 'setval is_called', 'SELECT setval(''sluice.' || s || ''', 1, false)'),
                       (4, 'alter restart', 'ALTER SEQUENCE sluice.' || s || ' RESTART 1'),
                       (5, 'alter owned by', 'ALTER SEQUENCE sluice.' || s || ' OWNED BY NONE'),
                       (6, 'drop', 'DROP SEQUENCE sluice.' || s)) AS c(fn, f, s2)
 ORDER BY sn, fn;
-- LOCK TABLE in every mode: ACCESS SHARE only (SELECT), all others refused, on tables and views
SELECT t AS "table", m AS mode, attempt('LOCK TABLE sluice.' || t || ' IN ' || m || ' MODE NOWAIT') AS result
  FROM unnest(ARRAY['pipeline', 'batch', 'file', 'error', 'reject', 'kafka_offset', 'pipelines', 'errors', 'rejects'])
           WITH ORDINALITY AS tt(t, tn),
       unnest(ARRAY['ACCESS SHARE', 'ROW SHARE', 'ROW EXCLUSIVE', 'SHARE UPDATE EXCLUSIVE', 'SHARE',
                    'SHARE ROW EXCLUSIVE', 'EXCLUSIVE', 'ACCESS EXCLUSIVE']) WITH ORDINALITY AS mm(m, mn)
 ORDER BY tn, mn;
SELECT attempt('LOCK TABLE sluice.pipeline, sluice.batch, sluice.file') AS default_mode;
-- row locks take UPDATE privilege
SELECT t AS "table", l AS "lock", attempt('SELECT 1 FROM sluice.' || t || ' FOR ' || l) AS result
  FROM unnest(ARRAY['pipeline', 'batch', 'file', 'error', 'reject', 'kafka_offset', 'pipelines', 'errors', 'rejects'])
           WITH ORDINALITY AS tt(t, tn),
       unnest(ARRAY['UPDATE', 'NO KEY UPDATE', 'SHARE', 'KEY SHARE']) WITH ORDINALITY AS ll(l, ln)
 ORDER BY tn, ln;
SELECT attempt('SELECT 1 FROM sluice.pipeline FOR KEY SHARE SKIP LOCKED') AS skip_locked,
       attempt('SELECT 1 FROM (SELECT * FROM sluice.pipeline) p FOR SHARE') AS subquery,
       attempt('SELECT 1 FROM sluice.pipeline p JOIN sluice.batch b ON b.pipeline_id = p.id FOR UPDATE OF b') AS join_of,
       attempt('WITH p AS (SELECT * FROM sluice.batch) SELECT 1 FROM p FOR UPDATE') AS cte;  -- (ignored on a WITH query)
SELECT l.relation::regclass AS relation, l.mode
  FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
 WHERE l.pid = pg_backend_pid() AND c.relnamespace = 'sluice'::regnamespace AND c.relkind IN ('r', 'i', 'v')
   AND l.mode <> 'AccessShareLock';
COMMIT;
-- COPY FROM STDIN, through psql
\copy sluice.pipeline (name) FROM PROGRAM 'true'
\copy sluice.file (path) FROM PROGRAM 'true'
-- nor by a foreign key, whose checks lock the rows they point at, or by DDL
SELECT k AS statement, attempt(s) AS result FROM (VALUES
    (1, 'foreign key', 'CREATE TABLE hostile_own.fk (id int REFERENCES sluice.pipeline)'),
    (2, 'foreign key added', 'CREATE TABLE hostile_own.fk2 (id int); ALTER TABLE hostile_own.fk2 ADD FOREIGN KEY (id) REFERENCES sluice.pipeline'),
    (3, 'inherit', 'CREATE TABLE hostile_own.inh () INHERITS (sluice.pipeline)'),
    (4, 'partition', 'CREATE TABLE hostile_own.part (id int) PARTITION BY RANGE (id); ALTER TABLE hostile_own.part ATTACH PARTITION sluice.error FOR VALUES FROM (1) TO (2)'),
    (5, 'trigger', 'CREATE TRIGGER x BEFORE INSERT ON sluice.batch FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()'),
    (6, 'rule', 'CREATE RULE x AS ON INSERT TO sluice.file DO INSTEAD NOTHING'),
    (7, 'policy', 'CREATE POLICY x ON sluice.pipeline USING (true)'),
    (8, 'no row security', 'ALTER TABLE sluice.pipeline DISABLE ROW LEVEL SECURITY'),
    (9, 'owner', 'ALTER TABLE sluice.pipeline OWNER TO regress_sluice_hostile'),
    (10, 'index', 'CREATE INDEX ON sluice.pipeline (name)'),
    (11, 'drop', 'DROP TABLE sluice.error'),
    (12, 'drop view', 'DROP VIEW sluice.pipelines'),
    (13, 'replace view', 'CREATE OR REPLACE VIEW sluice.errors AS SELECT 1 AS pipeline'),
    (14, 'replace function', 'CREATE OR REPLACE FUNCTION sluice.start(name text) RETURNS void LANGUAGE sql AS ''SELECT'''),
    (15, 'new function', 'CREATE FUNCTION sluice.x() RETURNS int LANGUAGE sql AS ''SELECT 1'''),
    (16, 'comment', 'COMMENT ON TABLE sluice.pipeline IS ''x'''),
    (17, 'grant', 'GRANT UPDATE ON sluice.pipeline TO regress_sluice_hostile'),
    (18, 'cluster', 'CLUSTER sluice.pipeline USING pipeline_pkey'),
    (19, 'reindex', 'REINDEX TABLE sluice.batch'),
    (20, 'alter extension', 'ALTER EXTENSION sluice ADD FUNCTION attempt(text)'),
    (21, 'drop extension', 'DROP EXTENSION sluice')) AS s(n, k, s)
 ORDER BY n;
-- (the grant granted nothing)
SELECT has_table_privilege('sluice.pipeline', 'UPDATE') AS may_update, count(*) AS own_tables
  FROM pg_class WHERE relnamespace = 'hostile_own'::regnamespace;
-- (these skip what she does not own)
VACUUM FULL sluice.pipeline;
ANALYZE sluice.batch;
RESET ROLE;
SELECT * FROM victim_changes();
SELECT count(*) AS forged FROM sluice.pipeline WHERE name LIKE 'forged%' OR name LIKE '%\_copy';

-- the same with pg_read_server_files: COPY FROM a file gets past the file check only
SET ROLE regress_sluice_reader;
SELECT t AS "table", attempt('COPY sluice.' || t || ' FROM ' || quote_literal(:'append' || '/1.csv')) AS copy_from,
       attempt('INSERT INTO sluice.' || t || ' SELECT * FROM sluice.' || t) AS insert_select
  FROM unnest(ARRAY['pipeline', 'batch', 'file', 'error', 'reject', 'kafka_offset']) WITH ORDINALITY AS tt(t, tn)
 ORDER BY tn;
RESET ROLE;
SELECT * FROM victim_changes();

--
-- 2. Locks in other sessions while the victim's run_once() runs: advisory
--    locks on the ids the planner once locked, on every id, and ACCESS SHARE
--    on the whole catalog in an open repeatable-read transaction
--
SELECT dblink_connect('hostile', conninfo('regress_sluice_hostile'));
SELECT dblink_connect('hostile2', conninfo('regress_sluice_hostile'));
SELECT * FROM dblink('hostile', 'SELECT current_user, pg_backend_pid() = pg_backend_pid()') AS x(who name, ok boolean);
SELECT * FROM dblink('hostile', format('SELECT pg_advisory_lock(1936487779, %s), pg_advisory_lock(%s::bigint),'
                                       ' pg_advisory_lock(1936487779, %s), pg_advisory_lock(%s::bigint)',
                                       :victim_append_id, :victim_append_id, :victim_run_id, :victim_run_id))
    AS x(a text, b text, c text, d text);
-- every id a pipeline could have had so far, both key forms, shared and exclusive
SELECT * FROM dblink('hostile', 'SELECT count(*) FROM generate_series(1, 200) i,'
                                ' LATERAL (SELECT pg_advisory_lock(1936487779, i) WHERE i NOT IN ('
                                || :victim_append_id || ', ' || :victim_run_id || ')) a') AS x(n bigint);
SELECT * FROM dblink('hostile', 'SELECT count(*) FROM generate_series(1, 200) i,'
                                ' LATERAL (SELECT pg_advisory_lock(i::bigint) WHERE i NOT IN ('
                                || :victim_append_id || ', ' || :victim_run_id || ')) a') AS x(n bigint);
SELECT * FROM dblink('hostile2', 'SELECT count(*) FROM generate_series(201, 300) i,'
                                 ' LATERAL (SELECT pg_advisory_lock_shared(1936487779, i), pg_advisory_lock_shared(i::bigint)) a') AS x(n bigint);
SELECT dblink_exec('hostile2', 'BEGIN ISOLATION LEVEL REPEATABLE READ');
SELECT dblink_exec('hostile2', 'LOCK TABLE sluice.pipeline, sluice.batch, sluice.file, sluice.error, sluice.reject,'
                               ' sluice.pipelines, sluice.errors, sluice.rejects IN ACCESS SHARE MODE');
SELECT * FROM dblink('hostile2', 'SELECT count(*) FROM sluice.pipelines') AS x(n bigint);
-- the hostile sessions hold all of that now
SELECT l.locktype, l.mode, count(*)
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE a.usename = 'regress_sluice_hostile' AND l.granted
   AND (l.locktype = 'advisory'
        OR l.relation IN (SELECT oid FROM pg_class WHERE relnamespace = 'sluice'::regnamespace AND relkind IN ('r', 'v')))
 GROUP BY 1, 2 ORDER BY 1, 2;
\set f :append/locked.csv
COPY (SELECT 50 AS id, 'during locks' AS v) TO :'f' WITH (FORMAT csv, HEADER);
SET ROLE regress_sluice_victim;
SELECT sluice.run_once('victim_append');
SELECT batch_id, status, input_rows FROM sluice.progress('victim_append', 1);
SELECT id, v FROM hostile_victim.t WHERE id = 50;
RESET ROLE;
-- the running pipeline too
\set f :stage/locked.csv
COPY (SELECT 50 AS id, 'during locks' AS v) TO :'f' WITH (FORMAT csv, HEADER);
\! mv "$SLUICE_TEST_DIR"/hostile/stage/locked.csv "$SLUICE_TEST_DIR"/hostile/run/
SELECT wait_until($$(SELECT count(*) = 3 FROM hostile_victim.r)$$);
SELECT dblink_exec('hostile2', 'ROLLBACK');
SELECT * FROM dblink('hostile', 'SELECT pg_advisory_unlock_all()') AS x(v text);
SELECT * FROM dblink('hostile2', 'SELECT pg_advisory_unlock_all()') AS x(v text);
SELECT dblink_disconnect('hostile'), dblink_disconnect('hostile2');
-- the victim's worker cannot be signalled by her
SELECT pid AS victim_run_pid FROM sluice._workers() WHERE pipeline_id = :victim_run_id \gset
SET ROLE regress_sluice_hostile;
SELECT pg_terminate_backend(:victim_run_pid);
SELECT pg_cancel_backend(:victim_run_pid);
-- nor its live values: the worker and backlog of a pipeline she cannot see
SELECT count(*) AS workers_seen, sluice._backlog(:victim_run_id) AS victim_backlog FROM sluice._workers();
RESET ROLE;
SELECT count(*) FILTER (WHERE pipeline_id = :victim_run_id) AS superuser_sees_worker,
       sluice._backlog(:victim_run_id) IS NOT NULL AS superuser_sees_backlog FROM sluice._workers();
SET ROLE pg_read_all_stats;
SELECT count(*) FILTER (WHERE pipeline_id = :victim_run_id) AS stats_reader_sees_worker,
       sluice._backlog(:victim_run_id) IS NOT NULL AS stats_reader_sees_backlog FROM sluice._workers();
RESET ROLE;
SELECT victim_files(1, :'dir');
\! mv "$SLUICE_TEST_DIR"/hostile/stage/*.csv "$SLUICE_TEST_DIR"/hostile/run/
SET ROLE regress_sluice_victim;
SELECT sluice.run_once('victim_append');
RESET ROLE;
SELECT victim_works(1);
SELECT * FROM victim_changes();

--
-- 3. Forged pipelines through create_pipeline(): hand-written descriptions
--    are rebuilt by their constructors and checked as the caller
--
CREATE SCHEMA hostile_reader AUTHORIZATION regress_sluice_reader;
SET ROLE regress_sluice_reader;
CREATE TABLE hostile_reader.t (id int, v text);
CREATE TABLE hostile_reader.w (window_start timestamptz, window_end timestamptz, k varchar, n bigint);
RESET ROLE;
\set f :reader/1.csv
COPY (SELECT 1 AS id, 'reader' AS v) TO :'f' WITH (FORMAT csv, HEADER);
\set f :misc/1.csv
COPY (SELECT 1 AS id, '2024-01-01 00:00:00+00'::timestamptz AS ts, 'reader' AS k)
  TO :'f' WITH (FORMAT csv, HEADER);
SET ROLE regress_sluice_hostile;
-- without pg_read_server_files, nothing gets far
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'append', 'id int, v text'),
                              '{"type": "append", "relid": 1}');
RESET ROLE;
SET ROLE regress_sluice_reader;
-- the victim's tables, by oid (she may not even look them up by name)
SELECT 'hostile_victim.t'::regclass;
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
                              jsonb_build_object('type', 'append', 'relid', :victim_t_oid));
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
                              jsonb_build_object('type', 'merge', 'relid', :victim_m_oid, 'key', '["id"]'::jsonb,
                                                 'on_match', 'update'));
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
                              jsonb_build_object('type', 'window', 'relid', :victim_w_oid, 'size', '10 minutes',
                                                 'group_by', '["k"]'::jsonb,
                                                 'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb,
                                                 'output_mode', 'update'),
                              event_time => 'ts');
-- late rows into the victim's window state table
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
                              jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                                                 'group_by', '["k"]'::jsonb,
                                                 'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb,
                                                 'output_mode', 'update', 'late_relid', :victim_state_oid),
                              event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int'),
                              jsonb_build_object('type', 'function', 'fnoid',
                                                 'hostile_victim.f_sink(bigint, regclass)'::regprocedure::oid));
RESET ROLE;
SELECT 'hostile_victim.f_sink(bigint, regclass)'::regprocedure::oid AS victim_fn_oid \gset
SET ROLE regress_sluice_reader;
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int'),
                              jsonb_build_object('type', 'function', 'fnoid', :victim_fn_oid));
-- SQL in the column types and names, directory and options of a hand-written
-- source (a real description, with one part replaced)
SELECT sluice.csv_source(:'reader', 'id int') AS src \gset
SELECT sluice.create_pipeline('h1',
    :'src'::jsonb || '{"columns": [{"name": "id", "type": "int); DROP TABLE hostile_victim.t; --"}]}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1',
    :'src'::jsonb || '{"columns": [{"name": "id", "type": "int"}, {"name": "v", "type": "text DEFAULT hostile_victim.f_sink(1, 0)"}]}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1',
    :'src'::jsonb || '{"columns": [{"name": "id", "type": "int"}, {"name": "v", "type": "text) WITH (autovacuum_enabled = false"}]}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1',
    :'src'::jsonb || '{"columns": [{"name": "id int); DROP TABLE hostile_victim.t; --", "type": "int"}]}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"columns": "id int, v text"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"type": "program", "command": "true"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1',
    :'src'::jsonb || '{"dir": "/nonexistent''; DROP TABLE hostile_victim.t; --"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"dir": "relative/reader"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"delimiter": "'', FORMAT binary, PROGRAM ''true"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"encoding": "UTF8'', PROGRAM ''true"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"null": "x'', PROGRAM ''true"}',
    sluice.append_sink('hostile_reader.t'));
-- deleting or archiving files takes pg_write_server_files, which she has not
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"after": "delete"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1',
    :'src'::jsonb || jsonb_build_object('after', 'archive', 'archive_dir', :'append'),
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"max_files_per_trigger": "1; DROP TABLE hostile_victim.t"}',
    sluice.append_sink('hostile_reader.t'));
SELECT sluice.create_pipeline('h1', :'src'::jsonb || '{"settle_ms": "0 * interval ''1 ms''); DROP TABLE hostile_victim.t; --"}',
    sluice.append_sink('hostile_reader.t'));
-- SQL in the sink: a merge key, window sizes, aggregates, groups, the event time, the trigger
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
    jsonb_build_object('type', 'merge', 'relid', 'hostile_reader.t'::regclass::oid, 'on_match', 'update',
                       'key', '["id) DO NOTHING; DROP TABLE hostile_victim.m; --"]'::jsonb));
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
    jsonb_build_object('type', 'merge', 'relid', 'hostile_reader.t'::regclass::oid, 'key', '["id"]'::jsonb,
                       'on_match', 'update; DROP TABLE hostile_victim.m'));
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid,
                       'size', '10 minutes''::interval); DROP TABLE hostile_victim.w; --',
                       'group_by', '["k"]'::jsonb, 'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
-- (what the worker pastes, size_s and slide_s, is computed again from the size)
SELECT sluice.create_pipeline('h_size', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                       'size_s', '600) FROM hostile_victim.w; --', 'slide_s', '1; DROP TABLE hostile_victim.w',
                       'group_by', '["k"]'::jsonb, 'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
SELECT sink->'size_s' AS size_s, sink->'slide_s' AS slide_s, state_table FROM sluice.pipeline WHERE name = 'h_size';
SELECT sluice.drop_pipeline('h_size');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                       'group_by', '["k"]'::jsonb,
                       'aggregates', '[{"fn": "count(*)) AS n FROM hostile_victim.w; --", "arg": null, "alias": "n"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                       'group_by', '["k"]'::jsonb,
                       'aggregates', '[{"fn": "pg_sleep", "arg": "id", "alias": "n"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                       'group_by', '["k"]'::jsonb,
                       'aggregates', '[{"fn": "count", "arg": null, "alias": "n\" FROM hostile_victim.w; --"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                       'group_by', '["k"]'::jsonb,
                       'aggregates', '[{"fn": "count", "arg": "id) FROM hostile_victim.w; --", "alias": "n"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    jsonb_build_object('type', 'window', 'relid', 'hostile_reader.w'::regclass::oid, 'size', '10 minutes',
                       'group_by', '["k\", (SELECT count(*) FROM hostile_victim.w) AS \"x"]'::jsonb,
                       'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb,
                       'output_mode', 'update'), event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    sluice.window_sink('hostile_reader.w', '10 minutes', group_by => '{k}', output_mode => 'update',
                       aggregates => ARRAY['count(*) AS n; DROP TABLE hostile_victim.w']),
    event_time => 'ts');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, ts timestamptz, k varchar'),
    sluice.window_sink('hostile_reader.w', '10 minutes', group_by => '{k}', output_mode => 'update',
                       aggregates => '{count(*) AS n}'),
    event_time => 'ts)::timestamptz FROM hostile_victim.w; --');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
    sluice.append_sink('hostile_reader.t'), trigger => '1 second''; DROP TABLE hostile_victim.t; --');
-- transforms: one SELECT, checked as the caller
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
    sluice.append_sink('hostile_reader.t'), transform => 'SELECT * FROM batch; DROP TABLE hostile_victim.t');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
    sluice.append_sink('hostile_reader.t'),
    transform => 'WITH d AS (DELETE FROM hostile_victim.t RETURNING *) SELECT id, v FROM d');
SELECT sluice.create_pipeline('h1', sluice.csv_source(:'reader', 'id int, v text'),
    sluice.append_sink('hostile_reader.t'), transform => 'SELECT id, v FROM hostile_victim.t');
-- extra keys claiming another owner, a running state, another target: all dropped
SELECT sluice.create_pipeline('h_keys',
    sluice.csv_source(:'reader', 'id int, v text')
        || '{"owner": "regress_sluice_victim", "state": "running", "id": 1}',
    jsonb_build_object('type', 'append', 'relid', 'hostile_reader.t'::regclass::oid,
                       'target', 'hostile_victim.t; DROP TABLE hostile_victim.t', 'owner', 'regress_sluice_victim',
                       'state', 'running', 'function', 'hostile_victim.f_sink(bigint, regclass)',
                       'fnoid', :victim_fn_oid, 'late_relid', :victim_state_oid));
-- SQL in the pipeline's name is only a name
SELECT sluice.create_pipeline('x''); DROP TABLE hostile_victim.t; --',
    sluice.csv_source(:'reader', 'id int, v text'), sluice.append_sink('hostile_reader.t'));
-- and names the window state table, quoted
SELECT sluice.create_pipeline('w"); DROP TABLE hostile_victim.w; --',
    sluice.csv_source(:'misc', 'id int, ts timestamptz, k varchar'),
    sluice.window_sink('hostile_reader.w', '10 minutes', group_by => '{k}', aggregates => '{count(*) AS n}',
                       output_mode => 'update'),
    event_time => 'ts');
SELECT name, owner, state, sink->>'type' AS sink, source ? 'owner' AS source_owner, source ? 'state' AS source_state,
       target, late_rows, sink_function, state_table
  FROM sluice.pipeline ORDER BY id;
SELECT sluice.run_once('h_keys'), sluice.run_once('x''); DROP TABLE hostile_victim.t; --'),
       sluice.run_once('w"); DROP TABLE hostile_victim.w; --');
SELECT count(*) FROM hostile_reader.t;
SELECT k, n FROM hostile_reader.w;
-- a pipeline of her own over the victim's directory: pg_read_server_files
-- reads any file, but the victim's offsets are the victim's
SELECT sluice.create_pipeline('h_victim_dir', sluice.csv_source(:'append', 'id int, v text'),
                              sluice.append_sink('hostile_reader.t'));
SELECT sluice.run_once('h_victim_dir');
SELECT count(*) FROM hostile_reader.t;
SELECT sluice.drop_pipeline('h_keys'), sluice.drop_pipeline('x''); DROP TABLE hostile_victim.t; --'),
       sluice.drop_pipeline('w"); DROP TABLE hostile_victim.w; --'), sluice.drop_pipeline('h_victim_dir');
SELECT count(*) AS reader_tables FROM pg_class WHERE relnamespace = 'hostile_reader'::regnamespace AND relkind = 'r';
RESET ROLE;
SELECT * FROM victim_changes();
SELECT count(*) AS reader_pipelines FROM sluice.pipeline WHERE owner = 'regress_sluice_reader'::regrole;
SELECT victim_files(2, :'dir');
\! mv "$SLUICE_TEST_DIR"/hostile/stage/*.csv "$SLUICE_TEST_DIR"/hostile/run/
SET ROLE regress_sluice_victim;
SELECT sluice.run_once('victim_append');
RESET ROLE;
SELECT victim_works(2);

--
-- 4. The extension's internal functions, called directly
--
SET ROLE regress_sluice_hostile;
-- the C functions that change the catalog look the pipeline up as the caller
SELECT sluice._set_state('victim_append', 'running');
SELECT sluice._set_state('victim_append', 'stopped');
SELECT sluice._set_state('victim_run', NULL);
SELECT sluice._set_state('victim_append', 'failed');
SELECT sluice.start('victim_append');
SELECT sluice.stop('victim_run');
SELECT sluice.drop_pipeline('victim_run');
SELECT sluice.run_once('victim_append');
SELECT * FROM sluice.progress('victim_append');
-- _pipeline_row() only checks and returns, as the caller
SELECT * FROM sluice._pipeline_row('h2', sluice.csv_source(:'append', 'id int, v text'),
                                   jsonb_build_object('type', 'append', 'relid', :victim_t_oid),
                                   '1 second', NULL, NULL, NULL);
-- the directory functions take pg_read_server_files
SELECT * FROM sluice._list_files(:'append', '*');
SELECT sluice._check_directory(:'append');
-- a batch's files, by the victim's ids: only for a pipeline the caller sees
SELECT sluice._batch_offsets(:victim_append_id, 1) AS offsets, sluice._batch_offsets(:victim_run_id, 1) AS run_offsets;
-- a forged catalog row: only her own description comes back
SELECT sluice._sink(jsonb_populate_record(NULL::sluice.pipeline,
           jsonb_build_object('id', :victim_append_id, 'name', 'victim_append', 'owner', 'regress_sluice_victim',
                              'sink', '{"type": "append"}'::jsonb, 'target', :victim_t_oid, 'state', 'running')))
       - 'relid' AS sink;
-- the window functions run as the caller: her privileges, not the victim's
SELECT sluice._window_create_state(:victim_append_id, 'victim_win',
    jsonb_build_object('relid', :victim_w_oid, 'group_by', '["k"]'::jsonb,
                       'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb),
    '[{"name": "k", "type": "varchar"}]');
-- a window batch's partials exist only in the worker that folds them
SELECT * FROM sluice._window_partials('all')
    AS p(window_start timestamptz, window_end timestamptz, k varchar, a1_n bigint);
RESET ROLE;
-- in her own schema, her SQL in a type runs as her: the victim's table stays
SET ROLE regress_sluice_hostile;
CREATE TABLE hostile_own.w (window_start timestamptz, window_end timestamptz, k int, n bigint);
SELECT sluice._window_create_state(:victim_append_id, 'victim_win',
    jsonb_build_object('relid', 'hostile_own.w'::regclass::oid, 'group_by', '["k"]'::jsonb,
                       'aggregates', '[{"fn": "count", "arg": null, "alias": "n"}]'::jsonb),
    '[{"name": "k", "type": "int, x int); DROP TABLE hostile_victim.w; CREATE TABLE hostile_own.x (k int"}]');
-- the staging table, in her own session: types are parsed, not pasted
SELECT sluice._create_stage('{"columns": [{"name": "a", "type": "int); DROP TABLE hostile_victim.t; --"}]}');
BEGIN;
SELECT sluice._create_stage('{"columns": [{"name": "a); DROP TABLE hostile_victim.t; --", "type": "int"}]}') AS stage;
SELECT attname, atttypid::regtype FROM pg_attribute WHERE attrelid = 'pg_temp.batch'::regclass AND attnum > 0;
COMMIT;
SELECT sluice._sink(p) - 'relid' AS sink FROM sluice.pipeline p;
-- the launcher wakes up, finds nothing new to do
SELECT sluice._wake();
RESET ROLE;
-- (a warm run_once() worker, idle, runs nothing: sluice._workers() leaves it out)
SELECT wait_until($$(SELECT count(*) = 0 FROM sluice._workers() AS w JOIN sluice.pipeline AS p ON p.id = w.pipeline_id
                      WHERE p.name <> 'victim_run')$$);
SELECT * FROM victim_changes();
SELECT to_regclass('hostile_own.x') AS hostile_x, to_regclass('hostile_victim.w') AS victim_w;
DROP TABLE hostile_own.w;
SELECT victim_files(3, :'dir');
\! mv "$SLUICE_TEST_DIR"/hostile/stage/*.csv "$SLUICE_TEST_DIR"/hostile/run/
SET ROLE regress_sluice_victim;
SELECT sluice.run_once('victim_append');
RESET ROLE;
SELECT victim_works(3);

--
-- 5. Objects planted in a writable public schema, shadowing what the
--    extension's SQL calls without a schema; each records whoever calls it.
--    The victim's search_path has public; her pipelines must never call them.
--
GRANT CREATE ON SCHEMA public TO PUBLIC;
SET ROLE regress_sluice_hostile;
CREATE TABLE public.hostile_log (who name, what text);
GRANT INSERT ON public.hostile_log TO PUBLIC;
-- a sequence counts calls whose transaction rolls back
CREATE SEQUENCE public.hostile_calls;
GRANT USAGE, SELECT ON public.hostile_calls TO PUBLIC;
CREATE FUNCTION public.hostile_mark(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.nextval('public.hostile_calls');
    INSERT INTO public.hostile_log VALUES (current_user, what);
    RETURN true;
END
$$;
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('format(text, text)'); RETURN pg_catalog.format($1, $2); END $$;
CREATE FUNCTION public.format(text, text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('format(text, text, text)'); RETURN pg_catalog.format($1, $2, $3); END $$;
CREATE FUNCTION public.quote_ident(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('quote_ident(text)'); RETURN pg_catalog.quote_ident($1); END $$;
CREATE FUNCTION public.quote_ident(varchar) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('quote_ident(varchar)'); RETURN pg_catalog.quote_ident($1); END $$;
CREATE FUNCTION public.jsonb_build_object(text, text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('jsonb_build_object(text, text)'); RETURN pg_catalog.jsonb_build_object($1, $2); END $$;
CREATE FUNCTION public.jsonb_build_object(text, text, text, text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('jsonb_build_object(text, text, text, text)');
      RETURN pg_catalog.jsonb_build_object($1, $2, $3, $4); END $$;
CREATE FUNCTION public.array_to_string(text[], text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('array_to_string'); RETURN pg_catalog.array_to_string($1, $2); END $$;
CREATE FUNCTION public.lower(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('lower'); RETURN pg_catalog.lower($1); END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.pg_notify(text, text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('pg_notify'); END $$;
CREATE FUNCTION public.to_timestamp(double precision) RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('to_timestamp'); RETURN pg_catalog.to_timestamp($1); END $$;
CREATE FUNCTION public.to_regprocedure(text) RETURNS regprocedure LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('to_regprocedure'); RETURN pg_catalog.to_regprocedure($1); END $$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.jsonb_array_elements_text(jsonb) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('jsonb_array_elements_text'); RETURN QUERY SELECT pg_catalog.jsonb_array_elements_text($1); END $$;
-- operators: same types as pg_catalog's, and the better matches varchar = varchar and tid = tid[]
CREATE FUNCTION public.h_int_eq(int, int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('int = int'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = int, FUNCTION = public.h_int_eq);
CREATE FUNCTION public.h_text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('text = text'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.h_text_eq);
CREATE FUNCTION public.h_varchar_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('varchar = varchar'); RETURN $1::text OPERATOR(pg_catalog.=) $2::text; END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.h_varchar_eq);
CREATE FUNCTION public.h_jsonb_get(jsonb, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('jsonb ->> text'); RETURN $1 OPERATOR(pg_catalog.->>) $2; END $$;
CREATE OPERATOR public.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = public.h_jsonb_get);
CREATE FUNCTION public.h_regclass_eq(oid, regclass) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM public.hostile_mark('oid = regclass'); RETURN $1 OPERATOR(pg_catalog.=) $2::oid; END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = public.h_regclass_eq);
-- relations named like the staging tables, whose row security calls her
CREATE TABLE public.batch (id int, v text, n numeric, ts timestamptz, k varchar, x int);
CREATE TABLE public.batch_out (id int, v text);
INSERT INTO public.batch VALUES (666, 'planted', 666, now(), 'planted', 666);
INSERT INTO public.batch_out VALUES (666, 'planted');
ALTER TABLE public.batch ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE public.batch_out ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY h ON public.batch USING (public.hostile_mark('batch'));
CREATE POLICY h ON public.batch_out USING (public.hostile_mark('batch_out'));
GRANT SELECT ON public.batch, public.batch_out TO PUBLIC;
-- they work: a query that resolves them calls them
SET search_path = public, pg_catalog;
SELECT quote_ident('x'), 1 = 1 AS int_eq, count(*) AS planted_batch FROM batch;
RESET search_path;
SELECT who, what FROM public.hostile_log ORDER BY what;
TRUNCATE public.hostile_log;
SELECT setval('public.hostile_calls', 1, false);
RESET ROLE;

-- the victim, with public in her search_path, runs every kind of pipeline
-- (the merge updates rows, so its comparisons run), looks at them, and
-- creates, starts, stops and drops one
\set f :append/2.csv
COPY (SELECT g AS id, 'a' || g AS v FROM generate_series(11, 12) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :tx/2.csv
COPY (SELECT g AS id, 'x' || g AS v FROM generate_series(11, 12) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :merge/2.csv
COPY (SELECT g AS id, 'changed' || g AS v, g * 2 AS n FROM generate_series(2, 5) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :win/2.csv
COPY (SELECT g AS id, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' AS ts,
             CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END AS k, g AS x
        FROM generate_series(5, 14) g) TO :'f' WITH (FORMAT csv, HEADER);
\set f :fn/2.csv
COPY (SELECT g AS id FROM generate_series(1, 2) g) TO :'f' WITH (FORMAT csv, HEADER);
\c - regress_sluice_victim
\set SHOW_CONTEXT never
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
SHOW search_path;
SELECT sluice.run_once('victim_append'), sluice.run_once('victim_tx'), sluice.run_once('victim_merge'),
       sluice.run_once('victim_win'), sluice.run_once('victim_fn');
SELECT name, state, batches, input_rows, last_error FROM sluice.pipelines ORDER BY name;
SELECT batch_id, status, input_rows FROM sluice.progress('victim_merge');
SELECT * FROM hostile_victim.m ORDER BY id;
SELECT window_start, window_end, k, n, total FROM hostile_victim.w ORDER BY 1, 3;
SELECT * FROM hostile_victim.f_log ORDER BY 1;
SELECT count(*) AS planted_rows FROM hostile_victim.t WHERE id = 666;
SELECT sluice.create_pipeline('victim_new', sluice.csv_source(:'append', 'id int, v text',
                                                                pattern => 'nothing-*.csv'),
                              sluice.merge_sink('hostile_victim.m', '{id}'), 'available_now');
SELECT sluice.start('victim_new');
SELECT sluice.stop('victim_new');
SELECT sluice.drop_pipeline('victim_new');
\c - :superuser
\set SHOW_CONTEXT never
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
\set f :stage/planted.csv
COPY (SELECT 60 AS id, 'planted' AS v) TO :'f' WITH (FORMAT csv, HEADER);
\! mv "$SLUICE_TEST_DIR"/hostile/stage/planted.csv "$SLUICE_TEST_DIR"/hostile/run/
SELECT wait_until($$(SELECT count(*) = 1 FROM hostile_victim.r WHERE id = 60)$$);
-- none of the planted objects ever ran
SELECT who, what FROM public.hostile_log ORDER BY 1, 2;
SELECT last_value, is_called FROM public.hostile_calls;
SELECT count(*) AS victim_errors FROM sluice.error e JOIN sluice.pipeline p ON p.id = e.pipeline_id
 WHERE p.owner = 'regress_sluice_victim'::regrole;
SELECT victim_files(4, :'dir');
\! mv "$SLUICE_TEST_DIR"/hostile/stage/*.csv "$SLUICE_TEST_DIR"/hostile/run/
SET ROLE regress_sluice_victim;
SELECT sluice.run_once('victim_append');
RESET ROLE;
SELECT victim_works(4);
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DROP OWNED BY regress_sluice_hostile;
SELECT count(*) AS hostile_objects FROM pg_class WHERE relowner = 'regress_sluice_hostile'::regrole;

--
-- 6. A schema named sluice made first by someone else, with her table and
--    function in it: CREATE EXTENSION refuses it and adopts nothing
--
CREATE DATABASE regress_sluice_squat;
\c regress_sluice_squat
\set SHOW_CONTEXT never
CREATE ROLE regress_sluice_squatter LOGIN;
GRANT CREATE ON DATABASE regress_sluice_squat TO regress_sluice_squatter;
GRANT CREATE ON SCHEMA public TO regress_sluice_squatter;
SET ROLE regress_sluice_squatter;
CREATE SCHEMA sluice;
CREATE TABLE sluice.pipeline (id int, name text, owner regrole, state text);
INSERT INTO sluice.pipeline VALUES (1, 'squat', 'regress_sluice_squatter', 'running');
CREATE FUNCTION sluice.create_pipeline(name text, source jsonb, sink jsonb) RETURNS void
    LANGUAGE sql AS 'SELECT';
CREATE FUNCTION sluice._set_state(text, text) RETURNS void LANGUAGE sql AS 'SELECT';
-- and, for the install script, public functions it might call unqualified
CREATE TABLE public.squat_log (what text);
GRANT INSERT ON public.squat_log TO PUBLIC;
CREATE FUNCTION public.jsonb_build_object(text, text, text, text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.squat_log VALUES ('jsonb_build_object'); RETURN pg_catalog.jsonb_build_object($1, $2, $3, $4); END $$;
CREATE FUNCTION public.pg_extension_config_dump(regclass, text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.squat_log VALUES ('pg_extension_config_dump'); END $$;
CREATE FUNCTION public.squat_eq(name, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.squat_log VALUES ('name = text'); RETURN $1::text OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = text, FUNCTION = public.squat_eq);
RESET ROLE;
CREATE EXTENSION sluice;
CREATE EXTENSION sluice SCHEMA public;
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'sluice';
-- her objects are still hers, unchanged, and no extension's members
SELECT n.nspname, n.nspowner::regrole FROM pg_namespace n WHERE n.nspname = 'sluice';
SELECT c.relname, c.relowner::regrole FROM pg_class c WHERE c.relnamespace = 'sluice'::regnamespace ORDER BY 1;
SELECT p.oid::regprocedure, p.proowner::regrole FROM pg_proc p WHERE p.pronamespace = 'sluice'::regnamespace ORDER BY 1;
SELECT * FROM sluice.pipeline;
SELECT count(*) AS squatter_members
  FROM pg_depend d
 WHERE d.deptype = 'e' AND (d.classid, d.objid) IN (
       SELECT 'pg_class'::regclass, oid FROM pg_class WHERE relowner = 'regress_sluice_squatter'::regrole
       UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE proowner = 'regress_sluice_squatter'::regrole
       UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator WHERE oprowner = 'regress_sluice_squatter'::regrole
       UNION ALL SELECT 'pg_namespace'::regclass, oid FROM pg_namespace WHERE nspowner = 'regress_sluice_squatter'::regrole);
-- with her schema gone the extension installs, without a trace of hers and without calling her functions
DROP SCHEMA sluice CASCADE;
CREATE EXTENSION sluice;
SELECT n.nspowner::regrole FROM pg_namespace n WHERE n.nspname = 'sluice';
SELECT count(*) AS squatter_objects
  FROM (SELECT relowner AS owner FROM pg_class WHERE relnamespace = 'sluice'::regnamespace
        UNION ALL SELECT proowner FROM pg_proc WHERE pronamespace = 'sluice'::regnamespace) o
 WHERE owner = 'regress_sluice_squatter'::regrole;
SELECT count(*) AS squatter_members
  FROM pg_depend d
 WHERE d.deptype = 'e' AND (d.classid, d.objid) IN (
       SELECT 'pg_class'::regclass, oid FROM pg_class WHERE relowner = 'regress_sluice_squatter'::regrole
       UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE proowner = 'regress_sluice_squatter'::regrole
       UNION ALL SELECT 'pg_operator'::regclass, oid FROM pg_operator WHERE oprowner = 'regress_sluice_squatter'::regrole
       UNION ALL SELECT 'pg_namespace'::regclass, oid FROM pg_namespace WHERE nspowner = 'regress_sluice_squatter'::regrole);
SELECT * FROM public.squat_log;
DROP EXTENSION sluice;
\c contrib_regression
\set SHOW_CONTEXT never
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
DROP DATABASE regress_sluice_squat;
DROP ROLE regress_sluice_squatter;

--
-- the victim's pipelines after all that: unchanged, and they still work
--
SELECT * FROM victim_changes();
SELECT victim_files(5, :'dir');
\! mv "$SLUICE_TEST_DIR"/hostile/stage/*.csv "$SLUICE_TEST_DIR"/hostile/run/
SET ROLE regress_sluice_victim;
SELECT sluice.run_once('victim_append');
RESET ROLE;
SELECT victim_works(5);
SET ROLE regress_sluice_victim;
SELECT sluice.stop('victim_run');
RESET ROLE;
SELECT wait_until($$(SELECT worker_pid IS NULL FROM sluice.pipelines WHERE name = 'victim_run')$$);
SELECT name, state, batches, input_rows, last_error FROM sluice.pipelines ORDER BY name;
SET ROLE regress_sluice_victim;
SELECT sluice.drop_pipeline(name) FROM sluice.pipeline ORDER BY name;
RESET ROLE;
SELECT count(*) AS pipelines FROM sluice.pipeline;
DROP TABLE victim_snapshot;
DROP SCHEMA hostile_reader CASCADE;
DROP FUNCTION victim_changes(), victim_state(), victim_files(int, text), victim_works(int), attempt(text), conninfo(text),
              wait_until(text);
DROP SCHEMA hostile_victim CASCADE;
ALTER ROLE regress_sluice_victim RESET search_path;
DROP ROLE regress_sluice_victim, regress_sluice_hostile, regress_sluice_reader;
DROP EXTENSION dblink;
\! rm -rf "$SLUICE_TEST_DIR"/hostile

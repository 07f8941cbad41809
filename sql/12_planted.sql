--
-- 12_planted: what a hostile login plants in a writable public schema never
-- runs in a victim's pipeline: not an operator that would match a merge
-- key better than pg_catalog's, not a function create_pipeline() would
-- call, not a table named "batch", not an overload of a function sink.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/planted
\! rm -rf "$SLUICE_TEST_DIR"/planted && mkdir -p "$SLUICE_TEST_DIR"/planted/m "$SLUICE_TEST_DIR"/planted/t "$SLUICE_TEST_DIR"/planted/f
\set dm :dir/m
\set dt :dir/t
\set df :dir/f
\set f :dm/1.csv
COPY (VALUES ('a', 'x'), ('b', 'y')) TO :'f' WITH (FORMAT csv);
\set f :dt/1.csv
COPY (VALUES (1, 'real row')) TO :'f' WITH (FORMAT csv);
\set f :df/1.csv
COPY (VALUES (1, 'one')) TO :'f' WITH (FORMAT csv);

CREATE ROLE regress_sluice_planter LOGIN;
CREATE ROLE regress_sluice_mark LOGIN;
GRANT pg_read_server_files TO regress_sluice_mark;
GRANT CREATE ON SCHEMA public TO PUBLIC;    -- as before PostgreSQL 15
ALTER ROLE regress_sluice_mark SET search_path = "$user", public, pg_temp;
CREATE SCHEMA regress_mark AUTHORIZATION regress_sluice_mark;

-- the planter's traps: each records who ran it
SET ROLE regress_sluice_planter;
CREATE TABLE public.sprung (who name, what text);
GRANT INSERT, SELECT ON public.sprung TO PUBLIC;
CREATE FUNCTION public.trap_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.sprung VALUES (current_user, 'varchar ='); RETURN $1::text = $2::text; END $$;
CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.trap_eq);
CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.sprung VALUES (current_user, 'format'); RETURN pg_catalog.format($1, $2); END $$;
CREATE TABLE public.batch (id int, v text);
INSERT INTO public.batch VALUES (666, 'forged');
GRANT SELECT ON public.batch TO PUBLIC;
RESET ROLE;

SET ROLE regress_sluice_mark;
SET search_path = "$user", public, pg_temp;
-- a merge on a varchar key
CREATE TABLE regress_mark.m (k varchar PRIMARY KEY, v varchar);
SELECT sluice.create_pipeline('mark_merge', sluice.csv_source(:'dm', 'k varchar, v varchar', header => false),
                              sluice.merge_sink('regress_mark.m', '{k}'));
SELECT sluice.run_once('mark_merge');
-- a transform over "batch"
CREATE TABLE regress_mark.t (id int, v text);
SELECT sluice.create_pipeline('mark_tx', sluice.csv_source(:'dt', 'id int, v text', header => false),
                              sluice.append_sink('regress_mark.t'),
                              transform => 'SELECT id, upper(v) AS v FROM batch');
SELECT sluice.run_once('mark_tx');
SELECT * FROM regress_mark.t;
-- a function sink in a schema the planter may write to
CREATE TABLE regress_mark.seen (batch_id bigint, n bigint);
CREATE FUNCTION public.mark_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN EXECUTE format('INSERT INTO regress_mark.seen SELECT %s, count(*) FROM %s', batch_id, batch); END $$;
SELECT sluice.create_pipeline('mark_fn', sluice.csv_source(:'df', 'id int, v text', header => false),
                              sluice.function_sink('public.mark_sink(bigint, regclass)'));
RESET ROLE;
SET ROLE regress_sluice_planter;
CREATE FUNCTION public.mark_sink(bigint, regclass, VARIADIC x int[] DEFAULT '{}') RETURNS void LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.sprung VALUES (current_user, 'overload'); END $$;
RESET ROLE;
SET ROLE regress_sluice_mark;
SELECT sluice.run_once('mark_fn');
SELECT * FROM regress_mark.seen;
-- the merge again, with a changed row
RESET ROLE;
\set f :dm/2.csv
COPY (VALUES ('a', 'changed'), ('c', 'z')) TO :'f' WITH (FORMAT csv);
SET ROLE regress_sluice_mark;
SELECT sluice.run_once('mark_merge');
SELECT * FROM regress_mark.m ORDER BY k;
RESET ROLE;

-- no trap ran in sluice's statements: the one call of the planted format()
-- is mark_sink's own (its EXECUTE format(...) resolves through her path)
SELECT who, what, count(*) FROM public.sprung GROUP BY who, what ORDER BY 1, 2;

-- commands that would lock the catalog before checking who owns it are
-- refused before they lock: queued behind any reader's lock, they would
-- stall every pipeline
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
\i test/regress/conninfo.sql
SELECT dblink_connect('reader', conninfo('regress_sluice_planter'));
SELECT dblink_exec('reader', 'BEGIN');
SELECT dblink_exec('reader', 'LOCK TABLE sluice.pipeline, sluice.batch IN ACCESS SHARE MODE');
SET ROLE regress_sluice_planter;
SET lock_timeout = '3s';
CREATE RULE stall AS ON UPDATE TO sluice.pipeline DO INSTEAD NOTHING;
CREATE TRIGGER stall BEFORE INSERT ON sluice.batch FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
COMMENT ON TABLE sluice.pipeline IS 'stall';
CREATE TABLE public.stall () INHERITS (sluice.pipeline);
RESET lock_timeout;
RESET ROLE;
SELECT dblink_exec('reader', 'COMMIT');
SELECT dblink_disconnect('reader');
DROP FUNCTION conninfo(text);

SET client_min_messages = warning;
SELECT sluice.drop_pipeline(name) FROM unnest('{mark_merge,mark_tx,mark_fn}'::text[]) AS name;
DROP SCHEMA regress_mark CASCADE;
DROP OWNED BY regress_sluice_planter, regress_sluice_mark;
RESET client_min_messages;
DROP ROLE regress_sluice_planter, regress_sluice_mark;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
\! rm -rf "$SLUICE_TEST_DIR"/planted

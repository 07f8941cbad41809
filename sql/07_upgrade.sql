--
-- 07_upgrade: ALTER EXTENSION sluice UPDATE from 0.1 gives exactly what
-- CREATE EXTENSION sluice gives, and CREATE EXTENSION never adopts a schema
-- it did not create.  (Pipelines going on through an upgrade: the TAP test
-- test/t/012_upgrade.pl.)
--
-- DROP ROLE in another database than the pipelines' asks the launcher, which
-- must have looked at the catalog once
\i test/regress/wait_until.sql
SELECT wait_until($$EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'sluice launcher' AND state = 'idle')$$);
DROP FUNCTION wait_until(text);
CREATE DATABASE regress_sluice_upgrade;
\c regress_sluice_upgrade
SET client_min_messages = warning;
SET check_function_bodies = false;   -- shape() reads a schema that comes and goes

-- what the extension consists of, described by name, never by oid
CREATE FUNCTION shape() RETURNS TABLE (kind text, name text, def text) LANGUAGE sql AS $$
    SELECT 'function', p.oid::regprocedure::text,
           pg_get_functiondef(p.oid) || coalesce(array_to_string(p.proacl, ','), '')
           || coalesce(obj_description(p.oid, 'pg_proc'), '')
      FROM pg_proc p WHERE p.pronamespace = 'sluice'::regnamespace
    UNION ALL
    SELECT 'view', c.oid::regclass::text, pg_get_viewdef(c.oid) || array_to_string(c.reloptions, ',')
           || coalesce(array_to_string(c.relacl, ','), '') || coalesce(obj_description(c.oid, 'pg_class'), '')
      FROM pg_class c WHERE c.relnamespace = 'sluice'::regnamespace AND c.relkind = 'v'
    UNION ALL
    SELECT 'relation', c.oid::regclass::text, c.relkind::text || c.relrowsecurity::text
           || array_to_string(coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner)), ',')
      FROM pg_class c WHERE c.relnamespace = 'sluice'::regnamespace AND c.relkind IN ('r', 'S', 'i')
    UNION ALL
    SELECT 'column', a.attrelid::regclass::text || '.' || a.attname,
           format_type(a.atttypid, a.atttypmod) || a.attnotnull::text || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE c.relnamespace = 'sluice'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
      FROM pg_constraint WHERE connamespace = 'sluice'::regnamespace
    UNION ALL
    SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
      FROM pg_index WHERE indrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'sluice'::regnamespace)
    UNION ALL
    SELECT 'policy', tablename || '.' || policyname, cmd || ' ' || coalesce(qual, '') || array_to_string(roles, ',')
      FROM pg_policies WHERE schemaname = 'sluice'
    UNION ALL
    SELECT 'dumped', c::regclass::text, ''
      FROM pg_extension e, unnest(e.extconfig) AS c WHERE e.extname = 'sluice'
    UNION ALL
    SELECT 'event trigger', evtname, evtevent || evtfoid::regprocedure::text || evtenabled::text
      FROM pg_event_trigger WHERE evtname LIKE 'sluice%'
    UNION ALL
    SELECT 'extension', e.extname, e.extnamespace::regnamespace::text || e.extrelocatable::text
           || (SELECT string_agg(pg_describe_object(d.classid, d.objid, d.objsubid), ',')
                 FROM pg_depend d
                WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
                  AND d.classid = 'pg_namespace'::regclass)
      FROM pg_extension e WHERE e.extname = 'sluice'
$$;

CREATE EXTENSION sluice VERSION '0.1';
SELECT extversion, extnamespace::regnamespace FROM pg_extension WHERE extname = 'sluice';
-- this library is the current version's: pipelines wait for the update
\set SHOW_CONTEXT never
SELECT sluice.run_once('any');
ALTER EXTENSION sluice UPDATE;  -- 0.1 -> 0.2 -> 0.3 -> 0.4
SELECT extversion FROM pg_extension WHERE extname = 'sluice';
CREATE TABLE upgraded AS SELECT * FROM shape();

-- 0.1 made the schema outside the extension; the update takes it in, and
-- the extension to pg_catalog, as a fresh install has them, so that pg_dump
-- and DROP EXTENSION treat both alike
DROP EXTENSION sluice;
SELECT count(*) AS sluice_schemas FROM pg_namespace WHERE nspname = 'sluice';
CREATE EXTENSION sluice;
CREATE TABLE installed AS SELECT * FROM shape();

-- nothing differs, and there is something to compare
SELECT 'only after upgrade' AS "where", * FROM (TABLE upgraded EXCEPT TABLE installed) AS u
UNION ALL
SELECT 'only after install', * FROM (TABLE installed EXCEPT TABLE upgraded) AS i
ORDER BY 1, 2, 3;
SELECT kind, count(*) FROM installed GROUP BY kind ORDER BY kind;

-- 0.2 and later make their schema in the script, so DROP EXTENSION takes it
DROP EXTENSION sluice;
SELECT count(*) AS sluice_schemas FROM pg_namespace WHERE nspname = 'sluice';

-- a schema another role made first is never adopted
CREATE ROLE regress_sluice_squatter;
CREATE SCHEMA sluice AUTHORIZATION regress_sluice_squatter;
CREATE EXTENSION sluice;
SELECT count(*) AS extensions FROM pg_extension WHERE extname = 'sluice';
-- 0.1 did adopt it; the update to 0.2 refuses it, and leaves 0.1 as it was
CREATE EXTENSION sluice VERSION '0.1';
ALTER EXTENSION sluice UPDATE TO '0.2';
SELECT e.extversion, n.nspowner::regrole AS schema_owner
  FROM pg_extension e, pg_namespace n WHERE e.extname = 'sluice' AND n.nspname = 'sluice';
-- as the hint says: once the schema is the extension owner's, the update goes through
ALTER SCHEMA sluice OWNER TO CURRENT_USER;
ALTER EXTENSION sluice UPDATE TO '0.2';
SELECT extversion, extnamespace::regnamespace FROM pg_extension WHERE extname = 'sluice';
DROP EXTENSION sluice;
SELECT count(*) AS sluice_schemas FROM pg_namespace WHERE nspname = 'sluice';
DROP ROLE regress_sluice_squatter;

-- 0.3 -> 0.4 makes csv_source() and kafka_source() anew (they take new
-- parameters): what was granted or revoked on them stays, and stays a
-- grant of the user's (not an initial privilege of the extension), so that
-- pg_dump keeps it
CREATE ROLE regress_sluice_streams;
CREATE EXTENSION sluice VERSION '0.3';
GRANT EXECUTE ON FUNCTION sluice.kafka_source TO regress_sluice_streams;
REVOKE EXECUTE ON FUNCTION sluice.csv_source FROM PUBLIC;
ALTER EXTENSION sluice UPDATE TO '0.4';
SELECT p.proname, p.pronargs,
       has_function_privilege('regress_sluice_streams', p.oid, 'EXECUTE') AS granted,
       EXISTS (SELECT 1 FROM aclexplode(p.proacl) AS a WHERE a.grantee = 0) AS public_may,
       (SELECT array_to_string(i.initprivs, ',') ~ 'regress_sluice_streams'
          FROM pg_init_privs i WHERE i.objoid = p.oid AND i.classoid = 'pg_proc'::regclass) AS initial
  FROM pg_proc p WHERE p.pronamespace = 'sluice'::regnamespace AND p.proname IN ('csv_source', 'kafka_source')
 ORDER BY 1;
DROP EXTENSION sluice;
DROP ROLE regress_sluice_streams;

\c contrib_regression
DROP DATABASE regress_sluice_upgrade;

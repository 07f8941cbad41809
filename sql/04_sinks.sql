--
-- 04_sinks: merge_sink (upsert by key, duplicates, replays), function_sink
-- (batch ids, failures, replays) and transforms (checked at creation).
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
-- the PL/pgSQL line numbers of the raising functions are not the point here
\set SHOW_CONTEXT never
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/sinks
\set merge :dir/merge
\set comp :dir/comp
\set nullkey :dir/nullkey
\set fn :dir/fn
\set tx :dir/tx
\set order :dir/order
\set empty :dir/empty
-- for the DO blocks below, whose text psql does not interpolate
SET sluice_test.empty = :'empty';

-- a fingerprint of a table's rows, in no particular order
CREATE FUNCTION sinks_md5(t regclass) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r text;
BEGIN
    EXECUTE format('SELECT md5(coalesce(string_agg(x::text, %L ORDER BY x::text), %L)) FROM %s AS x', '|', '', t)
       INTO r;
    RETURN r;
END
$$;

\! rm -rf "$SLUICE_TEST_DIR"/sinks && mkdir -p "$SLUICE_TEST_DIR"/sinks/merge "$SLUICE_TEST_DIR"/sinks/comp "$SLUICE_TEST_DIR"/sinks/nullkey "$SLUICE_TEST_DIR"/sinks/fn "$SLUICE_TEST_DIR"/sinks/tx "$SLUICE_TEST_DIR"/sinks/order "$SLUICE_TEST_DIR"/sinks/empty

--
-- merge_sink(): the description, and arguments it refuses
--
CREATE TABLE sinks_acct (id int PRIMARY KEY, v text, n int DEFAULT 7, loaded_at timestamptz DEFAULT now());
SELECT sluice.merge_sink('sinks_acct', ARRAY['id']) - 'relid' AS sink,
       (sluice.merge_sink('sinks_acct', ARRAY['id'])->>'relid')::oid = 'sinks_acct'::regclass AS relid_ok;
SELECT sluice.merge_sink('sinks_acct', '{id,v}', on_match => 'ignore') - 'relid' AS sink;
SELECT sluice.merge_sink('sinks_acct', '{}');
SELECT sluice.merge_sink('sinks_acct', '{id,NULL}');
SELECT sluice.merge_sink('sinks_acct', '{id}', 'replace');
SELECT sluice.merge_sink('sinks_acct', NULL);
SELECT sluice.merge_sink('sinks_acct', '{id}', NULL);
SELECT sluice.merge_sink(NULL, '{id}');
SELECT sluice.merge_sink('sinks_no_such_table', '{id}');
-- the key must be among the columns the target receives (names are case-sensitive)
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, v text'),
                              sluice.merge_sink('sinks_acct', '{ID}'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, v text'),
                              sluice.merge_sink('sinks_acct', '{id,n}'));
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, v text'),
                              sluice.merge_sink('sinks_acct', '{id}') - 'key');
SELECT count(*) FROM sluice.pipelines;

--
-- merge: duplicates of a key within a file, across the files of a batch and
-- across batches.  File order is mtime, then name:
--   b.csv (oldest), then a.csv and c.csv (same mtime: a before c), later d.csv
-- v says where a row comes from: file.line
--
\set f :merge/b.csv
COPY (SELECT * FROM (VALUES (1, 'b.1'), (2, 'b.2'), (1, 'b.3')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :merge/a.csv
COPY (SELECT * FROM (VALUES (2, 'a.1'), (3, 'a.2'), (3, 'a.3')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :merge/c.csv
COPY (SELECT * FROM (VALUES (3, 'c.1'), (4, 'c.2')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/sinks/merge/b.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/sinks/merge/a.csv "$SLUICE_TEST_DIR"/sinks/merge/c.csv

-- three targets: one with a primary key (and rows already there, one with a
-- non-default extra column), one without any index, one for on_match 'ignore'
INSERT INTO sinks_acct (id, v, n) VALUES (4, 'pre.4', 99), (9, 'pre.9', 99);
CREATE TABLE sinks_heap (id int, v text, n int DEFAULT 7);
CREATE TABLE sinks_ign (id int PRIMARY KEY, v text);
CREATE UNIQUE INDEX ON sinks_ign (id);  -- two unique indexes on the key: still fine
INSERT INTO sinks_ign VALUES (4, 'pre.4');
SELECT sluice.create_pipeline('m_upd', sluice.csv_source(:'merge', 'id int, v text'),
                              sluice.merge_sink('sinks_acct', '{id}'), 'available_now');
-- without a unique index, and one file per batch
SELECT sluice.create_pipeline('m_heap', sluice.csv_source(:'merge', 'id int, v text',
                                                          max_files_per_trigger => 1),
                              sluice.merge_sink('sinks_heap', '{id}'));
SELECT sluice.create_pipeline('m_ign', sluice.csv_source(:'merge', 'id int, v text'),
                              sluice.merge_sink('sinks_ign', '{id}', 'ignore'));
SELECT sluice.run_once('m_upd'), sluice.run_once('m_heap'), sluice.run_once('m_ign');

-- the last row of each key wins: b.3 (line order), a.1 (a is newer than b),
-- c.1 (c comes after a); the extra columns keep their defaults, or their
-- value for a row that was there; rows not in the files are untouched
SELECT id, v, n, loaded_at IS NOT NULL AS loaded_at_set FROM sinks_acct ORDER BY id;
SELECT batch_id, status, files, input_rows, sink_rows FROM sluice.progress('m_upd');
-- one file per batch: later batches win, to the same result
SELECT id, v, n FROM sinks_heap ORDER BY id;
SELECT batch_id, files, input_rows, sink_rows,
       (SELECT jsonb_agg(regexp_replace(f->>'path', '^.*/', '')) FROM jsonb_array_elements(end_offset->'files') f) AS files
  FROM sluice.progress('m_heap') ORDER BY batch_id;
-- ignore: new keys get the last row of the batch, a row already there stays
SELECT id, v FROM sinks_ign ORDER BY id;
SELECT batch_id, input_rows, sink_rows FROM sluice.progress('m_ign');

-- a newer file: a later batch overrides earlier ones (except for ignore)
\set f :merge/d.csv
COPY (SELECT * FROM (VALUES (1, 'd.1'), (5, 'd.2'), (5, 'd.3')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067203 "$SLUICE_TEST_DIR"/sinks/merge/d.csv
SELECT sluice.run_once('m_upd'), sluice.run_once('m_heap'), sluice.run_once('m_ign');
SELECT id, v, n FROM sinks_acct ORDER BY id;
SELECT batch_id, input_rows, sink_rows FROM sluice.progress('m_upd', 1);
SELECT id, v, n FROM sinks_heap ORDER BY id;
SELECT id, v FROM sinks_ign ORDER BY id;
SELECT batch_id, input_rows, sink_rows FROM sluice.progress('m_ign', 1);
-- the three-way result, unordered: no key twice in the table without an index
SELECT (SELECT count(*) FROM sinks_heap) AS heap_rows, (SELECT count(DISTINCT id) FROM sinks_heap) AS heap_keys,
       ARRAY(SELECT id || ':' || v FROM sinks_heap EXCEPT SELECT id || ':' || v FROM sinks_acct) AS heap_but_not_pk;

-- replaying every file changes nothing: forget what the pipelines read
-- (m_upd, m_ign), or drop and create a pipeline again (m_heap: now one batch)
CREATE TEMP TABLE sinks_before AS
SELECT t, sinks_md5(t) AS md5 FROM unnest('{sinks_acct,sinks_heap,sinks_ign}'::regclass[]) AS t;
DELETE FROM sluice.file WHERE pipeline_id IN (SELECT id FROM sluice.pipeline WHERE name IN ('m_upd', 'm_ign'));
DELETE FROM sluice.batch WHERE pipeline_id IN (SELECT id FROM sluice.pipeline WHERE name IN ('m_upd', 'm_ign'));
UPDATE sluice.pipeline SET committed_batch = 0 WHERE name IN ('m_upd', 'm_ign');
SELECT sluice.drop_pipeline('m_heap');
SELECT sluice.create_pipeline('m_heap', sluice.csv_source(:'merge', 'id int, v text'),
                              sluice.merge_sink('sinks_heap', '{id}'));
SELECT sluice.run_once('m_upd'), sluice.run_once('m_heap'), sluice.run_once('m_ign');
SELECT t, md5 = sinks_md5(t) AS unchanged FROM sinks_before ORDER BY t::text;
SELECT count(*) AS heap_rows FROM sinks_heap;
-- rows that are already as the files say are not written again
SELECT batch_id, files, input_rows, sink_rows FROM sluice.progress('m_upd');
SELECT batch_id, files, input_rows, sink_rows FROM sluice.progress('m_ign');
-- the same rows again, in a new file, change nothing either
\set f :merge/e.csv
COPY (SELECT * FROM (VALUES (1, 'd.1'), (5, 'd.2'), (5, 'd.3')) AS t(id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067204 "$SLUICE_TEST_DIR"/sinks/merge/e.csv
SELECT sluice.run_once('m_upd'), sluice.run_once('m_heap'), sluice.run_once('m_ign');
SELECT t, md5 = sinks_md5(t) AS unchanged FROM sinks_before ORDER BY t::text;

--
-- a composite key, with a column name that needs quoting
--
CREATE TABLE sinks_comp ("Region" text, id int, v text, note text DEFAULT 'default',
                         PRIMARY KEY ("Region", id));
\set f :comp/x.csv
COPY (SELECT * FROM (VALUES ('eu', 1, 'x.1'), ('us', 1, 'x.2'), ('eu', 1, 'x.3'), ('eu', 2, 'x.4')) AS t(r, id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :comp/y.csv
COPY (SELECT * FROM (VALUES ('us', 1, 'y.1'), ('us', 2, 'y.2'), ('US', 2, NULL)) AS t(r, id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/sinks/comp/y.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/sinks/comp/x.csv
SELECT sluice.create_pipeline('m_comp', sluice.csv_source(:'comp', '"Region" text, id int, v text'),
                              sluice.merge_sink('sinks_comp', '{Region,id}'));
SELECT sluice.run_once('m_comp');
SELECT "Region", id, v, note FROM sinks_comp ORDER BY 1, 2;
SELECT batch_id, files, input_rows, sink_rows FROM sluice.progress('m_comp');

--
-- a null in a key column fails the batch; nothing of it is written
--
\set f :nullkey/n.csv
COPY (SELECT * FROM (VALUES ('eu', 7, 'ok'), (NULL, 8, 'null region'), ('eu', 9, NULL)) AS t(r, id, v))
  TO :'f' WITH (FORMAT csv, HEADER);
SELECT sluice.create_pipeline('m_null', sluice.csv_source(:'nullkey', '"Region" text, id int, v text'),
                              sluice.merge_sink('sinks_comp', '{Region,id}'));
SELECT sluice.run_once('m_null');
SELECT count(*) FROM sinks_comp;
SELECT name, state, batches, last_error FROM sluice.pipelines WHERE name = 'm_null';
SELECT batch_id, sqlstate, message, detail FROM sluice.errors WHERE pipeline = 'm_null';
SELECT batch_id, status, attempts FROM sluice.progress('m_null');

--
-- function_sink(): the description, and functions it refuses
--
CREATE TABLE sinks_fn_log (batch_id bigint, n bigint, total numeric, rows_md5 text, temp boolean, cols text);
CREATE FUNCTION sinks_record(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    s numeric;
    m text;
BEGIN
    -- ctid order is the order of the files and of their lines
    EXECUTE format('SELECT count(*), sum(amount), md5(string_agg(b::text, %L ORDER BY b.ctid)) FROM %s AS b', '|', batch)
       INTO n, s, m;
    INSERT INTO sinks_fn_log
    SELECT batch_id, n, s, m, c.relpersistence = 't',
           (SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute
             WHERE attrelid = batch AND attnum > 0 AND NOT attisdropped)
      FROM pg_class c WHERE c.oid = batch;
END
$$;
SELECT sluice.function_sink('sinks_record(bigint, regclass)') - 'fnoid' AS sink,
       (sluice.function_sink('sinks_record(bigint, regclass)')->>'fnoid')::oid = 'sinks_record'::regproc AS fnoid_ok;
CREATE FUNCTION sinks_int_args(batch_id int, batch regclass) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION sinks_text_args(batch_id bigint, batch text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION sinks_one_arg(batch_id bigint) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION sinks_three_args(batch_id bigint, batch regclass, x int) RETURNS void LANGUAGE sql AS '';
CREATE PROCEDURE sinks_proc(batch_id bigint, batch regclass) LANGUAGE sql AS '';
SELECT sluice.function_sink('sinks_int_args(int, regclass)');
SELECT sluice.function_sink('sinks_text_args(bigint, text)');
SELECT sluice.function_sink('sinks_one_arg(bigint)');
SELECT sluice.function_sink('sinks_three_args(bigint, regclass, int)');
SELECT sluice.function_sink('sinks_record(int, regclass)');
-- a procedure cannot be called as a function (SELECT sinks_proc(...) fails in
-- every batch): refused at creation, whatever the message
DO $$
BEGIN
    PERFORM sluice.create_pipeline('e', sluice.csv_source(current_setting('sluice_test.empty'), 'id int, amount numeric'),
                                   sluice.function_sink('sinks_proc(bigint, regclass)'));
    PERFORM sluice.drop_pipeline('e');
    RAISE NOTICE 'a procedure as a function sink: accepted';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'a procedure as a function sink: refused';
END
$$;
SELECT sluice.function_sink(NULL) IS NULL AS null_sink;

-- the owner must be able to EXECUTE the function
CREATE ROLE regress_sinks_user LOGIN;
GRANT pg_read_server_files TO regress_sinks_user;
CREATE FUNCTION sinks_private(batch_id bigint, batch regclass) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION sinks_private(bigint, regclass) FROM PUBLIC;
-- and a merge sink needs SELECT and UPDATE on the target besides INSERT
CREATE TABLE sinks_insert_only (id int, v text);
GRANT INSERT ON sinks_insert_only TO regress_sinks_user;
SET ROLE regress_sinks_user;
SELECT sluice.create_pipeline('priv', sluice.csv_source(:'empty', 'id int'),
                              sluice.function_sink('sinks_private(bigint, regclass)'));
SELECT sluice.create_pipeline('priv', sluice.csv_source(:'empty', 'id int, v text'),
                              sluice.merge_sink('sinks_insert_only', '{id}'));
SELECT sluice.create_pipeline('priv', sluice.csv_source(:'empty', 'id int, v text'),
                              sluice.append_sink('sinks_insert_only'));
SELECT sluice.drop_pipeline('priv');
RESET ROLE;
DROP TABLE sinks_insert_only;
DROP FUNCTION sinks_private(bigint, regclass);
DROP ROLE regress_sinks_user;

--
-- function sink: called once per batch, in the batch transaction, with the
-- batch id and a temporary table of the batch's rows
--
\set f :fn/f1.csv
COPY (SELECT g AS id, g * 1.5 AS amount FROM generate_series(1, 3) g)
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :fn/f2.csv
COPY (SELECT g AS id, g * 1.5 AS amount FROM generate_series(4, 5) g)
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :fn/f3.csv
COPY (SELECT g AS id, g * 1.5 AS amount FROM generate_series(6, 10) g)
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/sinks/fn/f1.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/sinks/fn/f2.csv
\! touch -d @1704067203 "$SLUICE_TEST_DIR"/sinks/fn/f3.csv
SELECT sluice.create_pipeline('fn_ok', sluice.csv_source(:'fn', 'id int, amount numeric',
                                                         max_files_per_trigger => 1),
                              sluice.function_sink('sinks_record(bigint, regclass)'));
SELECT sluice.run_once('fn_ok');
SELECT batch_id, n, total, temp, cols FROM sinks_fn_log ORDER BY batch_id;
SELECT batch_id, status, files, input_rows, sink_rows FROM sluice.progress('fn_ok') ORDER BY batch_id;
SELECT sluice.run_once('fn_ok');
SELECT count(*) FROM sinks_fn_log;

-- a function that fails on batch 2, after writing: run_once raises its
-- error, batch 2 rolls back with what the function wrote, the pipeline fails
CREATE TABLE sinks_fn_log2 (LIKE sinks_fn_log);
CREATE FUNCTION sinks_picky(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    s numeric;
    m text;
BEGIN
    EXECUTE format('SELECT count(*), sum(amount), md5(string_agg(b::text, %L ORDER BY b.ctid)) FROM %s AS b', '|', batch)
       INTO n, s, m;
    INSERT INTO sinks_fn_log2 (batch_id, n, total, rows_md5) VALUES (batch_id, n, s, m);
    IF batch_id = 2 THEN
        RAISE EXCEPTION 'batch % refused: % rows, sum %', batch_id, n, s
            USING ERRCODE = 'check_violation', HINT = 'Fix sinks_picky.';
    END IF;
END
$$;
SELECT sluice.create_pipeline('fn_fail', sluice.csv_source(:'fn', 'id int, amount numeric',
                                                           max_files_per_trigger => 1),
                              sluice.function_sink('sinks_picky(bigint, regclass)'));
SELECT sluice.run_once('fn_fail');
SELECT batch_id, n, total FROM sinks_fn_log2 ORDER BY batch_id;
SELECT name, state, batches, last_error FROM sluice.pipelines WHERE name = 'fn_fail';
SELECT batch_id, sqlstate, message, hint FROM sluice.errors WHERE pipeline = 'fn_fail';
SELECT batch_id, status, attempts FROM sluice.progress('fn_fail') ORDER BY batch_id;
-- fixed: batch 2 is replayed with the same id and exactly the same rows
CREATE OR REPLACE FUNCTION sinks_picky(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    s numeric;
    m text;
BEGIN
    EXECUTE format('SELECT count(*), sum(amount), md5(string_agg(b::text, %L ORDER BY b.ctid)) FROM %s AS b', '|', batch)
       INTO n, s, m;
    INSERT INTO sinks_fn_log2 (batch_id, n, total, rows_md5) VALUES (batch_id, n, s, m);
END
$$;
SELECT sluice.run_once('fn_fail');
SELECT batch_id, n, total FROM sinks_fn_log2 ORDER BY batch_id;
SELECT batch_id, status, attempts, files, input_rows FROM sluice.progress('fn_fail') ORDER BY batch_id;
-- the rows of the replay are those the failed attempt saw, and those fn_ok saw
SELECT e.message = format('batch %s refused: %s rows, sum %s', l.batch_id, l.n, l.total) AS same_as_failed,
       l.rows_md5 = o.rows_md5 AS same_as_fn_ok
  FROM sluice.errors e, sinks_fn_log2 l, sinks_fn_log o
 WHERE e.pipeline = 'fn_fail' AND l.batch_id = 2 AND o.batch_id = 2;
SELECT name, state, batches, input_rows FROM sluice.pipelines WHERE name = 'fn_fail';

--
-- transforms: projection, filter, cast and a join with an ordinary table;
-- the sink receives the transform's result
--
CREATE TABLE sinks_customers (code text PRIMARY KEY, name text);
INSERT INTO sinks_customers VALUES ('c1', 'Alice'), ('c2', 'Bob');
\set f :tx/t1.csv
COPY (SELECT * FROM (VALUES (1, 'c1', '10.5', 'ok'), (2, 'c2', '3', 'void'), (3, 'c3', '7.25', 'ok'), (5, 'c2', '1', 'ok'))
                     AS t(id, cust, amount, status))
  TO :'f' WITH (FORMAT csv, HEADER);
\set f :tx/t2.csv
COPY (SELECT * FROM (VALUES (1, 'c2', '11', 'ok'), (4, 'c1', '2.5', 'ok'), (5, 'c1', '0.125', 'void')) AS t(id, cust, amount, status))
  TO :'f' WITH (FORMAT csv, HEADER);
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/sinks/tx/t1.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/sinks/tx/t2.csv
CREATE TABLE sinks_tx_append (id int, customer text, amount numeric(10,2), loaded boolean DEFAULT true);
CREATE TABLE sinks_tx_merge (id int PRIMARY KEY, customer text, amount numeric);
SELECT sluice.create_pipeline('tx_append',
    sluice.csv_source(:'tx', 'id int, cust text, amount text, status text'),
    sluice.append_sink('sinks_tx_append'),
    transform => $$SELECT b.id, c.name AS customer, b.amount::numeric(10,2) AS amount
                     FROM batch AS b JOIN public.sinks_customers AS c ON c.code = b.cust
                    WHERE b.status <> 'void'$$);
SELECT sluice.create_pipeline('tx_merge',
    sluice.csv_source(:'tx', 'id int, cust text, amount text, status text'),
    sluice.merge_sink('sinks_tx_merge', '{id}'),
    transform => $$SELECT b.id, c.name AS customer, b.amount::numeric AS amount
                     FROM batch AS b JOIN public.sinks_customers AS c ON c.code = b.cust
                    WHERE b.status <> 'void'$$);
-- a function sink gets the transform's result as "batch"
SELECT sluice.create_pipeline('tx_fn',
    sluice.csv_source(:'tx', 'id int, cust text, amount text, status text'),
    sluice.function_sink('sinks_record(bigint, regclass)'),
    transform => $$SELECT id * 100 AS id100, amount::numeric * 2 AS amount FROM batch WHERE status = 'ok'$$);
SELECT sluice.run_once('tx_append'), sluice.run_once('tx_merge'), sluice.run_once('tx_fn');
SELECT id, customer, amount, loaded FROM sinks_tx_append ORDER BY id, customer;
SELECT batch_id, files, input_rows, sink_rows FROM sluice.progress('tx_append');
SELECT id, customer, amount FROM sinks_tx_merge ORDER BY id;
SELECT batch_id, files, input_rows, sink_rows FROM sluice.progress('tx_merge');
SELECT batch_id, n, total, temp, cols FROM sinks_fn_log WHERE cols = 'id100,amount' ORDER BY batch_id;
SELECT batch_id, input_rows, sink_rows FROM sluice.progress('tx_fn');
-- the lookup table may be named as the owner names it anywhere: unqualified
CREATE TABLE sinks_tx_unqualified (id int, customer text);
SELECT sluice.create_pipeline('tx_unqualified',
    sluice.csv_source(:'tx', 'id int, cust text, amount text, status text'),
    sluice.append_sink('sinks_tx_unqualified'),
    transform => 'SELECT b.id, c.name AS customer FROM batch AS b JOIN sinks_customers AS c ON c.code = b.cust');
SELECT sluice.run_once('tx_unqualified');
SELECT id, customer FROM sinks_tx_unqualified ORDER BY id, customer;
SELECT sluice.drop_pipeline('tx_unqualified') FROM sluice.pipelines WHERE name = 'tx_unqualified';

-- transforms the sink cannot take are refused at creation
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id, FROM batch');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id FROM batch WHERE');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id, nope FROM batch');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id FROM public.sinks_no_such_table');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'DELETE FROM batch');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id, id FROM batch');
-- a transform is one query: a second statement smuggled after it (here one
-- that would empty the lookup table in every batch) is refused at creation,
-- whatever the message
DO $$
BEGIN
    PERFORM sluice.create_pipeline('e', sluice.csv_source(current_setting('sluice_test.empty'), 'id int, cust text'),
        sluice.append_sink('sinks_tx_append'),
        transform => 'SELECT id FROM batch) AS q; DELETE FROM public.sinks_customers; '
                     'CREATE TEMP TABLE sinks_x ON COMMIT DROP AS SELECT * FROM (SELECT 1');
    PERFORM sluice.drop_pipeline('e');
    RAISE NOTICE 'a transform with a second statement: accepted';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'a transform with a second statement: refused';
END
$$;
-- result columns missing from the target, of a type it cannot take, or
-- without the merge key
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id, cust AS customer_code FROM batch');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.append_sink('sinks_tx_append'), transform => 'SELECT id, point(1, 2) AS amount FROM batch');
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id int, cust text'),
                              sluice.merge_sink('sinks_tx_merge', '{id}'), transform => 'SELECT cust AS customer FROM batch');
-- ... which a cast in the transform fixes; the source's own columns need not fit
SELECT sluice.create_pipeline('e', sluice.csv_source(:'empty', 'id text, cust point'),
                              sluice.merge_sink('sinks_tx_merge', '{id}'), transform => 'SELECT id::int AS id FROM batch');
SELECT sluice.drop_pipeline('e');
SELECT count(*) FROM sinks_customers;
SELECT name FROM sluice.pipelines WHERE name LIKE 'tx%' OR name = 'e' ORDER BY name;

-- merge through a transform that joins: the last row of a key in file and
-- line order still wins when the transform keeps batch's order (ORDER BY
-- b.ctid, as the README says), however the join is executed (a lookup
-- table that does not fit in work_mem makes a multi-batch hash join)
CREATE TABLE sinks_big_lookup (code int, name text);
INSERT INTO sinks_big_lookup SELECT g, 'name' || g FROM generate_series(1, 5000) g;
ANALYZE sinks_big_lookup;
\set f :order/o.csv
COPY (SELECT g % 100 AS id, g * 7 % 5000 + 1 AS code, g AS seq FROM generate_series(1, 1000) g)
  TO :'f' WITH (FORMAT csv, HEADER);
CREATE TABLE sinks_order (id int PRIMARY KEY, name text, seq int);
ALTER ROLE CURRENT_USER SET work_mem = '64kB';
SELECT sluice.create_pipeline('tx_order',
    sluice.csv_source(:'order', 'id int, code int, seq int'),
    sluice.merge_sink('sinks_order', '{id}'),
    transform => 'SELECT b.id, l.name, b.seq FROM batch AS b JOIN public.sinks_big_lookup AS l ON l.code = b.code ORDER BY b.ctid');
SELECT sluice.run_once('tx_order');
ALTER ROLE CURRENT_USER RESET work_mem;
-- seq is the line number: the last line of each id is the one with the greatest seq
SELECT count(*) AS keys, count(*) FILTER (WHERE seq <> (SELECT max(g) FROM generate_series(1, 1000) g WHERE g % 100 = id))
       AS keys_with_an_earlier_row
  FROM sinks_order;

SELECT sluice.drop_pipeline(name) FROM sluice.pipelines ORDER BY name;
SELECT count(*) FROM sluice.pipelines;
DROP TABLE sinks_acct, sinks_heap, sinks_ign, sinks_comp, sinks_fn_log, sinks_fn_log2, sinks_customers,
           sinks_tx_append, sinks_tx_merge, sinks_tx_unqualified, sinks_big_lookup, sinks_order;
DROP FUNCTION sinks_record(bigint, regclass);
DROP FUNCTION sinks_picky(bigint, regclass);
DROP FUNCTION sinks_int_args(int, regclass), sinks_text_args(bigint, text), sinks_one_arg(bigint),
              sinks_three_args(bigint, regclass, int);
DROP PROCEDURE sinks_proc(bigint, regclass);
DROP FUNCTION sinks_md5(regclass);
\! rm -rf "$SLUICE_TEST_DIR"/sinks

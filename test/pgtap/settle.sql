-- settle_time: a running pipeline does not take a file younger than its
-- settle time, and takes it once it has aged; a file that changes while it
-- is read is read again later (SQLSTATE SL001, transient), not failed.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set young :test_dir/settle/young
\set growing :test_dir/settle/growing
\! rm -rf "$SLUICE_TEST_DIR"/settle && mkdir -p "$SLUICE_TEST_DIR"/settle/young "$SLUICE_TEST_DIR"/settle/growing
CREATE TABLE pgtap_settle_target (id int, f text);
CREATE TABLE pgtap_growing_target (id int, f text);

SELECT plan(15);

--
-- a young file waits for settle_time
--
SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_settle',
                             sluice.csv_source(%L, 'id int, f text', settle_time => '4 seconds'),
                             sluice.append_sink('pgtap_settle_target'), '100 milliseconds')$$, :'young'),
                'create_pipeline with settle_time 4 seconds');
SELECT lives_ok($$SELECT sluice.start('pgtap_settle')$$, 'start()');
SELECT ok(test_util.wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'pgtap_settle')$$),
          'the worker runs');

-- an old file is taken at once
\set f :young/old.csv.tmp
COPY (SELECT g, 'old' FROM generate_series(1, 3) g) TO :'f' WITH (FORMAT csv, HEADER);
\! cd "$SLUICE_TEST_DIR"/settle/young && touch -d @1704067201 old.csv.tmp && mv old.csv.tmp old.csv
SELECT ok(test_util.wait_until($$(SELECT count(*) = 3 FROM pgtap_settle_target)$$),
          'a file older than settle_time is taken');

-- a new one is not, for a while
\set new :young/new.csv
COPY (SELECT g, 'new' FROM generate_series(4, 8) g) TO :'new' WITH (FORMAT csv, HEADER);
SELECT pg_sleep(1.5);
SELECT is((SELECT count(*) FROM pgtap_settle_target), 3::bigint,
          'a file younger than settle_time is not taken (the worker planned ~15 times meanwhile)');
SELECT is((SELECT files_pending FROM sluice.pipelines WHERE name = 'pgtap_settle'), 1::bigint,
          'files_pending counts it');
SELECT is((SELECT count(*) FROM sluice.file f JOIN sluice.pipeline p ON p.id = f.pipeline_id
            WHERE p.name = 'pgtap_settle' AND f.path LIKE '%/new.csv'), 0::bigint,
          'no batch has claimed it');

-- ... until it has aged
SELECT ok(test_util.wait_until($$(SELECT count(*) = 8 FROM pgtap_settle_target)$$),
          'it is taken once it is older than settle_time');
SELECT cmp_ok((SELECT b.planned_at FROM sluice.progress('pgtap_settle') b
                WHERE b.end_offset->'files' @> jsonb_build_array(jsonb_build_object('path', :'new'))),
              '>=', (SELECT (f.modification + interval '4 seconds')::timestamptz
                       FROM pg_stat_file(:'new') f),
              'not planned before its mtime + settle_time');
SELECT is(ARRAY(SELECT files FROM sluice.progress('pgtap_settle') ORDER BY batch_id), ARRAY[1, 1],
          'in a batch of its own');
SELECT is((SELECT state FROM sluice.pipelines WHERE name = 'pgtap_settle'), 'running', 'the pipeline keeps running');

--
-- a file that changes while it is read: the batch is rolled back and tried
-- again (SL001 is transient), not failed. To make the change land inside the
-- read every time, a statement trigger on the target appends a line to the
-- file while the first attempt's COPY runs; a marker file (which a rollback
-- does not undo) keeps it from doing so again. The trigger's argument is the
-- directory.
--
\set f :growing/g.csv
COPY (SELECT 'id,f' UNION ALL SELECT '1,a' UNION ALL SELECT '2,b')
  TO :'f';
CREATE FUNCTION pgtap_grow_once() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF pg_stat_file(TG_ARGV[0] || '/appended', true) IS NULL THEN
        EXECUTE format('COPY (SELECT 1 WHERE false) TO PROGRAM %L',
                       format('cd %s && echo 3,c >> g.csv && touch appended', TG_ARGV[0]));
    END IF;
    RETURN NULL;
END
$f$;
CREATE TRIGGER grow_once BEFORE INSERT ON pgtap_growing_target
    FOR EACH STATEMENT EXECUTE FUNCTION pgtap_grow_once(:'growing');
SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_growing',
                             sluice.csv_source(%L, 'id int, f text'),
                             sluice.append_sink('pgtap_growing_target'), '100 milliseconds')$$, :'growing'),
                'create_pipeline without settle_time');
SELECT lives_ok($$SELECT sluice.start('pgtap_growing')$$, 'start()');
SELECT ok(test_util.wait_until($$(SELECT count(*) = 3 FROM pgtap_growing_target)$$),
          'every line of the changed file is loaded');
SELECT is((SELECT format('state %s, errors %s, batches %s, attempts %s, input rows %s, ids %s',
                         p.state, (SELECT string_agg(e.sqlstate, ',') FROM sluice.errors e WHERE e.pipeline = p.name),
                         p.batches,
                         (SELECT string_agg(attempts::text, ',') FROM sluice.progress(p.name)),
                         (SELECT string_agg(input_rows::text, ',') FROM sluice.progress(p.name)),
                         (SELECT string_agg(id::text, ',' ORDER BY id) FROM pgtap_growing_target))
             FROM sluice.pipelines p WHERE p.name = 'pgtap_growing'),
          'state running, errors SL001, batches 1, attempts 2, input rows 3, ids 1,2,3',
          'the changing file was read again, whole, not failed: one batch, two attempts, the transient error kept');

SELECT * FROM finish();

SELECT sluice.drop_pipeline('pgtap_settle');
SELECT sluice.drop_pipeline('pgtap_growing');
DROP TABLE pgtap_settle_target, pgtap_growing_target;
DROP FUNCTION pgtap_grow_once();
\! rm -rf "$SLUICE_TEST_DIR"/settle

-- on_error => 'reject' over a file with a line that COPY cannot read at all
-- (an unquoted carriage return in a file whose lines end in newlines): the
-- line is rejected, the rest of that file cannot be read, and the batch goes
-- on with the next file.  Reading on after such a line used to fail there
-- again for ever, and the batch never ended.
-- Run with pg_prove against a server with shared_preload_libraries = 'sluice',
-- sluice.database = <this database>, sluice.restart_delay = 1; as a superuser, after test/pgtap_helpers.sql,
-- with SLUICE_TEST_DIR set to a directory for the test's files (scripts/test makes a new one each run).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;

\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/rejects_unreadable
\! rm -rf "$SLUICE_TEST_DIR"/rejects_unreadable && mkdir -p "$SLUICE_TEST_DIR"/rejects_unreadable
\! cd "$SLUICE_TEST_DIR"/rejects_unreadable && printf 'id,v\n1,a\n2,b\rc\n3,d\n' > a.csv && printf 'id,v\n10,x\n11,y\n' > b.csv && touch -d @1704067201 a.csv && touch -d @1704067202 b.csv
CREATE TABLE pgtap_rejects_unreadable (id int, v text);

SELECT plan(5);

SELECT lives_ok(format($$SELECT sluice.create_pipeline('pgtap_rejects_unreadable',
                             sluice.csv_source(%L, 'id int, v text', on_error => 'reject'),
                             sluice.append_sink('pgtap_rejects_unreadable'))$$, :'dir'),
                'create_pipeline with on_error => ''reject''');
-- fail rather than wait for ever
SET statement_timeout = '30s';
SELECT is(sluice.run_once('pgtap_rejects_unreadable'), 1::bigint, 'run_once reads both files in one batch, and ends');
RESET statement_timeout;
SELECT results_eq($$SELECT id, v FROM pgtap_rejects_unreadable ORDER BY id$$,
                  $$VALUES (1, 'a'), (10, 'x'), (11, 'y')$$,
                  'the line before it and the next file are written');
SELECT results_eq($$SELECT regexp_replace(file, '^.*/', ''), line, sqlstate, message FROM sluice.rejects WHERE pipeline = 'pgtap_rejects_unreadable'$$,
                  $$VALUES ('a.csv', 3::bigint, '22P04', 'unquoted carriage return found in data')$$,
                  'the line that cannot be read is rejected once, with its line number');
SELECT lives_ok($$SELECT sluice.drop_pipeline('pgtap_rejects_unreadable')$$, 'drop_pipeline()');

SELECT * FROM finish();

DROP TABLE pgtap_rejects_unreadable;
\! rm -rf "$SLUICE_TEST_DIR"/rejects_unreadable

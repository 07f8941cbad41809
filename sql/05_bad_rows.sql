--
-- 05_bad_rows: on_error => 'fail' | 'reject' | 'skip' over a corpus of
-- malformed CSV, empty and header-only files, and the file lifecycle
-- (after => 'keep' | 'delete' | 'archive').
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS sluice;
RESET client_min_messages;
\set SHOW_CONTEXT never
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run;
-- where a path is printed, it is printed as $SLUICE_TEST_DIR/... (an error
-- that names a file is printed through test/psql_test_dir)
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/bad_rows

SELECT current_setting('server_encoding') AS server_encoding;

--
-- the corpus: three files, oldest first a.csv, b.csv, c.csv
--
\! rm -rf "$SLUICE_TEST_DIR"/bad_rows && mkdir -p "$SLUICE_TEST_DIR"/bad_rows/corpus
-- a.csv: parse and conversion errors between good rows
\! printf 'id,qty,d,cust,v\n1,10,2024-01-01,1,a1\n2,20,2024-01-02,1\n3,30,2024-01-03,1,a3,extra\n4,40,2024-01-04,1,a4\n5,abc,2024-01-05,1,a5\n6,99999999999,2024-01-06,1,a6\n7,70,2024-02-30,1,a7\n8,80,2024-01-08,2,a8\n' > "$SLUICE_TEST_DIR"/bad_rows/corpus/a.csv
-- b.csv: rows the sink refuses (NOT NULL, CHECK, FK, duplicate key), then an unterminated quote
\! printf 'id,qty,d,cust,v\n9,,2024-01-09,1,b9\n10,-1,2024-01-10,1,b10\n11,110,2024-01-11,99,b11\n1,120,2024-01-12,1,b1dup\n12,120,2024-01-12,3,b12\n13,130,2024-01-13,3,"b13 never closed\n' > "$SLUICE_TEST_DIR"/bad_rows/corpus/b.csv
-- c.csv: invalid UTF-8 bytes; the rest of the file cannot be read past them
\! printf 'id,qty,d,cust,v\n14,140,2024-01-14,1,c14\n15,150,2024-01-15,1,caf\377\376\n16,160,2024-01-16,1,c16\n' > "$SLUICE_TEST_DIR"/bad_rows/corpus/c.csv
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/bad_rows/corpus/a.csv && touch -d @1704067202 "$SLUICE_TEST_DIR"/bad_rows/corpus/b.csv && touch -d @1704067203 "$SLUICE_TEST_DIR"/bad_rows/corpus/c.csv

CREATE TABLE br_cust (id int PRIMARY KEY);
INSERT INTO br_cust VALUES (1), (2), (3);
CREATE TABLE br_fail (id int PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0), d date,
                      cust int REFERENCES br_cust, v text);
CREATE TABLE br_reject (LIKE br_fail INCLUDING ALL, FOREIGN KEY (cust) REFERENCES br_cust);
CREATE TABLE br_skip (LIKE br_fail INCLUDING ALL, FOREIGN KEY (cust) REFERENCES br_cust);

--
-- on_error => 'fail' (the default): the first bad row fails the batch
--
SELECT sluice.create_pipeline('br_fail',
    sluice.csv_source(:'dir' || '/corpus', 'id int, qty int, d date, cust int, v text'),
    sluice.append_sink('br_fail'));
SELECT sluice.run_once('br_fail');
SELECT count(*) FROM br_fail;
SELECT name, state, batches, input_rows FROM sluice.pipelines WHERE name = 'br_fail';
SELECT batch_id, status, attempts, input_rows, sink_rows, rejected_rows FROM sluice.progress('br_fail');
SELECT batch_id, sqlstate, message FROM sluice.errors WHERE pipeline = 'br_fail';
SELECT count(*) FROM sluice.rejects WHERE pipeline = 'br_fail';

--
-- on_error => 'reject': every bad line set aside, the good rows committed
--
SELECT sluice.create_pipeline('br_reject',
    sluice.csv_source(:'dir' || '/corpus', 'id int, qty int, d date, cust int, v text',
                      on_error => 'reject'),
    sluice.append_sink('br_reject'));
SELECT sluice.run_once('br_reject');
SELECT * FROM br_reject ORDER BY id;
SELECT name, state, batches, input_rows, last_error FROM sluice.pipelines WHERE name = 'br_reject';
SELECT batch_id, status, attempts, files, input_rows, sink_rows, rejected_rows FROM sluice.progress('br_reject');
SELECT batch_id, regexp_replace(file, '^.*/', '') AS file, line, raw_line, sqlstate, message
  FROM sluice.rejects WHERE pipeline = 'br_reject' ORDER BY file, line;
-- nothing failed
SELECT count(*) FROM sluice.errors WHERE pipeline = 'br_reject';
-- and nothing is read twice
SELECT sluice.run_once('br_reject');
SELECT count(*) FROM br_reject;
SELECT count(*) FROM sluice.rejects WHERE pipeline = 'br_reject';

--
-- on_error => 'skip': the same rows committed, the bad ones only counted
--
SELECT sluice.create_pipeline('br_skip',
    sluice.csv_source(:'dir' || '/corpus', 'id int, qty int, d date, cust int, v text',
                      on_error => 'skip'),
    sluice.append_sink('br_skip'));
SELECT sluice.run_once('br_skip');
SELECT (SELECT string_agg(s::text, ' ' ORDER BY s.id) FROM br_skip s)
     = (SELECT string_agg(r::text, ' ' ORDER BY r.id) FROM br_reject r) AS same_rows_as_reject;
SELECT count(*) FROM br_skip;
SELECT name, state, batches, input_rows FROM sluice.pipelines WHERE name = 'br_skip';
SELECT batch_id, status, attempts, files, input_rows, sink_rows, rejected_rows FROM sluice.progress('br_skip');
SELECT count(*) FROM sluice.rejects WHERE pipeline = 'br_skip';
SELECT count(*) FROM sluice.errors WHERE pipeline = 'br_skip';

--
-- a clean batch in 'reject' mode takes the fast path: one attempt, nothing rejected
--
\! printf 'id,qty,d,cust,v\n20,200,2024-01-20,1,d20\n21,210,2024-01-21,2,d21\n' > "$SLUICE_TEST_DIR"/bad_rows/corpus/d.csv
\! touch -d @1704067204 "$SLUICE_TEST_DIR"/bad_rows/corpus/d.csv
SELECT sluice.run_once('br_reject');
SELECT batch_id, status, attempts, files, input_rows, sink_rows, rejected_rows
  FROM sluice.progress('br_reject') ORDER BY batch_id;
SELECT count(*) FROM br_reject;
SELECT count(*) FROM sluice.rejects WHERE pipeline = 'br_reject';

--
-- a merge sink with a null key, in 'reject' mode
--
\! mkdir -p "$SLUICE_TEST_DIR"/bad_rows/merge
\! printf 'id,v\n1,m1\n,nokey\n2,m2\n1,m1last\n' > "$SLUICE_TEST_DIR"/bad_rows/merge/m.csv
CREATE TABLE br_merge (id int PRIMARY KEY, v text);
SELECT sluice.create_pipeline('br_merge',
    sluice.csv_source(:'dir' || '/merge', 'id int, v text', on_error => 'reject'),
    sluice.merge_sink('br_merge', ARRAY['id']));
SELECT sluice.run_once('br_merge');
SELECT * FROM br_merge ORDER BY id;
SELECT batch_id, status, attempts, input_rows, sink_rows, rejected_rows FROM sluice.progress('br_merge');
SELECT batch_id, regexp_replace(file, '^.*/', '') AS file, line, raw_line, sqlstate, message
  FROM sluice.rejects WHERE pipeline = 'br_merge';
-- with on_match => 'ignore' the last row of a new key in the batch is the one
-- inserted, also when the batch had to be read carefully
\! mkdir -p "$SLUICE_TEST_DIR"/bad_rows/merge_ignore
\! printf 'id,v\n1,first\n,nokey\n1,last\n2,only\n' > "$SLUICE_TEST_DIR"/bad_rows/merge_ignore/m.csv
CREATE TABLE br_merge_ignore (id int PRIMARY KEY, v text);
CREATE TABLE br_merge_ignore_clean (id int PRIMARY KEY, v text);
SELECT sluice.create_pipeline('br_merge_ignore',
    sluice.csv_source(:'dir' || '/merge_ignore', 'id int, v text', on_error => 'reject'),
    sluice.merge_sink('br_merge_ignore', ARRAY['id'], on_match => 'ignore'));
SELECT sluice.run_once('br_merge_ignore');
SELECT * FROM br_merge_ignore ORDER BY id;
SELECT batch_id, attempts, input_rows, sink_rows, rejected_rows FROM sluice.progress('br_merge_ignore');
-- the same rows without the bad one, on the fast path, for comparison
\! mkdir -p "$SLUICE_TEST_DIR"/bad_rows/merge_clean
\! printf 'id,v\n1,first\n1,last\n2,only\n' > "$SLUICE_TEST_DIR"/bad_rows/merge_clean/m.csv
SELECT sluice.create_pipeline('br_merge_ignore_clean',
    sluice.csv_source(:'dir' || '/merge_clean', 'id int, v text', on_error => 'reject'),
    sluice.merge_sink('br_merge_ignore_clean', ARRAY['id'], on_match => 'ignore'));
SELECT sluice.run_once('br_merge_ignore_clean');
SELECT * FROM br_merge_ignore_clean ORDER BY id;
SELECT batch_id, attempts, input_rows, sink_rows, rejected_rows FROM sluice.progress('br_merge_ignore_clean');

--
-- empty files and header-only files are fine, in every mode
--
\! mkdir -p "$SLUICE_TEST_DIR"/bad_rows/empty
\! : > "$SLUICE_TEST_DIR"/bad_rows/empty/1_empty.csv
\! printf 'id,v\n' > "$SLUICE_TEST_DIR"/bad_rows/empty/2_header.csv
\! printf 'id,v' > "$SLUICE_TEST_DIR"/bad_rows/empty/3_header_no_newline.csv
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/bad_rows/empty/*.csv
CREATE TABLE br_empty (id int, v text);
SELECT sluice.create_pipeline('br_empty_fail',
    sluice.csv_source(:'dir' || '/empty', 'id int, v text'),
    sluice.append_sink('br_empty'));
SELECT sluice.create_pipeline('br_empty_reject',
    sluice.csv_source(:'dir' || '/empty', 'id int, v text', on_error => 'reject'),
    sluice.append_sink('br_empty'));
SELECT sluice.create_pipeline('br_empty_noheader',
    sluice.csv_source(:'dir' || '/empty', 'id int, v text', header => false,
                      pattern => '1_*.csv', on_error => 'skip'),
    sluice.append_sink('br_empty'));
SELECT sluice.run_once('br_empty_fail');
SELECT sluice.run_once('br_empty_reject');
SELECT sluice.run_once('br_empty_noheader');
SELECT name, state, batches, input_rows, files_pending, last_error FROM sluice.pipelines
 WHERE name LIKE 'br_empty%' ORDER BY name;
SELECT p.name, b.files, b.input_rows, b.rejected_rows
  FROM sluice.pipelines p, LATERAL sluice.progress(p.name) b
 WHERE p.name LIKE 'br_empty%' ORDER BY p.name;
SELECT count(*) FROM br_empty;

--
-- option errors
--
SELECT sluice.csv_source('/tmp', 'id int', on_error => 'ignore');
SELECT sluice.csv_source('/tmp', 'id int', on_error => NULL);
SELECT sluice.csv_source('/tmp', 'id int', after => 'move');
SELECT sluice.csv_source('/tmp', 'id int', after => NULL);
SELECT sluice.csv_source('/tmp', 'id int', archive_dir => '/tmp');
SELECT sluice.csv_source('/tmp', 'id int', after => 'delete', archive_dir => '/tmp');
SELECT sluice.csv_source('/tmp', 'id int', after => 'archive');
SELECT sluice.csv_source('/tmp', 'id int', after => 'archive', archive_dir => 'tmp/archive');
SELECT sluice.csv_source('/tmp', 'id int', settle_time => '-1 second');
SELECT sluice.csv_source('/tmp', 'id int', settle_time => NULL);
-- the archive directory must exist when the pipeline is created
\! test/psql_test_dir -v SHOW_CONTEXT=never -c "SELECT sluice.create_pipeline('br_opt', sluice.csv_source('$SLUICE_TEST_DIR/bad_rows/empty', 'id int, v text', after => 'archive', archive_dir => '$SLUICE_TEST_DIR/bad_rows/no_such_dir'), sluice.append_sink('br_empty'))"
SELECT count(*) FROM sluice.pipelines WHERE name = 'br_opt';
-- what csv_source() keeps
SELECT s->'on_error' AS on_error, s->'after' AS after, s->'archive_dir' AS archive_dir, s->'settle_ms' AS settle_ms
  FROM sluice.csv_source('/tmp', 'id int', on_error => 'skip', after => 'archive', archive_dir => '/tmp/arch/',
                         settle_time => '1.5 seconds') s;

--
-- after => 'delete' and 'archive': done at the plan after the commit (a
-- run_once's last, empty plan does it too); a name is never read again
--
\! mkdir -p "$SLUICE_TEST_DIR"/bad_rows/del "$SLUICE_TEST_DIR"/bad_rows/arch/in "$SLUICE_TEST_DIR"/bad_rows/arch/done
\! printf 'id,v\n1,x\n2,y\n' > "$SLUICE_TEST_DIR"/bad_rows/del/1.csv && printf 'id,v\n3,z\n' > "$SLUICE_TEST_DIR"/bad_rows/del/2.csv
\! printf 'id,v\n1,x\n2,y\n' > "$SLUICE_TEST_DIR"/bad_rows/arch/in/1.csv && printf 'id,v\n3,z\n' > "$SLUICE_TEST_DIR"/bad_rows/arch/in/2.csv
\! touch -d @1704067201 "$SLUICE_TEST_DIR"/bad_rows/del/1.csv "$SLUICE_TEST_DIR"/bad_rows/arch/in/1.csv
\! touch -d @1704067202 "$SLUICE_TEST_DIR"/bad_rows/del/2.csv "$SLUICE_TEST_DIR"/bad_rows/arch/in/2.csv
CREATE TABLE br_del (id int, v text);
CREATE TABLE br_arch (id int, v text);
SELECT sluice.create_pipeline('br_del',
    sluice.csv_source(:'dir' || '/del', 'id int, v text', after => 'delete'),
    sluice.append_sink('br_del'));
SELECT sluice.create_pipeline('br_arch',
    sluice.csv_source(:'dir' || '/arch/in', 'id int, v text', after => 'archive',
                      archive_dir => :'dir' || '/arch/done/'),
    sluice.append_sink('br_arch'));
SELECT sluice.run_once('br_del');
SELECT sluice.run_once('br_arch');
\! ls "$SLUICE_TEST_DIR"/bad_rows/del
\! ls "$SLUICE_TEST_DIR"/bad_rows/arch/in
\! ls "$SLUICE_TEST_DIR"/bad_rows/arch/done
SELECT count(*) FROM br_del;
SELECT count(*) FROM br_arch;
-- new files are read, the old ones not again, even if a name comes back
\! printf 'id,v\n4,w\n' > "$SLUICE_TEST_DIR"/bad_rows/del/3.csv
\! printf 'id,v\n4,w\n' > "$SLUICE_TEST_DIR"/bad_rows/arch/in/3.csv
\! cp -p "$SLUICE_TEST_DIR"/bad_rows/arch/done/1.csv "$SLUICE_TEST_DIR"/bad_rows/arch/in/1.csv
SELECT sluice.run_once('br_del');
SELECT sluice.run_once('br_arch');
\! ls "$SLUICE_TEST_DIR"/bad_rows/del
\! ls "$SLUICE_TEST_DIR"/bad_rows/arch/in
\! ls "$SLUICE_TEST_DIR"/bad_rows/arch/done
SELECT id, v FROM br_del ORDER BY id;
SELECT id, v FROM br_arch ORDER BY id;
SELECT batch_id, files, input_rows FROM sluice.progress('br_arch') ORDER BY batch_id;
SELECT name, state, files_pending FROM sluice.pipelines WHERE name IN ('br_del', 'br_arch') ORDER BY name;
-- a file with after => 'keep' stays where it is
\! ls "$SLUICE_TEST_DIR"/bad_rows/corpus

--
-- after => 'delete' / 'archive' take pg_write_server_files
--
CREATE ROLE regress_sluice_reader LOGIN;
GRANT pg_read_server_files TO regress_sluice_reader;
GRANT SELECT, INSERT ON br_arch TO regress_sluice_reader;
SET ROLE regress_sluice_reader;
SELECT sluice.create_pipeline('br_reader_arch',
    sluice.csv_source(:'dir' || '/arch/in', 'id int, v text', after => 'archive',
                      archive_dir => :'dir' || '/arch/done'),
    sluice.append_sink('br_arch'));
SELECT sluice.create_pipeline('br_reader_del',
    sluice.csv_source(:'dir' || '/arch/in', 'id int, v text', after => 'delete'),
    sluice.append_sink('br_arch'));
-- 'keep' is fine
SELECT sluice.create_pipeline('br_reader_keep',
    sluice.csv_source(:'dir' || '/arch/in', 'id int, v text'),
    sluice.append_sink('br_arch'));
SELECT name, owner FROM sluice.pipelines;
RESET ROLE;
-- ... also when the pipeline runs: an owner who lost it cannot archive
\! mkdir -p "$SLUICE_TEST_DIR"/bad_rows/priv/in "$SLUICE_TEST_DIR"/bad_rows/priv/done
\! printf 'id,v\n7,p\n' > "$SLUICE_TEST_DIR"/bad_rows/priv/in/1.csv
GRANT pg_write_server_files TO regress_sluice_reader;
SET ROLE regress_sluice_reader;
SELECT sluice.create_pipeline('br_reader_arch',
    sluice.csv_source(:'dir' || '/priv/in', 'id int, v text', after => 'archive',
                      archive_dir => :'dir' || '/priv/done'),
    sluice.append_sink('br_arch'));
RESET ROLE;
REVOKE pg_write_server_files FROM regress_sluice_reader;
SELECT sluice.run_once('br_reader_arch');
SELECT name, state, batches FROM sluice.pipelines WHERE name = 'br_reader_arch';
SELECT sqlstate, message, detail FROM sluice.errors WHERE pipeline = 'br_reader_arch';
\! ls "$SLUICE_TEST_DIR"/bad_rows/priv/in
\! ls "$SLUICE_TEST_DIR"/bad_rows/priv/done

--
-- clean up
--
SELECT sluice.drop_pipeline(name) FROM sluice.pipelines WHERE name LIKE 'br\_%' ORDER BY name;
SELECT count(*) FROM sluice.pipelines;
SELECT count(*) FROM sluice.reject;
DROP TABLE br_fail, br_reject, br_skip, br_merge, br_merge_ignore, br_merge_ignore_clean, br_empty, br_del, br_arch, br_cust;
DROP ROLE regress_sluice_reader;
\! rm -rf "$SLUICE_TEST_DIR"/bad_rows

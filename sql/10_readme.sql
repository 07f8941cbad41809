--
-- 10_readme: the README's getting-started block, pasted whole (only its
-- feed directory moved here), works: its last lines stop the pipeline and
-- run_once() it right away.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS sluice CASCADE;
RESET client_min_messages;
-- the test's files go under $SLUICE_TEST_DIR, a new directory for each run;
-- the block names its feed as :'bank', which psql fills in
\getenv test_dir SLUICE_TEST_DIR
\set dir :test_dir/readme
\set bank :dir/bank
\! rm -rf "$SLUICE_TEST_DIR"/readme && mkdir -p "$SLUICE_TEST_DIR"/readme
\! perl test/gen_bank.pl "$SLUICE_TEST_DIR"/readme/bank 3 100 1 7 >/dev/null
\! sed -n '/^## Getting started/,/^## /p' README.md | sed -n '/^```sql$/,/^```$/p' | sed '1d;$d' | sed "s|'/srv/feeds/bank'|:'bank'|" > "$SLUICE_TEST_DIR"/readme/block.sql
-- the block prints pids and times: keep its output, not its errors, out of the way
\o /dev/null
\set ON_ERROR_STOP on
\i :dir/block.sql
\unset ON_ERROR_STOP
\o
-- how many batches depends on whether the started worker planned one before stop()
SELECT name, state, batches > 0 AS batches_ran, input_rows, last_error FROM sluice.pipelines;
SELECT count(*) AS rows, count(DISTINCT transaction_id) AS ids FROM bank_transactions;

-- the same once the worker is surely up: run_once() waits for it to exit
\i test/regress/wait_until.sql
SELECT sluice.start('bank_ingest');
SELECT wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'bank_ingest')$$);
\! perl test/gen_bank.pl "$SLUICE_TEST_DIR"/readme/bank2 2 50 301 8 >/dev/null && mv "$SLUICE_TEST_DIR"/readme/bank2/bank_00001.csv "$SLUICE_TEST_DIR"/readme/bank/more_1.csv && mv "$SLUICE_TEST_DIR"/readme/bank2/bank_00002.csv "$SLUICE_TEST_DIR"/readme/bank/more_2.csv
SELECT sluice.stop('bank_ingest');
SELECT sluice.run_once('bank_ingest');
-- how many batches depends on whether the started worker planned one before stop()
SELECT name, state, batches > 0 AS batches_ran, input_rows, last_error FROM sluice.pipelines;
SELECT count(*) AS rows, count(DISTINCT transaction_id) AS ids FROM bank_transactions;
DROP FUNCTION wait_until(text);
SELECT sluice.drop_pipeline('bank_ingest');
DROP TABLE bank_transactions;
\! rm -rf "$SLUICE_TEST_DIR"/readme

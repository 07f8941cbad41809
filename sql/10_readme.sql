--
-- 10_readme: the README's getting-started block, pasted whole (only its
-- feed directory moved here), works: its last lines stop the pipeline and
-- run_once() it right away.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS sluice CASCADE;
RESET client_min_messages;
\! rm -rf /tmp/sluice_regress/readme && mkdir -p /tmp/sluice_regress/readme
\! perl test/gen_bank.pl /tmp/sluice_regress/readme/bank 3 100 1 7 >/dev/null
\! sed -n '/^## Getting started/,/^## /p' README.md | sed -n '/^```sql$/,/^```$/p' | sed '1d;$d' | sed 's|/srv/feeds/bank|/tmp/sluice_regress/readme/bank|' > /tmp/sluice_regress/readme/block.sql
-- the block prints pids and times: keep its output, not its errors, out of the way
\o /dev/null
\set ON_ERROR_STOP on
\i /tmp/sluice_regress/readme/block.sql
\unset ON_ERROR_STOP
\o
SELECT name, state, batches, input_rows, last_error FROM sluice.pipelines;
SELECT count(*) AS rows, count(DISTINCT transaction_id) AS ids FROM bank_transactions;

-- the same once the worker is surely up: run_once() waits for it to exit
\i test/regress/wait_until.sql
SELECT sluice.start('bank_ingest');
SELECT wait_until($$(SELECT worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = 'bank_ingest')$$);
\! perl test/gen_bank.pl /tmp/sluice_regress/readme/bank2 2 50 301 8 >/dev/null && mv /tmp/sluice_regress/readme/bank2/bank_00001.csv /tmp/sluice_regress/readme/bank/more_1.csv && mv /tmp/sluice_regress/readme/bank2/bank_00002.csv /tmp/sluice_regress/readme/bank/more_2.csv
SELECT sluice.stop('bank_ingest');
SELECT sluice.run_once('bank_ingest');
SELECT name, state, batches, input_rows, last_error FROM sluice.pipelines;
SELECT count(*) AS rows, count(DISTINCT transaction_id) AS ids FROM bank_transactions;
DROP FUNCTION wait_until(text);
SELECT sluice.drop_pipeline('bank_ingest');
DROP TABLE bank_transactions;
\! rm -rf /tmp/sluice_regress/readme

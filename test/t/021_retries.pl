# Transient failures are retried with exponential backoff (1 s, doubling,
# up to sluice.max_retry_delay), visible while they last in sluice.errors
# and in sluice.pipelines (last_error, attempts, next_retry_at), and a
# pipeline fails only past its max_retries.
#
# 1. A function sink raises serialization_failure (40001) until a flag is
#    set: the batch is tried again at growing intervals, at most 10 times in
#    30 s, then committed once when the flag is set.
# 2. With max_retries => 2, the third failure in a row fails the pipeline;
#    sluice.max_retry_delay caps the waits.
# 3. NOTIFY sluice_progress carries a JSON object for each committed,
#    retried and failed batch: the pipeline, the batch and its status, and
#    with sluice.notify_details its numbers and a failure's SQLSTATE; never
#    an error's text.
# 4. sluice.errors_retention prunes older errors.
# 5. A batch that fails among three workers is taken up at once by another
#    (SQLSTATE SL003 makes the one waiting for it give way), and the sink
#    still sees every batch once, in batch order.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use SluiceTest;

my $node = sluice_node('retries', "sluice.notify_details = on\n");
my $listener = start_session($node);
$listener->query('LISTEN sluice_progress;');

$node->safe_psql('postgres', q{
CREATE TABLE flag (ok boolean);
CREATE TABLE calls (batch_id bigint, n bigint);
CREATE FUNCTION flaky_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM flag WHERE ok) THEN
        RAISE EXCEPTION 'the sink is busy' USING ERRCODE = 'serialization_failure';
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', batch) INTO n;
    INSERT INTO calls VALUES (batch_id, n);
END $$;
});

# ---------------------------------------------------------------------------
# 1. backoff until the flag is set

my $dir = $node->basedir . '/flaky';
gen_files($dir, files => 1, rows => 10, prefix => 'flaky');
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('flaky',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS'),
  sluice.function_sink('flaky_sink(bigint, regclass)'), '100 milliseconds');
SELECT sluice.start('flaky');
});
my $failures = "SELECT count(*) FROM sluice.errors WHERE pipeline = 'flaky' AND sqlstate = '40001'";
wait_until($node, "SELECT ($failures) >= 1", 't', 'flaky: the first failure');
my $t0 = time();
sleep 1 while time() - $t0 < 20;
my $n = $node->safe_psql('postgres', $failures);
cmp_ok($n, '<=', 10, "flaky: $n attempts in 20 s, at most 10");
cmp_ok($n, '>=', 4, 'flaky: and tried again several times (1, 2, 4, 8 s apart)');
my @gaps = split /\n/, $node->safe_psql('postgres', qq{
SELECT round(extract(epoch FROM time - lag(time) OVER (ORDER BY time)) * 1000)
  FROM sluice.errors WHERE pipeline = 'flaky' AND sqlstate = '40001' ORDER BY time OFFSET 1});
note "gaps between attempts (ms): @gaps";
ok(@gaps >= 3 && $gaps[0] >= 900 && $gaps[1] >= 1.7 * $gaps[0] && $gaps[2] >= 1.7 * $gaps[1],
	'flaky: each wait about twice the one before');
is($node->safe_psql('postgres', qq{
SELECT state, last_error, attempts > 1, next_retry_at > now() - interval '1 second'
  FROM sluice.pipelines WHERE name = 'flaky'}),
	'running|the sink is busy|t|t', 'flaky: running, with the error, its attempts and the next try visible');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('flaky') WHERE status = 'planned'"),
	'1', 'flaky: the batch stays planned');

$node->safe_psql('postgres', 'INSERT INTO flag VALUES (true)');
wait_until($node, "SELECT batches FROM sluice.pipelines WHERE name = 'flaky'", '1', 'flaky: committed once the flag is set');
is($node->safe_psql('postgres', 'SELECT batch_id, n FROM calls'), '1|10', 'flaky: the sink ran once, with the batch');
is($node->safe_psql('postgres', "SELECT attempts IS NULL AND next_retry_at IS NULL FROM sluice.pipelines WHERE name = 'flaky'"),
	't', 'flaky: nothing waits once it committed');
like($node->safe_psql('postgres', "SELECT attempts FROM sluice.progress('flaky') WHERE batch_id = 1"),
	qr/^\d+$/, 'flaky: progress keeps the attempts');
$node->safe_psql('postgres', "SELECT sluice.stop('flaky')");
$node->safe_psql('postgres', 'TRUNCATE flag');

# ---------------------------------------------------------------------------
# 2. max_retries, and notifications without details
$node->safe_psql('postgres', "ALTER SYSTEM SET sluice.notify_details = off; ALTER SYSTEM SET sluice.max_retry_delay = '1s';"
	  . ' SELECT pg_reload_conf()');
wait_until($node, "SELECT current_setting('sluice.notify_details') || current_setting('sluice.max_retry_delay')", 'off1s',
	'notify_details off, max_retry_delay 1 s');

$dir = $node->basedir . '/limited';
gen_files($dir, files => 1, rows => 10, prefix => 'limited');
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('limited',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS'),
  sluice.function_sink('flaky_sink(bigint, regclass)'), '100 milliseconds', max_retries => 2);
SELECT sluice.start('limited');
});
wait_until($node, "SELECT state FROM sluice.pipelines WHERE name = 'limited'", 'failed', 'limited: the pipeline fails');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'limited' AND sqlstate = '40001'"),
	'3', 'limited: three failures: the first and two retries');
is($node->safe_psql('postgres', "SELECT detail FROM sluice.errors WHERE pipeline = 'limited' ORDER BY time DESC LIMIT 1"),
	"It failed 3 times in a row, and the pipeline's max_retries is 2.", 'limited: the last error says why it failed');
is($node->safe_psql('postgres', 'SELECT count(*) FROM calls'), '1', 'limited: nothing written (the one call is from flaky)');
my @limited_gaps = split /\n/, $node->safe_psql('postgres', qq{
SELECT round(extract(epoch FROM time - lag(time) OVER (ORDER BY time)) * 1000)
  FROM sluice.errors WHERE pipeline = 'limited' AND sqlstate = '40001' ORDER BY time OFFSET 1});
note "limited: gaps (ms): @limited_gaps";
ok(@limited_gaps == 2 && $limited_gaps[0] >= 900 && $limited_gaps[1] >= 900 && $limited_gaps[1] < 1500,
	'limited: sluice.max_retry_delay (1 s) caps the wait that would have been 2 s');
# ---------------------------------------------------------------------------
# 3. the notifications of both pipelines

my @notes;
my $got = $listener->query('SELECT 1;');
while ($got =~ /^Asynchronous notification "sluice_progress" with payload "(.*)" received from server process with PID \d+\.$/mg)
{
	push @notes, $1;
}
note scalar(@notes) . ' notifications';
my @json = map { eval { decode_json($_) } } @notes;
is(scalar(@json), scalar(@notes), 'notify: every payload is JSON');
cmp_ok((sort { $b <=> $a } map { length } @notes)[0], '<', 8000, 'notify: every payload under 8,000 bytes');
my @retrying = grep { $_->{pipeline} eq 'flaky' && $_->{status} eq 'retrying' } @json;
cmp_ok(scalar(@retrying), '>=', 4, 'notify: a retrying notification for each failure of flaky');
is_deeply([ sort keys %{ $retrying[0] } ], [qw(batch_id error pipeline status)], 'notify: retrying has batch_id, error, pipeline, status');
is($retrying[0]{error} . ' ' . $retrying[0]{batch_id}, '40001 1', 'notify: the error is the SQLSTATE, of batch 1');
my @committed = grep { $_->{pipeline} eq 'flaky' && $_->{status} eq 'committed' } @json;
is(scalar(@committed), 1, 'notify: one committed notification for flaky');
is_deeply([ sort keys %{ $committed[0] } ], [qw(batch_id duration_ms input_rows pipeline status watermark)],
	'notify: committed has batch_id, duration_ms, input_rows, pipeline, status, watermark');
is(join(' ', $committed[0]{batch_id}, $committed[0]{input_rows}, $committed[0]{duration_ms} > 0 ? 'positive' : 'zero',
		defined $committed[0]{watermark} ? 'watermark' : 'null'),
	'1 10 positive null', 'notify: batch 1, 10 rows, its duration, no watermark (no event time)');
my @failed = grep { $_->{pipeline} eq 'limited' && $_->{status} eq 'failed' } @json;
is(scalar(@failed), 1, 'notify: one failed notification for limited');
is_deeply([ sort keys %{ $failed[0] } ], [qw(batch_id pipeline status)],
	'notify: without sluice.notify_details, the pipeline, batch and status only');
is(scalar(grep { $_->{pipeline} eq 'limited' && $_->{status} eq 'retrying' } @json), 2,
	'notify: and a retrying one for each of its two retries');
is(scalar(grep { /busy/ } @notes), 0, 'notify: no error message in any payload');
$listener->quit;

# ---------------------------------------------------------------------------
# 4. sluice.errors_retention: the launcher deletes older errors

my $flaky_id = $node->safe_psql('postgres', "SELECT id FROM sluice.pipeline WHERE name = 'flaky'");
$node->safe_psql('postgres', qq{
INSERT INTO sluice.error (pipeline_id, sqlstate, message, at) VALUES ($flaky_id, '40001', 'an old one', now() - interval '2 hours');
ALTER SYSTEM SET sluice.errors_retention = '1h';
});
$node->restart;    # the launcher prunes at its first look, then once a minute
wait_until($node, "SELECT count(*) FROM sluice.errors WHERE message = 'an old one'", '0', 'retention: the old error is gone');
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'flaky'"), '>=', 4,
	'retention: the recent ones stay');

# ---------------------------------------------------------------------------
# 5. a batch fails among three workers: another worker takes it up at once,
#    and later batches still commit after it, each once

$dir = $node->basedir . '/orphan';
gen_files($dir, files => 8, rows => 10, prefix => 'orphan');
$node->safe_psql('postgres', q{
CREATE SEQUENCE once;
CREATE TABLE orphan_calls (batch_id bigint, n bigint, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION once_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF batch_id = 2 AND nextval('once') = 1 THEN    -- a sequence: the rollback does not undo it
        RAISE EXCEPTION 'batch 2 fails once' USING ERRCODE = 'serialization_failure';
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', batch) INTO n;
    INSERT INTO orphan_calls (batch_id, n) VALUES (batch_id, n);
END $$;
});
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('orphan',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.function_sink('once_sink(bigint, regclass)'), '0 seconds',
  transform => 'SELECT b.* FROM batch AS b CROSS JOIN (SELECT pg_sleep(0.2)) AS s',
  backpressure => false, min_workers => 3, max_workers => 3);
SELECT sluice.start('orphan');
});
wait_until($node, "SELECT batches FROM sluice.pipelines WHERE name = 'orphan'", '8', 'orphan: 8 batches');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT batch_id), sum(n) FROM orphan_calls'), '8|8|80',
	'orphan: the sink took every batch once');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'orphan' AND batch_id = 2 AND sqlstate = '40001'"),
	'1', 'orphan: batch 2 failed once');
is($node->safe_psql('postgres', "SELECT attempts > 1 FROM sluice.progress('orphan') WHERE batch_id = 2"), 't',
	'orphan: and was tried again');
cmp_ok($node->safe_psql('postgres', qq{
SELECT round(extract(epoch FROM (SELECT at FROM orphan_calls WHERE batch_id = 2)
                               - (SELECT time FROM sluice.errors WHERE pipeline = 'orphan' AND batch_id = 2)) * 1000)}),
	'<', 900, 'orphan: another worker took it up at once, not after the failed worker\'s 1 s backoff');
is($node->safe_psql('postgres', 'SELECT count(*) FROM (SELECT at < lag(at) OVER (ORDER BY batch_id) AS back FROM orphan_calls) AS o WHERE back'),
	'0', 'orphan: the sink saw the batches in batch order');
$node->safe_psql('postgres', "SELECT sluice.stop('orphan')");

my ($ret, $out, $err) = $node->psql('postgres', q{SELECT sluice.create_pipeline('neg',
  sluice.csv_source('/tmp', 'id int'), sluice.function_sink('flaky_sink(bigint, regclass)'), max_retries => -1)});
like($err, qr/max_retries of pipeline "neg" must not be negative/, 'a negative max_retries is refused');

$node->stop;
done_testing();

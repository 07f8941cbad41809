# Several workers per pipeline, and the autoscaler that sizes them.
#
# 1. A burst of 240 one-file batches on a merge pipeline with max_workers 3:
#    the launcher adds workers one at a time while the backlog persists,
#    drains it with 3, and goes back to min_workers once idle, within 90 s;
#    every change is an event in sluice.errors; the table equals the serial
#    result and batches committed in batch order while they ran side by side.
# 2. Merge order with 3 workers whose batches take random times to stage:
#    the last row of each key in file order wins, as with one worker.
# 3. A worker killed (SIGKILL) among three, mid-batch: the server restarts,
#    three workers come back, every row is there once.  alter_pipeline()
#    then takes the pipeline down to one worker.
# 4. A Kafka pipeline with two workers: every message once, and each batch
#    starts every partition where the batch before it that read the
#    partition ended.
# 5. A window pipeline with three workers writes the same windows and late
#    rows, batch by batch with the same watermarks, as one worker.
# 6. A pipeline that holds every slot gives one up to a pipeline that has
#    none, and takes it back when that one stops.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use KafkaMock;

my $node = sluice_node('autoscale', "sluice.max_workers = 6\n");

# batches in order: none committed before the one before it
sub committed_in_order
{
	my ($name) = @_;
	return $node->safe_psql('postgres', qq{
SELECT count(*) FILTER (WHERE committed_at < prev), count(*) FILTER (WHERE planned_at < prev)
  FROM (SELECT committed_at, planned_at, lag(committed_at) OVER (ORDER BY batch_id) AS prev
          FROM sluice.progress('$name', 100000)) AS b});
}

sub events
{
	my ($name) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(message, E'\\n' ORDER BY time) FROM sluice.errors"
		  . " WHERE pipeline = '$name' AND sqlstate = '00000'");
}

# ---------------------------------------------------------------------------
# 1. the burst

my $dir = $node->basedir . '/burst';
my @paths = gen_files($dir, files => 240, rows => 40, prefix => 'burst', seed => 7);
my $serial = join("\n", @{ last_per_customer([ csv_rows(@paths) ]) });

$node->safe_psql('postgres', qq{
CREATE TABLE t_burst (customer int PRIMARY KEY, id bigint, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('burst',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.merge_sink('t_burst', ARRAY['customer']), '200 milliseconds',
  min_workers => 1, max_workers => 3);
});
my $start = time();
$node->safe_psql('postgres', "SELECT sluice.start('burst')");
my ($most, $drained_at) = (0, undef);
while (time() - $start < 90)
{
	my ($workers, $batches) = split /\|/,
	  $node->safe_psql('postgres', "SELECT workers, batches FROM sluice.pipelines WHERE name = 'burst'");
	$most = $workers if $workers > $most;
	$drained_at //= time() - $start if $batches == 240;
	last if defined $drained_at && $workers == 1 && $most == 3;
	usleep(100_000);
}
my $took = time() - $start;
note "drained after ${drained_at}s, back to one worker after ${took}s";
is($most, 3, 'burst: the pipeline grew to 3 workers');
ok(defined $drained_at, 'burst: all 240 files committed');
is($node->safe_psql('postgres', "SELECT workers, desired_workers FROM sluice.pipelines WHERE name = 'burst'"),
	'1|1', 'burst: back to min_workers within 90 s');
is(events('burst'), join("\n",
		'pipeline "burst" scales up from 1 to 2 workers',
		'pipeline "burst" scales up from 2 to 3 workers',
		'pipeline "burst" scales down from 3 to 2 workers',
		'pipeline "burst" scales down from 2 to 1 worker'),
	'burst: exactly two steps up and two down, each an event');
like($node->safe_psql('postgres', "SELECT detail FROM sluice.errors WHERE pipeline = 'burst' AND sqlstate = '00000' ORDER BY time LIMIT 1"),
	qr/^A backlog of \d+ files waited at 3 looks in a row, 1000 ms apart, while its batches ran\.$/,
	'burst: the event says why');
is($node->safe_psql('postgres', "SELECT count(*), sum(files) FROM sluice.progress('burst', 1000) WHERE status = 'committed'"),
	'240|240', 'burst: 240 batches of one file');
my ($out_of_order, $overlapped) = split /\|/, committed_in_order('burst');
note "burst: $overlapped batches planned while the one before was in flight";
is($out_of_order, '0', 'burst: batches committed in batch order');
is($node->safe_psql('postgres', 'SELECT string_agg(concat_ws(\'|\', customer, id, amount, ts AT TIME ZONE \'UTC\' || \'+00\'), E\'\n\' ORDER BY customer) FROM t_burst'),
	$serial, 'burst: the table equals the serial result (last row of each customer)');
is($node->safe_psql('postgres', "SELECT last_error FROM sluice.pipelines WHERE name = 'burst'"), '',
	'burst: autoscale events are not errors');
$node->safe_psql('postgres', "SELECT sluice.stop('burst')");

# ---------------------------------------------------------------------------
# 2. merge order with 3 workers, batches staged in random times

$dir = $node->basedir . '/order';
@paths = gen_files($dir, files => 60, rows => 30, prefix => 'order', seed => 11);
# few keys: every batch overwrites keys of the batches before it
my @rows = map { [ $_->[0], $_->[1] % 20, $_->[2], $_->[3] ] } csv_rows(@paths);
$serial = join("\n", @{ last_per_customer(\@rows) });
$node->safe_psql('postgres', qq{
CREATE TABLE t_order (customer int PRIMARY KEY, id bigint, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('order',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.merge_sink('t_order', ARRAY['customer']), '0 seconds',
  transform => 'SELECT id, customer % 20 AS customer, amount, ts FROM batch CROSS JOIN (SELECT pg_sleep(random() * 0.1)) AS s',
  backpressure => false, min_workers => 3, max_workers => 3);
SELECT sluice.start('order');
});
wait_until($node, "SELECT batches FROM sluice.pipelines WHERE name = 'order'", '60', 'order: 60 batches');
is($node->safe_psql('postgres', "SELECT workers, desired_workers FROM sluice.pipelines WHERE name = 'order'"),
	'3|3', 'order: three workers');
($out_of_order, $overlapped) = split /\|/, committed_in_order('order');
is($out_of_order, '0', 'order: batches committed in batch order');
cmp_ok($overlapped, '>', 10, 'order: batches were staged side by side');
is($node->safe_psql('postgres', 'SELECT string_agg(concat_ws(\'|\', customer, id, amount, ts AT TIME ZONE \'UTC\' || \'+00\'), E\'\n\' ORDER BY customer) FROM t_order'),
	$serial, 'order: the table equals the serial result');
is(events('order'), '', 'order: min_workers = max_workers: nothing to scale');
$node->safe_psql('postgres', "SELECT sluice.stop('order')");

# ---------------------------------------------------------------------------
# 3. a worker killed among three

$dir = $node->basedir . '/kill';
@paths = gen_files($dir, files => 40, rows => 50, prefix => 'kill', seed => 13);
$node->safe_psql('postgres', qq{
CREATE TABLE t_kill (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('kill',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.append_sink('t_kill'), '0 seconds',
  transform => 'SELECT b.* FROM batch AS b CROSS JOIN (SELECT pg_sleep(0.3)) AS s',
  backpressure => false, min_workers => 3, max_workers => 3);
SELECT sluice.start('kill');
});
wait_until($node, "SELECT batches >= 6 AND workers = 3 FROM sluice.pipelines WHERE name = 'kill'", 't',
	'kill: three workers at work');
my ($pid, $held) = split /\|/, $node->safe_psql('postgres',
	"SELECT w.pid, w.current_batch FROM sluice._workers() AS w JOIN sluice.pipeline AS p ON p.id = w.pipeline_id"
	  . " WHERE p.name = 'kill' AND w.current_batch IS NOT NULL ORDER BY w.current_batch LIMIT 1");
ok($pid, "kill: worker $pid holds batch $held");
kill 'KILL', $pid;
wait_for_server($node);
wait_until($node, "SELECT batches FROM sluice.pipelines WHERE name = 'kill'", '40', 'kill: all 40 files after the crash');
check_table($node, 't_kill', \@paths, 'kill: every row once');
is($node->safe_psql('postgres', "SELECT attempts > 1 FROM sluice.progress('kill', 100) WHERE batch_id = $held"),
	't', 'kill: the batch the killed worker held was replayed');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('kill', 100) WHERE status = 'planned'"),
	'0', 'kill: no batch left planned');
wait_until($node, "SELECT workers FROM sluice.pipelines WHERE name = 'kill'", '3', 'kill: three workers again');
($out_of_order) = split /\|/, committed_in_order('kill');
is($out_of_order, '0', 'kill: batches committed in batch order');

# alter_pipeline() takes it down to one worker at once
$node->safe_psql('postgres', "SELECT sluice.alter_pipeline('kill', min_workers => 1, max_workers => 1)");
wait_until($node, "SELECT workers || '|' || desired_workers FROM sluice.pipelines WHERE name = 'kill'", '1|1',
	'kill: alter_pipeline() leaves one worker');
is(events('kill'), 'pipeline "kill" scales down from 3 to 1 worker', 'kill: the change is an event');
$node->safe_psql('postgres', "SELECT sluice.stop('kill')");

# ---------------------------------------------------------------------------
# 4. Kafka with two workers

my $kafka = KafkaMock->new($node->basedir);
my $brokers = $kafka->brokers;
$kafka->cmd('topic two 4');
my $next = 1;
for my $p (0 .. 3)
{
	my @lines = map { my $id = $next++; "$id,c$id" } 1 .. 500;
	is($kafka->produce('two', $p, \@lines), 500, "kafka: 500 messages into partition $p");
}
$node->safe_psql('postgres', qq{
CREATE TABLE t_two (id bigint, note text);
SELECT sluice.create_pipeline('two',
  sluice.kafka_source('$brokers', 'two', 'id bigint, note text', max_offsets_per_trigger => 100),
  sluice.append_sink('t_two'), '0 seconds',
  transform => 'SELECT b.* FROM batch AS b CROSS JOIN (SELECT pg_sleep(0.05)) AS s',
  backpressure => false, min_workers => 2, max_workers => 2);
SELECT sluice.start('two');
});
wait_until($node, 'SELECT count(*) FROM t_two', '2000', 'kafka: every message read');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM t_two'), '2000|2000', 'kafka: every message once');
is($node->safe_psql('postgres', "SELECT workers FROM sluice.pipelines WHERE name = 'two'"), '2', 'kafka: two workers');
is($node->safe_psql('postgres', qq{
SELECT count(*) FROM (
  SELECT s.key, (s.value::text)::bigint AS start,
         lag((e.value::text)::bigint) OVER (PARTITION BY s.key ORDER BY b.batch_id) AS prev_end
    FROM sluice.progress('two', 1000) AS b, jsonb_each(b.start_offset->'two') AS s,
         jsonb_each(b.end_offset->'two') AS e
   WHERE e.key = s.key AND (e.value::text)::bigint > (s.value::text)::bigint) AS x
 WHERE prev_end IS DISTINCT FROM start AND prev_end IS NOT NULL}), '0',
	'kafka: each batch starts each partition where the one before it ended');
($out_of_order, $overlapped) = split /\|/, committed_in_order('two');
is($out_of_order, '0', 'kafka: batches committed in batch order');
cmp_ok($overlapped, '>', 2, 'kafka: batches were read side by side');
$node->safe_psql('postgres', "SELECT sluice.stop('two')");

# ---------------------------------------------------------------------------
# 5. windows with three workers: the same windows and late rows as one worker

$dir = $node->basedir . '/win';
@paths = gen_files($dir, files => 30, rows => 40, prefix => 'win', seed => 17);
my $dir1 = $node->basedir . '/win1';
mkdir $dir1;
system('cp', '-p', @paths, $dir1) == 0 or die "cp: $?";
for my $w ('win3', 'win1')
{
	my ($wdir, $workers, $trigger) = $w eq 'win3' ? ($dir, 3, '0 seconds') : ($dir1, 1, 'available_now');
	$node->safe_psql('postgres', qq{
CREATE TABLE t_$w (window_start timestamptz, window_end timestamptz, customer int, total numeric, n bigint,
                   PRIMARY KEY (window_start, window_end, customer));
CREATE TABLE late_$w (batch_id bigint, watermark timestamptz, id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('$w',
  sluice.csv_source('$wdir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.window_sink('t_$w', '1 minute', NULL, '{customer}', '{sum(amount) AS total, count(*) AS n}', 'append', 'late_$w'),
  '$trigger',
  transform => 'SELECT id, customer % 3 AS customer, amount, ts - ((id * 7919) % 120) * interval ''1 second'' AS ts FROM batch',
  event_time => 'ts', watermark_delay => '30 seconds', backpressure => false,
  min_workers => $workers, max_workers => $workers);
});
}
$node->safe_psql('postgres', "SELECT sluice.start('win3')");
is($node->safe_psql('postgres', "SELECT sluice.run_once('win1')"), '30', 'windows: one worker, 30 batches');
wait_until($node, "SELECT batches FROM sluice.pipelines WHERE name = 'win3'", '30', 'windows: three workers, 30 batches');
is($node->safe_psql('postgres', "SELECT workers FROM sluice.pipelines WHERE name = 'win3'"), '3', 'windows: three workers');
my $windows = "SELECT count(*) || ' ' || md5(string_agg(concat_ws(',', window_start, customer, total, n), ';'"
  . " ORDER BY window_start, customer)) FROM t_";
my $late = "SELECT count(*) || ' ' || md5(string_agg(concat_ws(',', batch_id, watermark, id), ';' ORDER BY id)) FROM late_";
my $one = $node->safe_psql('postgres', "${windows}win1");
like($one, qr/^[1-9]\d* /, "windows: one worker wrote windows ($one)");
is($node->safe_psql('postgres', "${windows}win3"), $one, 'windows: three workers wrote the same windows');
my $one_late = $node->safe_psql('postgres', "${late}win1");
like($one_late, qr/^[1-9]\d* /, "windows: one worker kept late rows ($one_late)");
is($node->safe_psql('postgres', "${late}win3"), $one_late,
	'windows: three workers dropped the same late rows, in the same batches, with the same watermarks');
my $marks = "SELECT string_agg(concat_ws(',', batch_id, watermark, next_watermark), ';' ORDER BY batch_id) FROM sluice.progress";
is($node->safe_psql('postgres', "$marks('win3', 100)"), $node->safe_psql('postgres', "$marks('win1', 100)"),
	'windows: each batch ran with the watermark one worker gave it');
$node->safe_psql('postgres', "SELECT sluice.stop('win3')");
wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker'", '0',
	'windows: the workers are gone');

# ---------------------------------------------------------------------------
# 6. slots are shared: a pipeline that holds all 6 gives one to a pipeline
#    that has none

$dir = $node->basedir . '/hog';
gen_files($dir, files => 2, rows => 10, prefix => 'hog');
my $dir2 = $node->basedir . '/small';
gen_files($dir2, files => 2, rows => 10, prefix => 'small');
$node->safe_psql('postgres', qq{
CREATE TABLE t_hog (id bigint, customer int, amount numeric(12,2), ts timestamptz);
CREATE TABLE t_small (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('hog', sluice.csv_source('$dir', '$SluiceTest::COLUMNS'),
  sluice.append_sink('t_hog'), '1 second', min_workers => 6, max_workers => 6);
SELECT sluice.create_pipeline('small', sluice.csv_source('$dir2', '$SluiceTest::COLUMNS'),
  sluice.append_sink('t_small'), '1 second');
SELECT sluice.start('hog');
});
wait_until($node, "SELECT workers FROM sluice.pipelines WHERE name = 'hog'", '6', 'hog: all 6 slots');
$node->safe_psql('postgres', "SELECT sluice.start('small')");
wait_until($node, "SELECT workers FROM sluice.pipelines WHERE name = 'small'", '1', 'small: gets a worker');
is($node->safe_psql('postgres', "SELECT workers FROM sluice.pipelines WHERE name = 'hog'"), '5', 'hog: gave one up');
wait_until($node, 'SELECT count(*) FROM t_small', '20', 'small: reads its files');
sleep 2;
is($node->safe_psql('postgres', "SELECT workers || ' ' || desired_workers FROM sluice.pipelines WHERE name = 'hog'"),
	'5 6', 'hog: does not take the slot back while small runs');
# (a worker of win3 still exiting can hold a background worker slot when
# hog starts its sixth: that start waits, and says so in another warning)
is($node->safe_psql('postgres', "SELECT string_agg(message, E'\\n') FROM sluice.errors"
	. " WHERE pipeline = 'hog' AND sqlstate = '01000' AND message LIKE '%workers it wants'"),
	'pipeline "hog" runs 5 of the 6 workers it wants', 'hog: says so, once');
$node->safe_psql('postgres', "SELECT sluice.stop('small')");
wait_until($node, "SELECT workers FROM sluice.pipelines WHERE name = 'hog'", '6', 'hog: takes the slot once small stopped');
$node->safe_psql('postgres', "SELECT sluice.stop('hog')");

$node->stop;
done_testing();

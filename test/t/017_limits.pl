# Limits per trigger: a CSV source's max_bytes_per_trigger (as Spark's
# maxBytesPerTrigger: files oldest first while they fit, but always one),
# a Kafka source's max_rate_per_partition (messages a second per partition,
# times the trigger interval, bounds every batch), and min_offsets_per_trigger
# with max_trigger_delay (a batch waits for enough messages, but not longer
# than the delay since the last batch).  Then run_once planning each batch
# in the transaction of the one before.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use KafkaMock;

my $node = sluice_node('limits');

# ---------------------------------------------------------------------------
# 1. max_bytes_per_trigger over files of different sizes, one larger than the
# limit: each batch takes the oldest files while their total fits

my $dir = $node->basedir . '/bytes';
my @paths;
my $n = 0;
for my $rows (40, 40, 10, 300, 20, 20, 20, 5, 60)
{
	push @paths, gen_files($dir, files => 1, rows => $rows, first_id => 1 + 1000 * $n,
		prefix => sprintf('f%02d', $n), mtime_base => time() - 86400 + 60 * $n);
	$n++;
}
my @sizes = map { -s $_ } @paths;
my $limit = $sizes[0] + $sizes[1] + $sizes[2] + 1;    # the first three files fit, not a fourth
note "file sizes: @sizes; limit $limit";
die 'the fourth file must exceed the limit' unless $sizes[3] > $limit;

# what the batches must be: oldest first, while the total fits, at least one
my @expected;
my ($files, $bytes) = (0, 0);
for my $s (@sizes)
{
	if ($files > 0 && $bytes + $s > $limit)
	{
		push @expected, "$files:$bytes";
		($files, $bytes) = (0, 0);
	}
	$files++;
	$bytes += $s;
}
push @expected, "$files:$bytes";

$node->safe_psql('postgres', qq{
CREATE TABLE t_bytes (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('bytes',
  sluice.csv_source('$dir', 'id bigint, customer int, amount numeric(12,2), ts timestamptz',
                    max_bytes_per_trigger => $limit),
  sluice.append_sink('t_bytes'), 'available_now');
});
is($node->safe_psql('postgres', "SELECT sluice.run_once('bytes')"), scalar(@expected),
	'max_bytes_per_trigger: run_once drains the directory in as many batches as expected');
is($node->safe_psql('postgres', "SELECT string_agg(files || ':' || bytes, ' ' ORDER BY batch_id) FROM sluice.progress('bytes', 100)"),
	"@expected", 'max_bytes_per_trigger: each batch takes the oldest files while they fit, and a larger file alone');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('bytes', 100) WHERE bytes > $limit AND files > 1"),
	'0', 'max_bytes_per_trigger: no batch of several files goes over the limit');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM t_bytes'),
	'515|515', 'max_bytes_per_trigger: every row once');

# ---------------------------------------------------------------------------
# 2. max_rate_per_partition bounds every batch of a running pipeline

my $kafka = KafkaMock->new($node->basedir);
my $brokers = $kafka->brokers;
my $next_id = 1;

sub produce_ids
{
	my ($topic, $p, $count) = @_;
	my @lines = map { my $id = $next_id++; "$id,c$id" } 1 .. $count;
	is($kafka->produce($topic, $p, \@lines), $count, "$topic: $count messages into partition $p");
	return;
}

sub kafka_pipeline
{
	my ($name, $topic, $trigger, $opts) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLE t_$name (id bigint, note text);
SELECT sluice.create_pipeline('$name',
  sluice.kafka_source('$brokers', '$topic', 'id bigint, note text', $opts),
  sluice.append_sink('t_$name'), '$trigger', backpressure => false);  -- the test counts what batches take
SELECT sluice.start('$name');
});
	return;
}

$kafka->cmd('topic rate 2');
produce_ids('rate', $_, 300) for 0 .. 1;
# 50 messages a second and a batch every 200 ms: at most 10 per partition a batch
kafka_pipeline('rate', 'rate', '200 milliseconds', 'max_rate_per_partition => 50');
my $offsets = "SELECT coalesce(sum(o.next_offset), 0) FROM sluice.kafka_offset o"
  . " JOIN sluice.pipeline p ON p.id = o.pipeline_id WHERE p.name = ";
wait_until($node, "$offsets 'rate'", '600', 'rate: every message read');
my $per_partition = "SELECT max((e.value::text)::bigint - (s.value::text)::bigint)"
  . " FROM sluice.progress('rate', 1000) AS b, jsonb_each(b.start_offset->'rate') AS s,"
  . " jsonb_each(b.end_offset->'rate') AS e WHERE e.key = s.key";
is($node->safe_psql('postgres', $per_partition), '10', 'rate: no batch takes more than 10 messages of a partition');
is($node->safe_psql('postgres', "SELECT count(*) >= 30 FROM sluice.progress('rate', 1000)"),
	't', 'rate: 600 messages took at least 30 batches');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM t_rate'),
	'600|600', 'rate: every message once');

# alter_pipeline(): the running worker takes a new rate at its next plan
$node->safe_psql('postgres', "SELECT sluice.alter_pipeline('rate', max_rate_per_partition => 500)");
my $last = $node->safe_psql('postgres', "SELECT max(batch_id) FROM sluice.progress('rate', 1)");
produce_ids('rate', $_, 300) for 0 .. 1;
wait_until($node, "$offsets 'rate'", '1200', 'rate: the new messages read');
is($node->safe_psql('postgres', "$per_partition AND b.batch_id > $last"), '100',
	'rate: after alter_pipeline a batch takes up to 100 messages of a partition (500 a second, 200 ms)');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM t_rate'),
	'1200|1200', 'rate: every message once');

# ---------------------------------------------------------------------------
# 3. min_offsets_per_trigger with max_trigger_delay

$kafka->cmd('topic few 1');
kafka_pipeline('few', 'few', '100 milliseconds',
	"min_offsets_per_trigger => 100, max_trigger_delay => '3 seconds'");
my $batches = "SELECT count(*) FROM sluice.progress('few', 1000)";
# the first plan starts the partition at its end (nothing there yet)
wait_until($node, "SELECT count(*) FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id"
	  . " WHERE p.name = 'few'", '1', 'few: the partition seen');
produce_ids('few', 0, 30);
sleep 1;
is($node->safe_psql('postgres', $batches), '0', 'few: 30 messages of the 100 asked for wait');
produce_ids('few', 0, 80);
wait_until($node, $batches, '1', 'few: a batch once 110 are there');
is($node->safe_psql('postgres', "SELECT input_rows FROM sluice.progress('few', 1)"), '110',
	'few: the batch takes all 110');
produce_ids('few', 0, 5);
my $t0 = $node->safe_psql('postgres', "SELECT extract(epoch FROM planned_at) FROM sluice.progress('few', 1)");
wait_until($node, $batches, '2', 'few: 5 messages go once the delay has passed');
my $waited = $node->safe_psql('postgres', "SELECT extract(epoch FROM planned_at) - $t0 FROM sluice.progress('few', 1)");
cmp_ok($waited, '>=', 3, "few: the second batch was planned 3 s or more after the first ($waited s)");
cmp_ok($waited, '<', 10, 'few: and not much later');
is($node->safe_psql('postgres', 'SELECT count(*), count(DISTINCT id) FROM t_few'),
	'115|115', 'few: every message once');

# run_once never waits for min_offsets_per_trigger
produce_ids('few', 0, 7);
$node->safe_psql('postgres', "SELECT sluice.stop('few')");
is($node->safe_psql('postgres', "SELECT sluice.run_once('few')"), '1', 'few: run_once reads the 7 at once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t_few'), '122', 'few: all 122 there');

# ---------------------------------------------------------------------------
# run_once plans each batch in the transaction of the one before it: a drain
# of N one-file batches commits about N + 1 transactions (and the worker's
# few of its own), not 2N; a source that archives its files plans apart
my %ahead;
for my $after ('keep', 'archive')
{
	my $name = "ahead_$after";
	my $adir = $node->basedir . "/$name";
	gen_files($adir, files => 12, rows => 50, first_id => 1, prefix => 'a');
	mkdir $node->basedir . "/${name}_done";
	create_csv_pipeline($node, $name, $adir, "${name}_t", max_files => 1,
		$after eq 'archive' ? (extra => ", after => 'archive', archive_dir => '" . $node->basedir . "/${name}_done'") : ());
	# (each psql session's own commits reach the counters when it exits)
	my $commits = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()";
	my $c0 = $node->safe_psql('postgres', $commits);
	is($node->safe_psql('postgres', "SELECT sluice.run_once('$name')"), '12', "$name: 12 batches");
	$ahead{$after} = $node->safe_psql('postgres', $commits) - $c0;
	note "$name: $ahead{$after} transactions committed";
	is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT id) FROM ${name}_t"), '600|600',
		"$name: every row once");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('$name', 100)"
			  . " WHERE status = 'committed' AND attempts = 1 AND files = 1"), '12', "$name: each batch once, one file");
}
# crashed before the commit that holds a batch and the plan of the next, and
# after it: run_once again until the files are in, every row once
for my $stage ('before_commit', 'after_commit')
{
	my $name = "ahead_crash_$stage";
	my $cdir = $node->basedir . "/$name";
	gen_files($cdir, files => 4, rows => 50, first_id => 1, prefix => 'c');
	create_csv_pipeline($node, $name, $cdir, "${name}_t", max_files => 1);
	set_crash_at($node, $stage);
	my $offset = log_size($node);
	my $committed = "SELECT count(*) FROM sluice.progress('$name', 100) WHERE status = 'committed'";
	for my $try (1 .. 10)
	{
		$node->psql('postgres', "SELECT sluice.run_once('$name')");
		wait_for_server($node);
		last if $node->safe_psql('postgres', $committed) eq '4';
	}
	set_crash_at($node, '');
	cmp_ok(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset), '>=', 2, "$name: the worker killed itself");
	is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT id) FROM ${name}_t"), '200|200',
		"$name: every row once");
	is($node->safe_psql('postgres', "SELECT count(*), sum(files) FROM sluice.progress('$name', 100)"), '4|4',
		"$name: 4 batches of one file each, all committed");
	is($node->safe_psql('postgres', $committed), '4', "$name: all committed");
}

cmp_ok($ahead{archive}, '>=', 2 * 12, 'a source that archives: a plan and a commit a batch');
cmp_ok($ahead{archive} - $ahead{keep}, '>=', 8,
	'a source that keeps its files: fewer commits for 12 batches (11 fewer, less what other sessions, as the launcher, commit meanwhile)');

$node->stop;
$kafka->stop;
done_testing();

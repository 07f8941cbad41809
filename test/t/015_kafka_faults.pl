# A Kafka source against faults of the cluster (librdkafka's mock cluster,
# test/kafka_mock): a broker down for several seconds mid-stream, a leader
# change, aborted transactions, messages lost to retention with either
# setting of fail_on_data_loss, two PostgreSQL servers splitting one
# topic by partitions, and a partition added while the pipeline runs.  Each time every message that is on the brokers ends
# up in the target exactly once, and nothing is skipped silently.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use KafkaMock;

my $node = sluice_node('kafka_faults');
my $kafka = KafkaMock->new($node->basedir);
my $brokers = $kafka->brokers;
my $next_id = 1;
my $pad = 'x' x 100;

# $n messages for partition $p of $topic, ids from $next_id; returns the ids
sub messages
{
	my ($n, %o) = @_;
	my @ids = map { $next_id++ } 1 .. $n;
	return (\@ids, [ map { "$_,c" . ($_ % 97) . ',' . ($o{fat} ? $pad : '1.25') } @ids ]);
}

sub produce_ids
{
	my ($topic, $p, $n, %o) = @_;
	my ($ids, $lines) = messages($n, %o);
	is($kafka->produce($topic, $p, $lines, $o{txn}), $n,
		"$topic: $n messages into partition $p" . ($o{txn} ? " in a transaction, then $o{txn}" : ''));
	return @$ids;
}

sub create_kafka_pipeline
{
	my ($node, $name, $topic, %o) = @_;
	my $opts = join('', map { ", $_ => $o{$_}" } grep { $_ ne 'trigger' } sort keys %o);
	$node->safe_psql('postgres', qq{
CREATE TABLE IF NOT EXISTS t_$name (id bigint, customer text, note text);
SELECT sluice.create_pipeline('$name',
  sluice.kafka_source('$brokers', '$topic', 'id bigint, customer text, note text'$opts),
  sluice.append_sink('t_$name'), '} . ($o{trigger} // '100 milliseconds') . "');");
	return;
}

sub rows_are
{
	my ($node, $table, $ids, $what) = @_;
	my $n = scalar @$ids;
	my $sum = 0;
	$sum += $_ for @$ids;
	is($node->safe_psql('postgres', "SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || coalesce(sum(id), 0) FROM $table"),
		"$n $n $sum", "$what: every message exactly once ($n rows)");
	return;
}

sub offsets_sum
{
	my ($node, $name) = @_;
	return $node->safe_psql('postgres', "SELECT coalesce(sum(o.next_offset), 0) FROM sluice.kafka_offset o"
		  . " JOIN sluice.pipeline p ON p.id = o.pipeline_id WHERE p.name = '$name'");
}

# ---------------------------------------------------------------------------
# 1. A broker down for several seconds mid-stream, then back

$kafka->cmd('topic faults 3');
my @ids;
push @ids, produce_ids('faults', $_, 3000) for 0 .. 2;
# at most 100 messages a batch, 5 batches a second: 9,000 messages take some 18 s
create_kafka_pipeline($node, 'k_down', 'faults', max_offsets_per_trigger => 100, trigger => '200 milliseconds');
$node->safe_psql('postgres', "SELECT sluice.start('k_down')");
$node->poll_query_until('postgres',
	"SELECT sum(o.next_offset) > 600 FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id"
	  . " WHERE p.name = 'k_down'")
  or die 'k_down did not start reading';
$kafka->cmd('down 1');
my $down_at = time();
note 'broker 1 down';
sleep 2;
my $during = offsets_sum($node, 'k_down');
sleep 4;
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'k_down'"), 'running',
	'broker down: the pipeline stays running');
cmp_ok($node->safe_psql('postgres', "SELECT files_pending FROM sluice.pipelines WHERE name = 'k_down'"), '>', 0,
	'broker down: its lag is visible');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'k_down'"), '0',
	'broker down: no failure recorded');
cmp_ok(offsets_sum($node, 'k_down'), '<', 9000, 'broker down: the pipeline has not read everything');
$kafka->cmd('up 1');
note sprintf('broker 1 up again after %.1f s', time() - $down_at);
wait_until($node, "SELECT sum(o.next_offset) = 9000 FROM sluice.kafka_offset o JOIN sluice.pipeline p"
	  . " ON p.id = o.pipeline_id WHERE p.name = 'k_down'", 't', 'broker back: the pipeline reads to the end');
rows_are($node, 't_k_down', \@ids, 'broker down and back');

# ---------------------------------------------------------------------------
# 2. A leader change mid-stream

push @ids, produce_ids('faults', $_, 1000) for 0 .. 2;
$kafka->cmd("leader faults $_ " . (($_ + 1) % 3 + 1)) for 0 .. 2;
note 'each partition has a new leader';
push @ids, produce_ids('faults', $_, 1000) for 0 .. 2;
wait_until($node, "SELECT sum(o.next_offset) = 15000 FROM sluice.kafka_offset o JOIN sluice.pipeline p"
	  . " ON p.id = o.pipeline_id WHERE p.name = 'k_down'", 't', 'leader change: the pipeline reads to the end');
rows_are($node, 't_k_down', \@ids, 'leader change');
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'k_down'"), 'running',
	'leader change: the pipeline is running');
$node->safe_psql('postgres', "SELECT sluice.stop('k_down')");

# ---------------------------------------------------------------------------
# 3. Aborted transactions are never read

$kafka->cmd('topic txn 1');
my @committed = produce_ids('txn', 0, 100, txn => 'commit');
my @aborted = produce_ids('txn', 0, 100, txn => 'abort');
push @committed, produce_ids('txn', 0, 100, txn => 'commit');
push @committed, produce_ids('txn', 0, 100);
create_kafka_pipeline($node, 'k_txn', 'txn');
is($node->safe_psql('postgres', "SELECT sluice.run_once('k_txn')"), '1', 'transactions: one batch');
rows_are($node, 't_k_txn', \@committed, 'transactions: the committed and plain messages');
is($node->safe_psql('postgres', "SELECT count(*) FROM t_k_txn WHERE id BETWEEN $aborted[0] AND $aborted[-1]"), '0',
	'transactions: none of the aborted transaction');
push @aborted, produce_ids('txn', 0, 50, txn => 'abort');
is($node->safe_psql('postgres', "SELECT sluice.run_once('k_txn')"), '0',
	'transactions: an aborted transaction at the end makes no batch');

# ---------------------------------------------------------------------------
# 4. Messages lost to retention (the mock keeps about 5 MB per partition),
# with fail_on_data_loss true and false

$kafka->cmd('topic loss 1');
my @first = produce_ids('loss', 0, 1000, fat => 1);
create_kafka_pipeline($node, 'k_strict', 'loss');
create_kafka_pipeline($node, 'k_lenient', 'loss', fail_on_data_loss => 'false');
$node->safe_psql('postgres', "SELECT sluice.run_once('k_strict'), sluice.run_once('k_lenient')");
rows_are($node, 't_k_strict', \@first, 'data loss: before, the strict pipeline');
rows_are($node, 't_k_lenient', \@first, 'data loss: before, the lenient pipeline');
my @flood;
push @flood, produce_ids('loss', 0, 20000, fat => 1) for 1 .. 4;
my $low;
my ($out) = '';
IPC::Run::run([ 'kcat', '-C', '-b', $brokers, '-t', 'loss', '-p', '0', '-o', 'beginning', '-c', '1', '-e', '-q', '-f', '%o\n' ],
	'>', \$out, '2>', \my $kerr);
chomp($low = $out);
cmp_ok($low, '>', 1000, "data loss: retention took offsets 0 to " . ($low - 1));

my ($rc, $stdout, $err) = $node->psql('postgres', "SELECT sluice.run_once('k_strict')");
isnt($rc, 0, 'data loss, fail_on_data_loss: run_once fails');
like($err, qr/offsets 1000 to @{[ $low - 1 ]} of partition 0 of Kafka topic "loss" are no longer on the brokers/,
	'data loss, fail_on_data_loss: the error names the partition and the missing range');
is($node->safe_psql('postgres',
		"SELECT state || ' ' || (SELECT count(*) FROM sluice.errors WHERE pipeline = 'k_strict' AND sqlstate = 'XX001')"
		  . " FROM sluice.pipeline WHERE name = 'k_strict'"),
	'failed 1', 'data loss, fail_on_data_loss: the pipeline is failed, with the error in sluice.errors');
rows_are($node, 't_k_strict', \@first, 'data loss, fail_on_data_loss: nothing read past the gap');

is($node->safe_psql('postgres', "SELECT sluice.run_once('k_lenient') > 0"), 't',
	'data loss, without fail_on_data_loss: run_once goes on');
my @kept = grep { $_ - $first[0] >= $low } (@first, @flood);
rows_are($node, 't_k_lenient', [ @first, @kept ], 'data loss, without fail_on_data_loss: what is left on the brokers');
is($node->safe_psql('postgres', "SELECT message FROM sluice.errors WHERE pipeline = 'k_lenient'"),
	"offsets 1000 to @{[ $low - 1 ]} of partition 0 of Kafka topic \"loss\" were lost: skipped @{[ $low - 1000 ]} messages",
	'data loss, without fail_on_data_loss: a warning says how many messages were skipped');

# ---------------------------------------------------------------------------
# 5. Two servers split one topic: each reads its partitions exactly once,
# together they hold every message once

my $node2 = sluice_node('kafka_faults2');
$kafka->cmd('topic split 4');
my @split;
push @split, produce_ids('split', $_, 500) for 0 .. 3;
create_kafka_pipeline($node, 'k_half', 'split', partitions => "'{0,1}'");
create_kafka_pipeline($node2, 'k_half', 'split', partitions => "'{2,3}'");
$node->safe_psql('postgres', "SELECT sluice.start('k_half')");
$node2->safe_psql('postgres', "SELECT sluice.start('k_half')");
push @split, produce_ids('split', $_, 500) for 0 .. 3;
$node2->stop('immediate');
$node2->start;
push @split, produce_ids('split', $_, 500) for 0 .. 3;
my $half_offsets = "SELECT sum(o.next_offset) FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id"
  . " WHERE p.name = 'k_half'";
wait_until($node, $half_offsets, '3000', 'split: server 1 read its partitions');
wait_until($node2, $half_offsets, '3000', 'split: server 2 read its partitions');
my @one = split /\n/, $node->safe_psql('postgres', 'SELECT id FROM t_k_half');
my @two = split /\n/, $node2->safe_psql('postgres', 'SELECT id FROM t_k_half');
my %seen;
$seen{$_}++ for @one, @two;
is(scalar(@one) + scalar(@two), scalar(@split), 'split: as many rows on both servers as messages');
is(scalar(grep { ($seen{$_} // 0) == 1 } @split), scalar(@split), 'split: each message on exactly one server, once');
is($node->safe_psql('postgres', "SELECT string_agg(o.partition::text, ',' ORDER BY o.partition) FROM sluice.kafka_offset o"
		  . " JOIN sluice.pipeline p ON p.id = o.pipeline_id WHERE p.name = 'k_half'"),
	'0,1', 'split: server 1 keeps offsets of partitions 0 and 1 only');
is($node2->safe_psql('postgres', "SELECT string_agg(partition::text, ',' ORDER BY partition) FROM sluice.kafka_offset"),
	'2,3', 'split: server 2 keeps offsets of partitions 2 and 3 only');

$node2->stop;

# ---------------------------------------------------------------------------
# 6. A partition added while the pipeline runs is read from its earliest
# offset, whatever starting_offsets says (as Spark does).  The mock cannot add
# partitions: its proxy hides the third partition of the topic from the
# clients until it is "added".

# the pipelines of the sections above give their workers back first
$node->safe_psql('postgres', 'SELECT sluice.stop(name) FROM sluice.pipeline');
wait_until($node, 'SELECT count(worker_pid) FROM sluice.pipelines', '0', 'every earlier worker gone');
my $grow = KafkaMock->new($node->basedir, '-p');
$grow->cmd('topic grow 3');
$grow->cmd('partitions grow 2');
my $first = $kafka;    # still up until the end
$kafka = $grow;        # produce_ids produces here now
$brokers = $grow->brokers;
produce_ids('grow', $_, 500) for 0 .. 1;    # before the start: skipped ('latest')
create_kafka_pipeline($node, 'k_grow', 'grow', starting_offsets => "'latest'");
my $grow_partitions = "SELECT string_agg(o.partition || ':' || o.next_offset, ',' ORDER BY o.partition)"
  . " FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id WHERE p.name = 'k_grow'";
$node->safe_psql('postgres', "SELECT sluice.start('k_grow')");
wait_until($node, $grow_partitions, '0:500,1:500', 'grow: the first plan starts the two partitions shown at their end');
my @grow;
push @grow, produce_ids('grow', $_, 300) for 0 .. 1;
my @early = produce_ids('grow', 2, 400);    # on the brokers, not yet shown
wait_until($node, $grow_partitions, '0:800,1:800', 'grow: the two partitions read');
sleep 1;
is($node->safe_psql('postgres', $grow_partitions), '0:800,1:800', 'grow: a partition not shown is not read');
rows_are($node, 't_k_grow', \@grow, 'grow: before the partition is added');
$grow->cmd('partitions grow 3');
push @grow, @early;
push @grow, produce_ids('grow', $_, 100) for 0 .. 2;
wait_until($node, $grow_partitions, '0:900,1:900,2:500', 'grow: the added partition read from offset 0');
rows_are($node, 't_k_grow', \@grow, 'grow: after the partition is added');
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'k_grow'"),
	'running', 'grow: the pipeline never stopped');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('k_grow', 1000)"
		  . " WHERE end_offset->'grow' ? '2' AND NOT start_offset->'grow' ? '2'"), '0', 'grow: each batch that reads the new partition shows where it started');

$node->stop;
$grow->stop;
$first->stop;
done_testing();

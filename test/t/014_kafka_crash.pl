# A Kafka source through crashes, against librdkafka's mock cluster
# (test/kafka_mock).  First a worker that kills itself (SIGKILL, so the
# server crash-restarts) at each stage of a batch; then a running pipeline
# while messages keep arriving, through kill -9 of its worker and
# pg_ctl stop -m immediate.  Each time the target ends up with every message
# exactly once, and the stored offsets are where the topic ends.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use KafkaMock;

my $node = sluice_node('kafka_crash');
my $kafka = KafkaMock->new($node->basedir);
my $brokers = $kafka->brokers;
my $next_id = 1;

# $n messages per partition of $topic, ids going on from $next_id
sub produce_rows
{
	my ($topic, $partitions, $n) = @_;
	for my $p (0 .. $partitions - 1)
	{
		my @lines = map { my $id = $next_id++; "$id,c" . ($id % 97) . ',' . ($id % 1000) . '.25' } 1 .. $n;
		is($kafka->produce($topic, $p, \@lines), $n, "$topic: $n messages into partition $p");
	}
	return;
}

sub create_kafka_pipeline
{
	my ($name, $topic, $table, %o) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLE $table (id bigint, customer text, amount numeric(12,2));
SELECT sluice.create_pipeline('$name',
  sluice.kafka_source('$brokers', '$topic', 'id bigint, customer text, amount numeric(12,2)',
                      max_offsets_per_trigger => $o{max}),
  sluice.append_sink('$table'), '$o{trigger}', backpressure => false);  -- the test counts batches
});
	return;
}

# every message once: as many rows as messages, all ids distinct, the right sum
sub check_once
{
	my ($table, $first, $last, $what) = @_;
	my $n = $last - $first + 1;
	my $sum = ($first + $last) * $n / 2;
	is($node->safe_psql('postgres', "SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || sum(id) FROM $table"),
		"$n $n $sum", "$what: every message exactly once ($n rows, $n ids)");
	return;
}

# set_crash_at that goes on through crash restarts, which the setting itself causes
sub crash_at_anyway
{
	my ($stage) = @_;
	my $sql = $stage eq '' ? 'ALTER SYSTEM RESET sluice.crash_at' : "ALTER SYSTEM SET sluice.crash_at = '$stage'";
	for (1 .. 100)
	{
		wait_for_server($node);
		my ($rc) = $node->psql('postgres', $sql);
		last if $rc == 0;
		select(undef, undef, undef, 0.1);
	}
	poll_value($node, 'SELECT pg_reload_conf()');
	wait_until($node, 'SHOW sluice.crash_at', $stage, "sluice.crash_at is '$stage'");
	return;
}

sub offsets_at
{
	my ($name, $total) = @_;
	return "SELECT coalesce(sum(o.next_offset), 0) = $total FROM sluice.kafka_offset o"
	  . " JOIN sluice.pipeline p ON p.id = o.pipeline_id WHERE p.name = '$name'";
}

# ---------------------------------------------------------------------------
# 1. A crash at each stage of each batch

for my $stage (qw(after_plan after_read after_sink before_commit after_commit))
{
	my $topic = "bank_$stage";
	my $name = "k_$stage";
	my $first = $next_id;
	$kafka->cmd("topic $topic 4");
	produce_rows($topic, 4, 250);
	my $last = $next_id - 1;

	set_crash_at($node, $stage);
	my $offset = log_size($node);
	# 1,000 messages, at most 400 a batch: 3 batches
	create_kafka_pipeline($name, $topic, "t_$stage", max => 400, trigger => '200 milliseconds');
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");
	wait_until($node, offsets_at($name, 1000), 't', "$stage: the offsets reach the end of the topic");
	wait_for_log_count($node, qr/all server processes terminated; reinitializing/, 3, $offset);
	wait_for_log_count($node, qr/database system is ready to accept connections/, 3, $offset);
	wait_for_server($node);

	check_once("t_$stage", $first, $last, $stage);
	is(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset), 3,
		"$stage: the worker killed itself once per batch");
	my $attempts = $stage eq 'after_commit' ? 1 : 2;
	is($node->safe_psql('postgres',
			"SELECT string_agg(batch_id || ':' || status || ':' || attempts || ':' || input_rows, ' ' ORDER BY batch_id)"
			  . " FROM sluice.progress('$name', 100)"),
		"1:committed:$attempts:400 2:committed:$attempts:400 3:committed:$attempts:200",
		"$stage: 3 batches of 400, 400 and 200 messages, each committed once");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"),
		'0', "$stage: a crash is not recorded as an error");

	set_crash_at($node, '');
	$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
	wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		'0', "$stage: worker stopped");
}

# ---------------------------------------------------------------------------
# 2. A running pipeline while messages keep arriving, its batches dying at
# each stage in turn, and kill -9 of its worker and immediate stops of the
# server on top

$kafka->cmd('topic live 4');
my $first = $next_id;
create_kafka_pipeline('k_live', 'live', 't_live', max => 300, trigger => '100 milliseconds');
$node->safe_psql('postgres', "SELECT sluice.start('k_live')");
my $produced = 0;
my @stages = qw(after_plan after_read after_sink before_commit after_commit);
for my $round (1 .. 10)
{
	# the first attempt of each batch dies at this stage, while messages arrive
	crash_at_anyway($stages[($round - 1) % 5]);
	produce_rows('live', 4, 100);
	$produced += 400;
	# let it be in the middle of something
	select(undef, undef, undef, 0.05 + rand(0.3));
	if ($round % 2)
	{
		my $pid = poll_value($node,
			"SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'k_live'");
		kill 'KILL', $pid if $pid;
		note "round $round: kill -9 of worker $pid";
		wait_for_server($node);
	}
	else
	{
		$node->stop('immediate');
		$node->start;
		note "round $round: pg_ctl stop -m immediate, and start";
	}
}
crash_at_anyway('');
wait_until($node, offsets_at('k_live', $produced), 't', 'live: the offsets reach the end of the topic');
check_once('t_live', $first, $next_id - 1, 'live, through kill -9 and immediate stops');
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipeline WHERE name = 'k_live'"), 'running',
	'live: the pipeline is still running');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.batch WHERE status <> 'committed'"),
	'0', 'no batch left planned');

$node->stop;
$kafka->stop;
done_testing();

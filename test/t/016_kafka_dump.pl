# pg_dump / pg_restore of a database with a running Kafka pipeline, into a
# fresh cluster, against the same topic (librdkafka's mock cluster).  Its
# owner is a role to which a superuser granted EXECUTE on kafka_source(): the
# grant comes along.  In the new cluster the pipeline is running again by
# itself, from the offsets it had committed at the dump: the messages it had
# read are not read again, and those produced since arrive once.  A restore
# that loads the pipeline before its offsets does not read from the start
# meanwhile.  In the new cluster the owner then loses EXECUTE: the running
# worker, then the launcher, fail the pipeline, with the reason in
# sluice.errors.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use KafkaMock;

my $na = sluice_node('kdump_a');
my $kafka = KafkaMock->new($na->basedir);
my $brokers = $kafka->brokers;
my $work = PostgreSQL::Test::Utils::tempdir('work');
my $next_id = 1;

sub produce_rows
{
	my ($n) = @_;
	for my $p (0 .. 1)
	{
		my @lines = map { my $id = $next_id++; "$id,c$id" } 1 .. $n;
		$kafka->produce('dump', $p, \@lines);
	}
	return;
}

sub rows_once
{
	my ($node, $what) = @_;
	my $n = $next_id - 1;
	is($node->safe_psql('postgres', 'SELECT count(*) || \' \' || count(DISTINCT id) || \' \' || sum(id) FROM ks.t'),
		"$n $n " . ($n * ($n + 1) / 2), "$what: every message once ($n rows)");
	return;
}

$kafka->cmd('topic dump 2');
$na->safe_psql('postgres', qq{
CREATE ROLE kuser LOGIN;
GRANT EXECUTE ON FUNCTION sluice.kafka_source TO kuser;
CREATE SCHEMA ks AUTHORIZATION kuser;
SET ROLE kuser;
CREATE TABLE ks.t (id bigint, v text);
SELECT sluice.create_pipeline('kd', sluice.kafka_source('$brokers', 'dump', 'id bigint, v text'),
                              sluice.append_sink('ks.t'), '100 milliseconds');
SELECT sluice.start('kd');
});
produce_rows(500);
my $offsets = "SELECT coalesce(sum(o.next_offset), 0) FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id WHERE p.name = 'kd'";
wait_until($na, $offsets, '1000', 'A: the pipeline read the first 1000 messages');
rows_once($na, 'A');

my $dump = "$work/a.dump";
my $globals = "$work/globals.sql";
$na->command_ok([ 'pg_dumpall', '--globals-only', '-f', $globals ], 'pg_dumpall --globals-only of A');
$na->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'postgres' ], 'pg_dump -Fc of A while the pipeline runs');
my $at_dump = $na->safe_psql('postgres', $offsets);
$na->safe_psql('postgres', "SELECT sluice.stop('kd')");
$na->stop;

# B: A's roles, then the dump; the pipeline goes on by itself
my $nb = sluice_node('kdump_b');
$nb->safe_psql('postgres', 'DROP EXTENSION sluice');
$nb->psql('postgres', undef, extra_params => [ '-q', '-f', $globals ]);
$nb->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'postgres', $dump ], 'pg_restore into B');
is($nb->safe_psql('postgres', "SELECT has_function_privilege('kuser', 'sluice.kafka_source'::regproc, 'EXECUTE')"),
	't', 'B: kuser may still execute kafka_source()');
is($nb->safe_psql('postgres', $offsets), $at_dump, 'B: the offsets are those of the dump');
produce_rows(250);
wait_until($nb, $offsets, '1500', 'B: the running pipeline is back and reads what arrived since');
rows_once($nb, 'B');
is($nb->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'kd'"), 'running', 'B: running');

# the owner loses EXECUTE on kafka_source(): the running worker refuses its next plan;
# started again, the launcher refuses to start a worker; each time the pipeline is failed, saying why
my $why = "SELECT concat_ws(' | ', sqlstate, message, detail) FROM sluice.errors WHERE pipeline = 'kd' ORDER BY time DESC LIMIT 1";
$nb->safe_psql('postgres', 'REVOKE EXECUTE ON FUNCTION sluice.kafka_source FROM kuser');
wait_until($nb, "SELECT state FROM sluice.pipeline WHERE name = 'kd'", 'failed', 'B: without EXECUTE, kd is failed');
is($nb->safe_psql('postgres', $why), '42501 | permission denied to read Kafka topics | Role kuser may not execute sluice.kafka_source().',
	'B: the worker refused, and sluice.errors says why');
wait_until($nb, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker'", '0',
	'B: its worker is stopped');
$nb->safe_psql('postgres', "SET ROLE kuser; SELECT sluice.start('kd')");
wait_until($nb, "SELECT count(*) FROM sluice.errors WHERE pipeline = 'kd'", '2', 'B: started again, kd is refused');
is($nb->safe_psql('postgres', $why),
	'42501 | the owner of pipeline "kd" cannot run it | Role kuser may no longer execute sluice.kafka_source().',
	'B: the launcher refused to start it, and sluice.errors says why');
is($nb->safe_psql('postgres', "SELECT state FROM sluice.pipeline WHERE name = 'kd'"), 'failed', 'B: kd is failed again');

# C: the pipeline restored before its offsets: it waits for them, reading nothing
my $nc = sluice_node('kdump_c');
$nc->safe_psql('postgres', 'DROP EXTENSION sluice');
$nc->psql('postgres', undef, extra_params => [ '-q', '-f', $globals ]);
my $list = "$work/list";
$nc->command_ok([ 'pg_restore', '-l', '-f', $list, $dump ], 'pg_restore -l of the dump');
my @entries = split /\n/, slurp_file($list);
my @first = grep { !/TABLE DATA sluice kafka_offset / } @entries;
my @rest = grep { /TABLE DATA sluice kafka_offset / } @entries;
is(scalar @rest, 1, 'the dump has the offsets table\'s data');
open(my $fh, '>', "$work/first.list") or die; print $fh map { "$_\n" } @first; close $fh;
open($fh, '>', "$work/rest.list") or die; print $fh map { "$_\n" } @rest; close $fh;
$nc->command_ok([ 'pg_restore', '--exit-on-error', '-L', "$work/first.list", '-d', 'postgres', $dump ],
	'C: pg_restore of everything but the offsets');
my $log_at = log_size($nc);
wait_for_log_count($nc, qr/the catalog of pipeline "kd" is not whole yet/, 1, $log_at);
is($nc->safe_psql('postgres', 'SELECT count(*) FROM ks.t'), '1000', 'C: meanwhile nothing more is read');
$nc->command_ok([ 'pg_restore', '--exit-on-error', '-L', "$work/rest.list", '-d', 'postgres', $dump ],
	'C: pg_restore of the offsets');
wait_until($nc, $offsets, '1500', 'C: then the pipeline reads what arrived since the dump');
rows_once($nc, 'C');

$nb->stop;
$nc->stop;
$kafka->stop;
done_testing();

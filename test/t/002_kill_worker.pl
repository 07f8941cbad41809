# kill -9 a pipeline worker in the middle of a batch, several times: the
# server crash-restarts, the launcher brings the pipeline back, and the
# target ends up with every row exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $nfiles = 10;
my $rows = 200_000;
my $kills = 3;

my $node = sluice_node('kill_worker');
my $dir = $node->basedir . '/in';
my @paths = gen_files($dir, files => $nfiles, rows => $rows);

create_csv_pipeline($node, 'big', $dir, 'big_t', max_files => 1, trigger => '100 milliseconds');
$node->safe_psql('postgres', "SELECT sluice.start('big')");

my $crashes = 0;
my $after = 0;
for my $k (1 .. $kills)
{
	# a worker in the middle of a batch (COPYing a file), a later batch
	# each time so that the kills hit different batches
	my ($batch, $pid) = batch_reading($node, 'big', $after);
	my $offset = log_size($node);
	ok(kill('KILL', $pid), "kill $k: SIGKILL worker $pid in batch $batch");
	$crashes++;
	$after = $batch;

	wait_for_log_count($node, qr/all server processes terminated; reinitializing/, 1, $offset);
	wait_for_server($node);
	# the launcher brings the worker back by itself
	wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'sluice worker'"
		  . " AND application_name = 'big'",
		't', "kill $k: worker back");
	is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'big'"),
		'running', "kill $k: pipeline still running after the crash");
}

# not a crash: pg_terminate_backend() ends the worker with FATAL, the batch
# rolls back, and the launcher (notified of the exit) starts a new worker
{
	my ($batch, $pid) = batch_reading($node, 'big', $after);
	my $offset = log_size($node);
	is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)"), 't',
		"terminate worker $pid in batch $batch");
	wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'sluice worker'"
		  . " AND application_name = 'big' AND pid <> $pid",
		't', 'worker back after pg_terminate_backend');
	is(log_count($node, qr/all server processes terminated; reinitializing/, $offset), 0,
		'terminating a worker is not a crash restart');
	is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'big'"),
		'running', 'pipeline still running after pg_terminate_backend');
}

wait_until($node,
	"SELECT count(*) FILTER (WHERE committed) = $nfiles FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = 'big'",
	't', 'all files committed');

check_table($node, 'big_t', \@paths, 'target holds every row exactly once');

my $summary = progress_summary($node, 'big');
note "progress: $summary";
is($node->safe_psql('postgres',
		"SELECT count(*) = $nfiles AND bool_and(status = 'committed' AND files = 1 AND input_rows = $rows)"
		  . " FROM sluice.progress('big', 1000)"),
	't', "$nfiles batches, each committed with its one file");
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('big', 1000) WHERE attempts > 1"),
	'>=', 1, 'at least one batch was replayed');
# a kill can land just after a batch's commit, so not every killed batch
# needs a replay; but no batch is replayed more often than there were kills
cmp_ok($node->safe_psql('postgres', "SELECT coalesce(sum(attempts - 1), 0) FROM sluice.progress('big', 1000)"),
	'<=', $kills + 1, 'no more replays than kills and terminations');
is(log_count($node, qr/\(PID \d+\) was terminated by signal 9/), $crashes,
	'one worker death per kill');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors"), '0', 'no errors recorded');

$node->stop;
done_testing();

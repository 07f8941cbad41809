# A worker that dies (SIGKILL, so the whole server crash-restarts) at each
# stage of a batch: after every stage, the pipeline comes back by itself and
# the target ends up with every row of the files exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('crash_stages');

my $nfiles = 4;
my $per_batch = 2;
my $nbatches = $nfiles / $per_batch;
my $first_id = 1;

for my $stage (qw(after_plan after_read after_sink before_commit after_commit))
{
	my $name = "p_$stage";
	my $table = "t_$stage";
	my $dir = $node->basedir . "/in_$stage";
	my @paths = gen_files($dir, files => $nfiles, rows => 500, first_id => $first_id,
		seed => length($stage));
	$first_id += $nfiles * 500;

	set_crash_at($node, $stage);
	my $offset = log_size($node);

	create_csv_pipeline($node, $name, $dir, $table, max_files => $per_batch,
		trigger => '200 milliseconds');
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");

	# connects through the crash restarts
	wait_until($node,
		"SELECT count(*) FILTER (WHERE f.committed) = $nfiles AND count(*) = $nfiles"
		  . " FROM sluice.file f JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'",
		't', "$stage: all files committed");
	# after_commit crashes once more after the last commit: wait for every
	# expected crash restart, then for the server
	wait_for_log_count($node, qr/all server processes terminated; reinitializing/,
		$nbatches, $offset);
	wait_for_log_count($node, qr/database system is ready to accept connections/,
		$nbatches, $offset);
	wait_for_server($node);

	# the pipeline is running again, with a worker, and nothing failed
	wait_until($node,
		"SELECT state = 'running' AND worker_pid IS NOT NULL FROM sluice.pipelines WHERE name = '$name'",
		't', "$stage: worker back");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"),
		'0', "$stage: a crash is not recorded as an error");
	# shared memory is new after a crash: the backlog is known again once the worker planned
	wait_until($node, "SELECT files_pending FROM sluice.pipelines WHERE name = '$name'",
		'0', "$stage: the worker sees nothing left");
	is($node->safe_psql('postgres',
			"SELECT format('%s|%s|%s|%s', last_error, batches, input_rows, files_pending)"
			  . " FROM sluice.pipelines WHERE name = '$name'"),
		"|$nbatches|" . ($nfiles * 500) . '|0', "$stage: pipelines view: no error, all batches and rows, nothing pending");

	check_table($node, $table, \@paths, "$stage: target holds every row exactly once");

	my $attempts = $stage eq 'after_commit' ? 1 : 2;
	is(progress_summary($node, $name),
		join(' ', map { "$_:committed:$attempts:$per_batch" } 1 .. $nbatches),
		"$stage: each batch committed once, attempts $attempts");
	is($node->safe_psql('postgres',
			"SELECT string_agg(input_rows::text, ',' ORDER BY batch_id) FROM sluice.progress('$name', 1000)"),
		join(',', (500 * $per_batch) x $nbatches), "$stage: input_rows of each batch counts its replay only");
	is($node->safe_psql('postgres',
			"SELECT count(*) FROM sluice.file f JOIN sluice.pipeline p ON p.id = f.pipeline_id"
			  . " WHERE p.name = '$name' AND f.batch_id BETWEEN 1 AND $nbatches AND f.committed"),
		$nfiles, "$stage: every file claimed by one batch and committed");

	is(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset),
		$nbatches, "$stage: the worker killed itself once per batch");
	is(log_count($node, qr/\(PID \d+\) was terminated by signal 9/, $offset),
		$nbatches, "$stage: the postmaster saw each worker die by signal 9");
	is(log_count($node, qr/all server processes terminated; reinitializing/, $offset),
		$nbatches, "$stage: one crash restart per batch");

	set_crash_at($node, '');
	$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
	wait_until($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		't', "$stage: worker stopped");
}

# after all those crashes, the catalog is consistent: no planned batch left
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.batch WHERE status <> 'committed'"),
	'0', 'no batch left planned');

$node->stop;
done_testing();

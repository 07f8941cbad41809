# Two workers must never both commit one batch.  Within one server only one
# worker runs a pipeline (a shared-memory slot), so the stale worker is
# emulated in SQL by session A, which does what batch_process() does: lock
# the batch row FOR UPDATE, COPY the batch's files into the target, mark the
# files and then compare-and-set the batch 'planned' -> 'committed'.  The
# real worker runs through sluice.run_once() in session B.
#
# Batch 1 is left 'planned' with its files claimed by crashing a run_once()
# at after_plan.
#
# Scenario 1: A holds the batch row lock first; the worker must not write
#   batch 1's rows (it skips the locked batch, or waits for it and then
#   finds it committed).
# Scenario 2: the worker holds the batch row lock first (it is made to wait
#   inside its batch transaction by session C holding an ACCESS EXCLUSIVE
#   lock on the target); A then blocks on the batch row, and once the worker
#   committed, A's FOR UPDATE finds no planned batch and its compare-and-set
#   updates nothing.
# The third ordering -- the worker has planned (replayed) batch 1 and A
# locks the row before the worker's FOR UPDATE in its second transaction --
# cannot be forced from outside: the two transactions follow each other
# with no lock in between that another session could hold.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use Time::HiRes qw(usleep time);

my $nfiles = 6;
my $rows = 1000;

my $node = sluice_node('race');

# A pipeline whose batch 1 is planned, with its files claimed, and not run.
sub planned_pipeline
{
	my ($name, $first_id) = @_;
	my $dir = $node->basedir . "/in_$name";
	my @paths = gen_files($dir, files => $nfiles, rows => $rows, first_id => $first_id);
	create_csv_pipeline($node, $name, $dir, "${name}_t", max_files => 2);

	set_crash_at($node, 'after_plan');
	my $offset = log_size($node);
	my ($ret, $out, $err) = $node->psql('postgres', "SELECT sluice.run_once('$name')");
	isnt($ret, 0, "$name: run_once died with the crash restart");
	wait_for_log_count($node, qr/all server processes terminated; reinitializing/, 1, $offset);
	wait_for_server($node);
	set_crash_at($node, '');

	is(progress_summary($node, $name), '1:planned:1:', "$name: batch 1 left planned");
	is($node->safe_psql('postgres',
			"SELECT string_agg(f.batch_id || ':' || f.committed, ',' ORDER BY f.path) FROM sluice.file f"
			  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'"),
		'1:false,1:false', "$name: batch 1 claimed two files");
	is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = '$name'"),
		'stopped', "$name: pipeline still stopped");
	is($node->safe_psql('postgres', "SELECT count(*) FROM ${name}_t"), '0', "$name: target empty");
	return @paths;
}

sub batch1_files
{
	my ($id) = @_;
	return split /\n/, $node->safe_psql('postgres',
		"SELECT path FROM sluice.file WHERE pipeline_id = $id AND batch_id = 1 ORDER BY mtime, path");
}

# what a worker does to write batch 1 after it got the row lock; returns
# the number of rows the compare-and-set updated
sub stale_write
{
	my ($sess, $id, $table) = @_;
	for my $path (batch1_files($id))
	{
		$sess->query("COPY $table (id, customer, amount, ts) FROM '$path' WITH (FORMAT csv, HEADER true);");
	}
	$sess->query("UPDATE sluice.file SET committed = true WHERE pipeline_id = $id AND batch_id = 1;");
	return $sess->query(
		"WITH u AS (UPDATE sluice.batch SET status = 'committed', committed_at = now(), files = 2,"
		  . " input_rows = " . (2 * $rows)
		  . " WHERE pipeline_id = $id AND batch_id = 1 AND status = 'planned' RETURNING 1)"
		  . " SELECT count(*) FROM u;");
}

my $worker_waits = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice worker'"
  . " AND application_name = '%s' AND wait_event_type = 'Lock'";

######## Scenario 1: the stale worker (A) holds the batch first

{
	my @paths = planned_pipeline('race1', 1);
	my $id = pipeline_id($node, 'race1');

	my $a = start_session($node);
	is($a->query("BEGIN; SELECT batch_id FROM sluice.batch WHERE pipeline_id = $id AND batch_id = 1"
			  . " AND status = 'planned' FOR UPDATE;"),
		'1', 'race1: A locked planned batch 1');
	is(stale_write($a, $id, 'race1_t'), '1', 'race1: A compare-and-set batch 1 (not committed yet)');

	my $b = start_session($node);
	$b->send("SELECT 'run_once:' || sluice.run_once('race1');\n\\echo B_DONE");

	# B either returns (it skipped batch 1) or its worker waits for A's lock
	my $blocked = '';
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		$b->{h}->pump_nb;
		last if $b->{out} =~ /B_DONE/;
		$blocked = $node->safe_psql('postgres', sprintf($worker_waits, 'race1'));
		last if $blocked ne '';
		usleep(50_000);
	}
	ok($b->{out} =~ /B_DONE/ || $blocked ne '', 'race1: run_once returned or its worker waits');
	note $blocked ne '' ? 'race1: the worker waits for the locked batch'
	  : 'race1: run_once returned while A held batch 1';

	# none of batch 1's rows were written by the worker (A's are not committed)
	my ($lo, $hi) = (1, 2 * $rows);
	is($node->safe_psql('postgres', "SELECT count(*) FROM race1_t WHERE id BETWEEN $lo AND $hi"),
		'0', 'race1: the worker did not write batch 1');

	$a->query('COMMIT;');
	is($a->errors, '', 'race1: A committed without error');
	$a->quit;

	my $bout = $b->wait_for(qr/B_DONE/);
	like($bout, qr/^run_once:2$/m, 'race1: run_once committed batches 2 and 3');
	is($b->errors, '', 'race1: run_once raised nothing');
	$b->quit;

	check_table($node, 'race1_t', \@paths, 'race1: target holds every row exactly once');
	is(progress_summary($node, 'race1'), '1:committed:1:2 2:committed:1:2 3:committed:1:2',
		'race1: batch 1 committed once, by A; the worker did batches 2 and 3');
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'race1'"),
		'0', 'race1: no errors');
}

######## Scenario 2: the worker holds the batch first, A comes second

{
	my @paths = planned_pipeline('race2', 100_001);
	my $id = pipeline_id($node, 'race2');

	# C makes the worker wait inside its batch transaction, after its FOR UPDATE
	my $c = start_session($node);
	$c->query('BEGIN; LOCK TABLE race2_t IN ACCESS EXCLUSIVE MODE;');

	my $b = start_session($node);
	$b->send("SELECT 'run_once:' || sluice.run_once('race2');\n\\echo B_DONE");
	my $wpid = poll_value($node, sprintf($worker_waits, 'race2') . " AND query LIKE 'batch 1: reading%'");
	ok($wpid, "race2: worker $wpid holds batch 1 and waits for the target");

	my $a = start_session($node);
	my $apid = $a->query('SELECT pg_backend_pid();');
	$a->send("BEGIN;\nSELECT 'locked:' || count(*) FROM (SELECT 1 FROM sluice.batch WHERE pipeline_id = $id"
		  . " AND batch_id = 1 AND status = 'planned' FOR UPDATE) s;\n\\echo A_LOCKED");
	poll_value($node, "SELECT 1 FROM pg_stat_activity WHERE pid = $apid AND wait_event_type = 'Lock'");
	pass('race2: A waits for the batch row held by the worker');

	$c->query('COMMIT;');
	$c->quit;

	my $aout = $a->wait_for(qr/A_LOCKED/);
	like($aout, qr/^locked:0$/m, 'race2: after the worker committed, A finds no planned batch 1');
	# a stale worker that ignored that would still be stopped by the compare-and-set
	is(stale_write($a, $id, 'race2_t'), '0', 'race2: A compare-and-set updates nothing');
	$a->query('ROLLBACK;');
	$a->quit;

	my $bout = $b->wait_for(qr/B_DONE/);
	like($bout, qr/^run_once:3$/m, 'race2: run_once committed batches 1, 2 and 3');
	is($b->errors, '', 'race2: run_once raised nothing');
	$b->quit;

	check_table($node, 'race2_t', \@paths, 'race2: target holds every row exactly once');
	is(progress_summary($node, 'race2'), '1:committed:2:2 2:committed:1:2 3:committed:1:2',
		'race2: batch 1 committed once, by the worker, on its second attempt');
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'race2'"),
		'0', 'race2: no errors');
}

$node->stop;
done_testing();

# The warm worker of run_once() (sluice.run_once_idle_timeout): after a
# call drains, its worker waits for the next call of the pipeline, which
# hands it the request instead of starting a worker.  The same worker
# serves call after call, and through every crash (a SIGKILL while it
# waits, a SIGKILL in the middle of a batch it runs for a call, an
# immediate stop of the server in the middle of one) every row arrives
# once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('warm', "sluice.run_once_idle_timeout = '10min'\n");
my $dir = $node->basedir . '/feed';
mkdir $dir or die "mkdir $dir: $!";
create_csv_pipeline($node, 'w', $dir, 't_w', max_files => 1);
# the last row of each file of 20,000 rows (ids from 1,401) holds its batch
# up for a second, so that a kill or a stop seen in the middle of a batch
# lands there, before its commit
$node->safe_psql('postgres', q{
CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id % 20000 = 1400 THEN
        PERFORM pg_sleep(1);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER slow BEFORE INSERT ON t_w FOR EACH ROW EXECUTE FUNCTION slow_row();
});

my @paths;
my $first_id = 1;
my $prefix = 'a';

# $files new files of $rows rows each, read one per batch
sub more_files
{
	my ($files, $rows) = @_;
	push @paths, gen_files($dir, files => $files, rows => $rows, first_id => $first_id, prefix => $prefix++);
	$first_id += $files * $rows;
	return;
}

sub run_once
{
	return $node->safe_psql('postgres', "SELECT sluice.run_once('w')");
}

# the pid of the pipeline's worker, warm or busy
sub worker_pid
{
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity"
		  . " WHERE backend_type = 'sluice worker' AND application_name = 'w'");
}

# 1. calls served by one worker
is(run_once(), '0', 'an empty directory: no batch');
my $pid = worker_pid();
like($pid, qr/^\d+$/, 'the worker of the call waits warm');
is($node->safe_psql('postgres', "SELECT worker_pid IS NULL AND workers = 0 FROM sluice.pipelines WHERE name = 'w'"),
	't', 'sluice.pipelines shows no worker running the stopped pipeline');
more_files(3, 200);
is(run_once(), '3', 'the next call reads the new files, a batch each');
is(worker_pid(), $pid, 'with the same worker');
more_files(2, 200);
is(run_once(), '2', 'and again');
is(worker_pid(), $pid, 'still the same worker');
check_table($node, 't_w', \@paths, 'every row once');

# 2. the warm worker killed while it waits
my $offset = log_size($node);
kill 'KILL', $pid;
wait_for_log_count($node, qr/\(PID $pid\) was terminated by signal 9/, 1, $offset);
wait_for_server($node);
more_files(2, 200);
is(run_once(), '2', 'after a SIGKILL of the waiting worker, a call starts a new one');
isnt(worker_pid(), $pid, 'a new worker');
$pid = worker_pid();
check_table($node, 't_w', \@paths, 'every row once after the SIGKILL');

# A call of a warm worker, in the background, caught in the middle of
# reading a batch after the first: returns the batch and the call's psql.
sub call_caught_reading
{
	my $before = $node->safe_psql('postgres',
		"SELECT coalesce(max(batch_id), 0) FROM sluice.progress('w', 1000)");
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', "SELECT sluice.run_once('w')" ],
		'>', \$out, '2>', \$err);
	my ($batch, $reader) = batch_reading($node, 'w', $before + 1);
	is($reader, $pid, "batch $batch is read by the warm worker");
	return ($batch, $h);
}

# The batch cut short by a crash was replayed, once; or, if the crash also
# took back the commit of the batch before (planned ahead with it, it did
# not wait for the disk), that one was, and the batch was planned again.
sub replayed
{
	my ($batch, $crash) = @_;
	is($node->safe_psql('postgres',
			"SELECT string_agg(attempts::text, ',' ORDER BY batch_id) IN ('1,2', '2,1')"
			  . " FROM sluice.progress('w', 1000) WHERE batch_id IN ($batch - 1, $batch)"),
		't', "after the $crash, batch $batch, cut short, or the one before was replayed");
	return;
}

# 3. SIGKILL of the warm worker in the middle of a batch of a call
more_files(8, 20000);
my ($batch, $call) = call_caught_reading();
$offset = log_size($node);
kill 'KILL', $pid;
wait_for_log_count($node, qr/\(PID $pid\) was terminated by signal 9/, 1, $offset);
$call->finish;
wait_for_server($node);
cmp_ok(run_once(), '>=', 1, 'after a SIGKILL mid-batch, the next call reads the rest');
is(run_once(), '0', 'and then nothing is left');
check_table($node, 't_w', \@paths, 'every row once after the SIGKILL mid-batch');
replayed($batch, 'SIGKILL');

# 4. immediate stop of the server in the middle of a batch of a call
$pid = worker_pid();
more_files(8, 20000);
($batch, $call) = call_caught_reading();
$node->stop('immediate');
$call->finish;
$node->start;
cmp_ok(run_once(), '>=', 1, 'after an immediate stop mid-batch, a call reads the rest');
check_table($node, 't_w', \@paths, 'every row once after the immediate stop');
replayed($batch, 'immediate stop');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'w'"), '0', 'no error');
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'w'"), 'stopped',
	'the pipeline is stopped between calls');

# 5. the worker of a call killed right after a commit that did not wait for
# the disk (its batch had the next one planned): the crash may take that
# batch back, with its offsets; the next call reads it again, once
my $kdir = $node->basedir . '/feed_k';
mkdir $kdir or die "mkdir $kdir: $!";
create_csv_pipeline($node, 'k', $kdir, 't_k', max_files => 1);
my @kpaths = gen_files($kdir, files => 3, rows => 2000, first_id => 1);
set_crash_at($node, 'after_commit');
$offset = log_size($node);
my ($ret) = $node->psql('postgres', "SELECT sluice.run_once('k')");
isnt($ret, 0, 'the call whose worker killed itself after its first commit fails');
wait_for_log_count($node, qr/kills itself at stage "after_commit"/, 1, $offset);
wait_for_server($node);
set_crash_at($node, '');
my $kept = $node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('k', 1000) WHERE status = 'committed'");
note "batches kept through the crash right after the first commit: $kept";
is($node->safe_psql('postgres', "SELECT sluice.run_once('k')"), 3 - $kept,
	'the next call reads what the crash left: the first batch again if it took it back');
check_table($node, 't_k', \@kpaths, 'every row once after a kill right after a commit that did not wait for the disk');
is($node->safe_psql('postgres', "SELECT string_agg(batch_id::text, ',' ORDER BY batch_id) FROM sluice.progress('k', 1000)"),
	'1,2,3', 'three batches, numbered on');

# 6. a call that returned: every batch it committed is on disk, those
# planned ahead (which did not wait) too, so an immediate stop right after
# takes none back
push @kpaths, gen_files($kdir, files => 3, rows => 2000, first_id => 6001, prefix => 'more');
is($node->safe_psql('postgres', "SELECT sluice.run_once('k')"), '3', 'a call reads three more files, a batch each');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('k', 1000) WHERE status = 'committed'"),
	'6', 'the immediate stop right after the call took none of its batches back');
check_table($node, 't_k', \@kpaths, 'every row once after an immediate stop right after a call');

$node->stop;
done_testing();

# Pipelines and their owners.  An owner loses LOGIN: within a bounded time
# its running pipeline is failed, with the reason in sluice.errors, and the
# launcher neither starts workers for it in a loop nor writes to the log in
# one; with LOGIN back, start() runs it again and it reads new files exactly
# once.  DROP ROLE of an owner is refused (2BP01), from the pipelines'
# database and from another one; DROP OWNED BY drops its pipelines, after
# which DROP ROLE works; REASSIGN OWNED BY hands a running pipeline over and
# its worker then runs as the new owner.  Crash restarts in the middle
# change none of it.  A pipeline whose workers cannot connect (its owner lost
# CONNECT) is failed after 5 tries, with the reason in sluice.errors.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use Time::HiRes qw(time usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('owners');
$node->safe_psql('postgres', 'CREATE DATABASE other');
my $feeds = PostgreSQL::Test::Utils::tempdir('feeds');
my $base = time() - 86400;

$node->safe_psql(
	'postgres', q{
CREATE ROLE owner1 LOGIN;
CREATE ROLE owner2 LOGIN;
CREATE ROLE heir LOGIN;
GRANT pg_read_server_files TO owner1, owner2, heir;
CREATE SCHEMA s1 AUTHORIZATION owner1;
CREATE SCHEMA s2 AUTHORIZATION owner2;
});

# a pipeline of $owner reading $feeds/$name into $schema.$name, one file per batch
sub create_pipeline
{
	my ($owner, $schema, $name) = @_;
	mkdir "$feeds/$name" or die "mkdir: $!";
	$node->safe_psql(
		'postgres', qq{
SET ROLE $owner;
CREATE TABLE $schema.$name (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$feeds/$name', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.append_sink('$schema.$name'), '200 milliseconds');
});
	return;
}

sub worker_user
{
	my ($name) = @_;
	return "SELECT usename FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = '$name'";
}

sub files_committed
{
	my ($name) = @_;
	return "SELECT count(*) FILTER (WHERE f.committed) FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'";
}

# psql as in a session: stderr with SQLSTATEs
sub try_sql
{
	my ($db, $sql) = @_;
	my ($rc, $out, $err) = $node->psql($db, "\\set VERBOSITY verbose\n$sql");
	return ($rc, $err);
}

sub crash_restart
{
	my ($what) = @_;
	$node->stop('immediate');
	$node->start;
	note "crash restart: $what";
	return;
}

create_pipeline('owner1', 's1', 'p1');
create_pipeline('owner2', 's2', 'p2');
create_pipeline('owner2', 's2', 'p2b');
my $p1_id = pipeline_id($node, 'p1');
my @p1_files = gen_files("$feeds/p1", files => 2, rows => 500, prefix => 'a', mtime_base => $base);
my @p2_files = gen_files("$feeds/p2", files => 2, rows => 500, prefix => 'a', mtime_base => $base);
$node->safe_psql('postgres', "SET ROLE owner1; SELECT sluice.start('p1')");
$node->safe_psql('postgres', "SET ROLE owner2; SELECT sluice.start('p2')");
wait_until($node, files_committed('p1'), 2, 'p1 read its files');
wait_until($node, files_committed('p2'), 2, 'p2 read its files');
wait_until($node, worker_user('p1'), 'owner1', 'p1 runs as owner1');

# ---------------------------------------------------------------------------
# 1. owner1 loses LOGIN.  The postmaster logs each worker it starts at DEBUG1.

$node->safe_psql('postgres', "ALTER SYSTEM SET log_min_messages = debug1; SELECT pg_reload_conf()");
wait_until($node, 'SHOW log_min_messages', 'debug1');
my $starts = qr/starting background worker process "sluice worker for pipeline $p1_id"/;
my $about_sluice = qr/sluice worker|sluice launcher|sluice:|background worker|pipeline "p1"|owner1/;
my $offset = log_size($node);
my $t0 = time();
$node->safe_psql('postgres', 'ALTER ROLE owner1 NOLOGIN');
wait_until($node, "SELECT state FROM sluice.pipeline WHERE name = 'p1'", 'failed', 'p1 is failed');
my $elapsed = time() - $t0;
cmp_ok($elapsed, '<', 10, sprintf('NOLOGIN: p1 failed within %.1f s (the launcher looks every second)', $elapsed));
wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'p1'",
	'0', 'NOLOGIN: the worker of p1 is stopped');
is($node->safe_psql('postgres',
		"SELECT concat_ws(' | ', sqlstate, message, detail, hint) FROM sluice.errors WHERE pipeline = 'p1'"),
	'42501 | the owner of pipeline "p1" cannot run it | Role owner1 cannot log in. | Pipeline workers connect as'
	  . " the pipeline's owner and read server files. Give the owner back LOGIN and pg_read_server_files, then call sluice.start().",
	'NOLOGIN: sluice.errors says why, once');
is($node->safe_psql('postgres', "SELECT state, last_error FROM sluice.pipelines WHERE name = 'p1'"),
	'failed|the owner of pipeline "p1" cannot run it', 'NOLOGIN: so does sluice.pipelines');

# a few launcher naptimes and restart delays later: nothing started, nothing logged
my $quiet_from = log_size($node);
sleep 3;
my $quiet = slurp_file($node->logfile, $quiet_from);
is(log_count($node, $starts, $offset), 0, 'NOLOGIN: no worker was started for p1');
is(log_count($node, qr/not permitted to log in/, $offset), 0, 'NOLOGIN: no worker tried to connect as owner1');
is(log_count($node, qr/sluice: the owner of pipeline "p1" cannot run it/, $offset), 1,
	'NOLOGIN: the launcher reported it once');
is(scalar(() = $quiet =~ /$about_sluice/g), 0, 'NOLOGIN: 3 s later, nothing about sluice or its workers in the log');
cmp_ok(length($quiet), '<', 4096, 'NOLOGIN: and the log grew by ' . length($quiet) . ' bytes in those 3 s');
note "log in the quiet seconds:\n$quiet" if $quiet ne '';
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipeline WHERE name = 'p2'"), 'running',
	'NOLOGIN: the other owner\'s pipeline runs on');

# a crash restart: p1 stays failed, reported once, not started
crash_restart('p1 failed');
wait_until($node, worker_user('p2'), 'owner2', 'after the crash: p2 is back (the launcher looked)');
$quiet_from = log_size($node);
sleep 2;
is(log_count($node, $starts, $offset), 0, 'after the crash: still no worker started for p1');
is($node->safe_psql('postgres', "SELECT state || ' ' || (SELECT count(*) FROM sluice.error WHERE pipeline_id = $p1_id)"
		  . " FROM sluice.pipeline WHERE id = $p1_id"),
	'failed 1', 'after the crash: p1 is failed, with its one error');
is(scalar(() = slurp_file($node->logfile, $quiet_from) =~ /$about_sluice/g), 0,
	'after the crash: nothing about sluice in the log once the launcher settled');

# LOGIN back, and start(): it runs again and reads new files exactly once
$node->safe_psql('postgres', 'ALTER ROLE owner1 LOGIN');
$node->safe_psql('postgres', "SET ROLE owner1; SELECT sluice.start('p1')");
wait_until($node, worker_user('p1'), 'owner1', 'LOGIN back: p1 runs again as owner1');
is(log_count($node, $starts, $offset), 1, 'LOGIN back: one worker started for p1');
$node->safe_psql('postgres', "ALTER SYSTEM RESET log_min_messages; SELECT pg_reload_conf()");
push @p1_files, gen_files("$feeds/p1", files => 2, rows => 500, prefix => 'b', first_id => 10_001,
	mtime_base => $base + 3600);
wait_until($node, files_committed('p1'), 4, 'LOGIN back: p1 read the new files');
check_table($node, 's1.p1', \@p1_files, 'LOGIN back: p1 holds every row of its files exactly once');

# ---------------------------------------------------------------------------
# 2. DROP ROLE of an owner is refused, here and from another database

sub drop_refused
{
	my ($db, $role, $detail, $what) = @_;
	my ($rc, $err) = try_sql($db, "DROP ROLE $role");
	isnt($rc, 0, "$what: DROP ROLE $role from $db fails");
	like($err, qr/ERROR:  2BP01: role "$role" cannot be dropped because some objects depend on it/,
		"$what: with 2BP01");
	like($err, qr/DETAIL:  \Q$detail\E/, "$what: because it owns pipelines");
	return;
}
drop_refused('postgres', 'owner2', 'owner of 2 sluice pipelines in database "postgres"', 'owner2');
drop_refused('other', 'owner2', 'owner of sluice pipelines in database "postgres"', 'owner2');
drop_refused('other', 'owner1', 'owner of sluice pipelines in database "postgres"', 'owner1');

# After a restart, other databases know the owners only once the launcher
# has looked at the catalog (known problem, not tested here: until then, or
# while its look waits for a lock on sluice.pipeline, DROP ROLE there drops
# an owner); wait for that, by p2's worker.
crash_restart('owners own pipelines');
wait_until($node, worker_user('p2'), 'owner2', 'after the crash: p2 is back (the launcher looked)');
drop_refused('postgres', 'owner2', 'owner of 2 sluice pipelines in database "postgres"', 'after the crash, owner2');
drop_refused('other', 'owner2', 'owner of sluice pipelines in database "postgres"', 'after the crash, owner2');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_roles WHERE rolname IN ('owner1', 'owner2')"), '2',
	'both owners still exist');

# DROP OWNED BY in the pipelines' database takes the pipelines along; then
# DROP ROLE works, also from the other database once the launcher saw it
$node->safe_psql('postgres', 'DROP OWNED BY owner2');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.pipeline WHERE name IN ('p2', 'p2b')"), '0',
	'DROP OWNED BY owner2 dropped its pipelines');
wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'p2'",
	'0', 'and stopped the worker of p2');
my $dropped;
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (time() < $deadline)
{
	my ($rc) = try_sql('other', 'DROP ROLE owner2');
	if ($rc == 0)
	{
		$dropped = 1;
		last;
	}
	usleep(100_000);
}
ok($dropped, 'then DROP ROLE owner2 from the other database works');
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipeline WHERE name = 'p1'"), 'running',
	'owner1\'s pipeline is untouched');

# ---------------------------------------------------------------------------
# 3. REASSIGN OWNED BY hands the running pipeline over: its worker then runs
# as the new owner.  A crash restart right after it.

my $pid_before = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'p1'");
$node->safe_psql('postgres', 'REASSIGN OWNED BY owner1 TO heir');
is($node->safe_psql('postgres', "SELECT owner FROM sluice.pipelines WHERE name = 'p1'"), 'heir',
	'REASSIGN OWNED: p1 belongs to heir');
wait_until($node, worker_user('p1'), 'heir', 'REASSIGN OWNED: the worker of p1 runs as heir');
isnt($node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'p1'"),
	$pid_before, 'REASSIGN OWNED: in a new worker');
push @p1_files, gen_files("$feeds/p1", files => 2, rows => 500, prefix => 'c', first_id => 20_001,
	mtime_base => $base + 7200);
wait_until($node, files_committed('p1'), 6, 'REASSIGN OWNED: heir\'s worker read the new files');


# and back, with a crash restart right after the REASSIGN commits
$node->safe_psql('postgres', 'REASSIGN OWNED BY heir TO owner1');
crash_restart('right after REASSIGN OWNED');
wait_until($node, worker_user('p1'), 'owner1', 'after the crash: the worker of p1 runs as owner1');
is($node->safe_psql('postgres', "SELECT owner FROM sluice.pipelines WHERE name = 'p1'"), 'owner1',
	'after the crash: p1 belongs to owner1');
push @p1_files, gen_files("$feeds/p1", files => 2, rows => 500, prefix => 'd', first_id => 30_001,
	mtime_base => $base + 10800);
wait_until($node, files_committed('p1'), 8, 'after the crash: p1 read the new files');
check_table($node, 's1.p1', \@p1_files, 'p1 holds every row of its files exactly once, through its owners');
is($node->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE status = 'committed' AND files = 1) || ' ' || count(*) FROM sluice.progress('p1', 1000)"),
	'8 8', 'p1: 8 batches, each committed with one file');

# heir owns nothing any more and can go, from the other database; owner1 cannot
my ($rc) = try_sql('other', 'DROP ROLE heir');
is($rc, 0, 'heir, who no longer owns a pipeline, can be dropped from the other database');
drop_refused('other', 'owner1', 'owner of sluice pipelines in database "postgres"', 'after all that, owner1');
drop_refused('postgres', 'owner1', 'owner of 1 sluice pipeline in database "postgres"', 'after all that, owner1');

# ---------------------------------------------------------------------------
# 4. A worker that cannot connect (here: its owner lost CONNECT on the
# database, which the launcher does not check beforehand): after 5 workers
# in a row exited before they connected, the pipeline is failed, with the
# reason in sluice.errors, and no more workers start.

$node->safe_psql('postgres', "SET ROLE owner1; SELECT sluice.stop('p1')");
wait_until($node, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'p1'",
	'0', 'no CONNECT: p1 is stopped first');
$node->safe_psql('postgres', 'REVOKE CONNECT ON DATABASE postgres FROM PUBLIC');
$offset = log_size($node);
$t0 = time();
$node->safe_psql('postgres', "SET ROLE owner1; SELECT sluice.start('p1')");
wait_until($node, "SELECT state FROM sluice.pipeline WHERE name = 'p1'", 'failed', 'no CONNECT: p1 is failed');
$elapsed = time() - $t0;
cmp_ok($elapsed, '<', 30, sprintf('no CONNECT: within %.1f s (5 tries, 1 s apart)', $elapsed));
is(log_count($node, qr/permission denied for database "postgres"/, $offset), 5,
	'no CONNECT: 5 workers tried to connect, and failed');
is($node->safe_psql('postgres',
		"SELECT concat_ws(' | ', sqlstate, message, detail) FROM sluice.errors WHERE pipeline = 'p1' ORDER BY time DESC LIMIT 1"),
	'08006 | the worker of pipeline "p1" could not connect | 5 workers in a row exited before they connected to the database.',
	'no CONNECT: sluice.errors says why');
$quiet_from = log_size($node);
sleep 3;
is(log_count($node, qr/permission denied for database/, $quiet_from), 0, 'no CONNECT: 3 s later, no worker tried again');
$node->safe_psql('postgres', 'GRANT CONNECT ON DATABASE postgres TO PUBLIC');
$node->safe_psql('postgres', "SET ROLE owner1; SELECT sluice.start('p1')");
wait_until($node, worker_user('p1'), 'owner1', 'CONNECT back: start() runs p1 again');

$node->stop;
done_testing();

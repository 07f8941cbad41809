# Event-time windows through crashes: a running window pipeline (tumbling
# 10 min, append, delay 10 min) crashed at each stage of each batch
# (sluice.crash_at), a worker killed with SIGKILL mid-batch, an immediate
# stop mid-stream; each time the target, the late rows, each batch's
# progress and the state still equal the reference model (window_model in
# SluiceTest.pm) exactly.  Then a clean restart: the watermark survives and
# the first batch after it runs with that watermark.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use File::Copy qw(move);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('windows_crash', "timezone = 'UTC'\n");
my %spec = (size_s => 600, mode => 'append', delay_s => 600);

sub files_committed
{
	my ($name) = @_;
	return "SELECT count(*) FILTER (WHERE f.committed) FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'";
}

# 1. crash_at each stage of each batch
my $nfiles = 6;
my $seed = 1;
for my $stage (qw(after_plan after_read after_sink before_commit after_commit))
{
	my $name = "w_$stage";
	my $dir = $node->basedir . "/in_$stage";
	my @paths = gen_window_feed($dir, files => $nfiles, rows => 120, seed => $seed++);
	my $model = window_model(\@paths, %spec);

	set_crash_at($node, $stage);
	my $offset = log_size($node);
	create_window_pipeline($node, $name, $dir, %spec, trigger => '200 milliseconds');
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");

	wait_until($node, files_committed($name), $nfiles, "$stage: all files committed");
	wait_for_log_count($node, qr/all server processes terminated; reinitializing/, $nfiles, $offset);
	wait_for_log_count($node, qr/database system is ready to accept connections/, $nfiles, $offset);
	wait_for_server($node);

	is(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset), $nfiles,
		"$stage: the worker killed itself once per batch");
	my $attempts = $stage eq 'after_commit' ? 1 : 2;
	is(progress_summary($node, $name), join(' ', map { "$_:committed:$attempts:1" } 1 .. $nfiles),
		"$stage: each batch committed once, attempts $attempts");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"),
		'0', "$stage: no error");
	window_check_model($node, $name, $model, $stage);

	set_crash_at($node, '');
	$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
	wait_until($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		't', "$stage: worker stopped");
}

# 2. SIGKILL of the worker mid-batch, then an immediate stop mid-stream,
# on bigger files (so that batches take a while)
my $name = 'w_kill';
my $all = $node->basedir . '/kill_all';
my $dir = $node->basedir . '/kill_in';
mkdir $dir or die "mkdir $dir: $!";
my $nkill = 8;
my @all = gen_window_feed($all, files => $nkill + 1, rows => 40_000, seed => 99);
my @paths = @all[ 0 .. $nkill - 1 ];
for my $p (@paths)
{
	(my $to = $p) =~ s{^\Q$all\E}{$dir};
	move($p, $to) or die "move $p: $!";
	$p = $to;
}
(my $last = $all[-1]) =~ s{^\Q$all\E}{$dir};
my $model = window_model(\@paths, %spec);

create_window_pipeline($node, $name, $dir, %spec, trigger => '100 milliseconds');
$node->safe_psql('postgres', "SELECT sluice.start('$name')");

kill_then_stop($node, $name, $nkill);
is($node->safe_psql('postgres', files_committed($name)), $nkill, 'kill: all files committed');
is($node->safe_psql('postgres',
		"SELECT count(*) = $nkill AND bool_and(status = 'committed' AND files = 1) FROM sluice.progress('$name', 1000)"),
	't', "kill: $nkill batches, each committed with its one file");
window_check_model($node, $name, $model, 'kill + immediate stop');

# 3. a clean restart: the watermark survives, and the next batch uses it
my $w_before = $model->{W};
$node->restart;
is($node->safe_psql('postgres', "SELECT " . us_ts('watermark') . " FROM sluice.pipelines WHERE name = '$name'"),
	$w_before, 'restart: pipelines.watermark after a clean restart equals the model\'s final W');
move($all[-1], $last) or die "move $all[-1]: $!";
wait_until($node, files_committed($name), $nkill + 1, 'restart: the new file committed');
is($node->safe_psql('postgres',
		"SELECT " . us_ts('watermark') . " FROM sluice.progress('$name', 1000) WHERE batch_id = " . ($nkill + 1)),
	$w_before, 'restart: the first batch after the restart ran with the watermark from before it');
window_check_model($node, $name, window_model([ @paths, $last ], %spec), 'after the restart');
cmp_ok(scalar(@{ window_db_late($node, "${name}_late") }), '>', 0, 'restart: late rows were dropped');

$node->stop;
done_testing();

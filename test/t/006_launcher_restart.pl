# The launcher itself exits (here pg_terminate_backend; an ERROR in the
# launcher does the same) and the postmaster starts a new one after
# bgw_restart_time.  Workers keep running meanwhile.  The new launcher must
# still control them: stop() ends a worker at once (not at its next
# trigger), and a worker that dies is restarted after sluice.restart_delay
# (not only at the next sluice.launcher_naptime).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

# a long naptime and trigger, so that waiting for either is plainly visible
my $node = sluice_node('launcher_restart', "sluice.launcher_naptime = 60\n");
my $dir = $node->basedir . '/in';
my @paths = gen_files($dir, files => 3, rows => 100);
create_csv_pipeline($node, 'lr', $dir, 'lr_t', max_files => 1, trigger => '1 minute');

my $worker_q = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'lr'";

# a new launcher, after the old one was terminated
sub restart_launcher
{
	my $old = $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice launcher'");
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($old)");
	return poll_value($node,
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice launcher' AND pid <> $old");
}

# $sql prints something within $secs seconds
sub within
{
	my ($secs, $sql) = @_;
	my $v = eval { poll_value($node, $sql, $secs) };
	return $v;
}

$node->safe_psql('postgres', "SELECT sluice.start('lr')");
my $w1 = poll_value($node, $worker_q);
wait_until($node, "SELECT count(*) >= 1 FROM sluice.batch WHERE status = 'committed'", 't',
	'first batch');

my $l2 = restart_launcher();
ok($l2, "new launcher $l2");
is($node->safe_psql('postgres', $worker_q), $w1, 'the worker outlived the old launcher');

# stop(): the worker sleeps until its next trigger (a minute); the launcher
# must end it
$node->safe_psql('postgres', "SELECT sluice.stop('lr')");
ok(within(10, "SELECT 'gone' WHERE NOT EXISTS ($worker_q)"),
	'stop() after a launcher restart ends the worker within 10 s');
# (if not, end it by hand and go on)
$node->safe_psql('postgres', "SELECT pg_terminate_backend(pid) FROM ($worker_q) w");
wait_until($node, "SELECT NOT EXISTS ($worker_q)", 't', 'worker gone');

# a worker that dies after a launcher restart comes back after restart_delay
$node->safe_psql('postgres', "SELECT sluice.start('lr')");
my $w2 = poll_value($node, $worker_q);
my $l3 = restart_launcher();
ok($l3, "new launcher $l3");
is($node->safe_psql('postgres', $worker_q), $w2, 'the worker outlived the old launcher');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($w2)");
ok(within(10, "$worker_q AND pid <> $w2"),
	'a worker terminated after a launcher restart is restarted within 10 s');

# either way the pipeline finishes its files exactly once
wait_until($node,
	"SELECT count(*) FILTER (WHERE committed) = 3 FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = 'lr'",
	't', 'all files committed');
check_table($node, 'lr_t', \@paths, 'target holds every row exactly once');

$node->stop;
done_testing();

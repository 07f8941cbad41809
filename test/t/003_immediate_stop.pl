# Stop the server while a batch is in flight: immediate (no shutdown, crash
# recovery at the next start) twice, then a clean fast restart.  Each time
# the running pipeline comes back by itself with the server, and the target
# ends up with every row exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $nfiles = 8;
my $rows = 200_000;

my $node = sluice_node('immediate_stop');
my $dir = $node->basedir . '/in';
my @paths = gen_files($dir, files => $nfiles, rows => $rows);

create_csv_pipeline($node, 'imm', $dir, 'imm_t', max_files => 1, trigger => '100 milliseconds');
$node->safe_psql('postgres', "SELECT sluice.start('imm')");

my $after = 0;

for my $round (1 .. 3)
{
	my $mode = $round <= 2 ? 'immediate' : 'fast';
	my ($batch) = batch_reading($node, 'imm', $after);
	$after = $batch;
	my $committed_before = $node->safe_psql('postgres',
		"SELECT count(*) FROM sluice.batch WHERE status = 'committed'");
	note "round $round: stopping ($mode) during batch $batch, $committed_before batches committed";
	my $offset = log_size($node);
	if ($mode eq 'fast')
	{
		$node->restart;    # pg_ctl restart, fast mode
		ok(log_count($node, qr/terminating background worker "sluice worker" due to administrator command/, $offset),
			"round $round: the worker was terminated by the clean shutdown");
	}
	else
	{
		$node->stop($mode);
		$node->start;
	}

	# without calling start(): the launcher brings the worker back
	wait_until($node,
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'sluice worker'"
		  . " AND application_name = 'imm'",
		't', "round $round: worker back");
	is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines WHERE name = 'imm'"),
		'running', "round $round ($mode): pipeline running after the restart");
	# a batch in flight was not committed by the stop
	is($node->safe_psql('postgres',
			"SELECT count(*) FILTER (WHERE status = 'committed') >= $committed_before"
			  . " AND count(*) FILTER (WHERE status = 'committed') <= $committed_before + 1"
			  . " FROM sluice.batch"),
		't', "round $round ($mode): the committed batches survived the stop");
}

wait_until($node,
	"SELECT count(*) FILTER (WHERE committed) = $nfiles FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = 'imm'",
	't', 'all files committed');

check_table($node, 'imm_t', \@paths, 'target holds every row exactly once');
note 'progress: ' . progress_summary($node, 'imm');
is($node->safe_psql('postgres',
		"SELECT count(*) = $nfiles AND bool_and(status = 'committed' AND files = 1 AND input_rows = $rows)"
		  . " FROM sluice.progress('imm', 1000)"),
	't', "$nfiles batches, each committed with its one file");
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('imm', 1000) WHERE attempts > 1"),
	'>=', 1, 'at least one batch was replayed');
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors"), '0', 'no errors recorded');

# the pipeline keeps going: a new file after all that is picked up
my @more = gen_files($dir, files => 1, rows => 1000, first_id => $nfiles * $rows + 1,
	prefix => 'late', mtime_base => time() - 60);
wait_until($node,
	"SELECT count(*) FILTER (WHERE committed) = " . ($nfiles + 1) . " FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = 'imm'",
	't', 'a late file is committed');
check_table($node, 'imm_t', [ @paths, @more ], 'target holds the late file too, exactly once');

$node->stop;
done_testing();

# sluice.dashboard() renders, and marks a batch replayed after a crash:
# headless Chromium (Debian's chromium, installed
# by scripts/setup) takes a screenshot of the SVG of a pipeline's batches,
# and the screenshot is not blank: it holds far more than the screenshot of
# an empty SVG of the same size.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my ($chromium) = grep { -x } qw(/usr/bin/chromium /usr/bin/chromium-browser);
plan skip_all => 'chromium is not installed (scripts/setup installs it)' unless $chromium;

my $node = sluice_node('dashboard');
my $dir = $node->basedir . '/feed';
gen_files($dir, files => 12, rows => 200, prefix => 'feed');
$node->safe_psql('postgres', qq{
CREATE TABLE t (window_start timestamptz, window_end timestamptz, customer int, n bigint,
                PRIMARY KEY (window_start, window_end, customer));
SELECT sluice.create_pipeline('dash',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.window_sink('t', '1 minute', NULL, '{customer}', '{count(*) AS n}'), 'available_now',
  event_time => 'ts', watermark_delay => '30 seconds');
});
# the first batch is replayed after a crash, which the picture marks
set_crash_at($node, 'after_plan');
my $offset = log_size($node);
$node->psql('postgres', "SELECT sluice.run_once('dash')");
wait_for_log_count($node, qr/all server processes terminated; reinitializing/, 1, $offset);
wait_for_server($node);
set_crash_at($node, '');
is($node->safe_psql('postgres', "SELECT sluice.run_once('dash')"), '12', '12 batches');
is($node->safe_psql('postgres', "SELECT attempts FROM sluice.progress('dash', 100) WHERE batch_id = 1"), '2',
	'batch 1 was replayed after the crash');
like($node->safe_psql('postgres', "SELECT sluice.dashboard('dash')"), qr{<title>batch 1: attempt 2</title>},
	'the dashboard marks the replayed batch');

my $work = $node->basedir;
my $svg = "$work/dash.svg";
my $blank = "$work/blank.svg";
open my $fh, '>', $svg or die;
print $fh $node->safe_psql('postgres', "SELECT sluice.dashboard('dash')");
close $fh;
my ($w, $h) = slurp_file($svg) =~ /^<svg [^>]*width="(\d+)" height="(\d+)"/;
ok($w && $h, "the SVG is $w x $h");
open $fh, '>', $blank or die;
print $fh qq{<svg xmlns="http://www.w3.org/2000/svg" width="$w" height="$h"><rect width="100%" height="100%" fill="#ffffff"/></svg>};
close $fh;

sub screenshot
{
	my ($file) = @_;
	my $png = "$file.png";
	my ($out, $err) = ('', '');
	local $ENV{HOME} = $work;    # chromium writes there
	IPC::Run::run([ $chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
			'--hide-scrollbars', "--user-data-dir=$work/chromium", "--window-size=$w,$h",
			"--screenshot=$png", "file://$file" ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	note "chromium: $err" unless -s $png;
	return $png;
}

my $shot = screenshot($svg);
my $empty = screenshot($blank);
ok(-s $shot, 'chromium took a screenshot of the dashboard');
ok(-s $empty, 'and one of an empty picture');
my ($sw, $sh) = unpack('NN', substr(slurp_file($shot), 16, 8));
is("$sw x $sh", "$w x $h", 'the screenshot is the size of the picture');
cmp_ok(-s $shot, '>', 10 * (-s $empty),
	sprintf('the screenshot is not blank: %d bytes of PNG against %d for an empty picture', -s $shot, -s $empty));

$node->stop;
done_testing();

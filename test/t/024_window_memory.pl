# A window batch whose partial aggregates outgrow sluice.window_memory is
# folded in parts, each merged into the state table (src/sinks/window.c):
# the same pipeline with 64kB and with the default writes the same windows,
# late rows, progress and state, in append and update mode, for tumbling
# and session windows, with the rows folded as COPY parses them and from a
# transform's result; and only the small one says it split its batches.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('window_memory', "timezone = 'UTC'\n");

# 4 files x 5,000 rows, one second apart, 1,000 customers: about 5,000
# (window, customer) partials per batch, far more than 64kB of them
my $dir = $node->basedir . '/feed';
gen_files($dir, files => 4, rows => 5000);

# some rows 0 to 20 minutes early: late for a 5-minute watermark delay
my $shuffle = "SELECT id, customer, amount, ts - ((id * 7919) % 1200) * interval ''1 second'' AS ts FROM batch";

sub pipeline
{
	my ($name, $mode, $transform, $kind) = @_;
	my $window = $kind eq 'session' ? "session_gap => '30 minutes'" : "'10 minutes'";
	$node->safe_psql('postgres', qq{
CREATE TABLE ${name}_out (window_start timestamptz, window_end timestamptz, customer int,
  n bigint, total numeric, lo numeric(12,2), hi numeric(12,2), av numeric);
CREATE TABLE ${name}_late (batch_id bigint, watermark timestamptz, id bigint, ts timestamptz);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.window_sink('${name}_out', $window, group_by => '{customer}',
    aggregates => '{count(*) AS n, sum(amount) AS total, min(amount) AS lo, max(amount) AS hi, avg(amount) AS av}',
    output_mode => '$mode', late_rows => '${name}_late'),
  event_time => 'ts', watermark_delay => '5 minutes', backpressure => false}
	  . ($transform ? ", transform => '$transform'" : '') . ');');
	return;
}

sub digest
{
	my ($name) = @_;
	my %q = (
		out => "SELECT count(*) || ' ' || md5(string_agg(concat_ws(',', window_start, customer, n, total, lo, hi, av), ';'"
		  . " ORDER BY window_start, customer)) FROM ${name}_out",
		late => "SELECT count(*) || ' ' || md5(string_agg(concat_ws(',', batch_id, watermark, id, ts), ';' ORDER BY id))"
		  . " FROM ${name}_late",
		state => "SELECT count(*) || ' ' || md5(string_agg(concat_ws(',', window_start, customer, a1_n, a2_s, a3_v, a4_v,"
		  . " a5_s, a5_n), ';' ORDER BY window_start, customer)) FROM sluice_state_$name",
		progress => "SELECT string_agg(concat_ws(',', batch_id, input_rows, num_rows_dropped_by_watermark, watermark,"
		  . " next_watermark, event_time_min, event_time_max, state_rows_total), ';' ORDER BY batch_id)"
		  . " FROM sluice.progress('$name', 100)");
	return { map { $_ => $node->safe_psql('postgres', $q{$_}) } keys %q };
}

# ALTER SYSTEM, and wait until the postmaster, which forks the workers, has it
sub window_memory
{
	my ($value, $shown) = @_;
	$node->safe_psql('postgres', $value ? "ALTER SYSTEM SET sluice.window_memory = '$value'"
		: 'ALTER SYSTEM RESET sluice.window_memory');
	$node->reload;
	wait_until($node, 'SHOW sluice.window_memory', $shown, "sluice.window_memory is $shown");
	return;
}

my $log_start = -s $node->logfile;
my @pipelines;
for my $kind ('window', 'session')
{
for my $mode ('append', 'update')
{
	for my $path ('parsed', 'transform')
	{
		my $big = "${kind}_${mode}_${path}_big";
		my $small = "${kind}_${mode}_${path}_small";
		push @pipelines, "${kind}_${mode}_${path}";
		pipeline($big, $mode, $path eq 'transform' ? $shuffle : undef, $kind);
		pipeline($small, $mode, $path eq 'transform' ? $shuffle : undef, $kind);
		is($node->safe_psql('postgres', "SELECT sluice.run_once('$big')"), '4', "$big: 4 batches");
		window_memory('64kB', '64kB');
		is($node->safe_psql('postgres', "SELECT sluice.run_once('$small')"), '4', "$small: 4 batches");
		window_memory(undef, '256MB');

		my $want = digest($big);
		my $got = digest($small);
		like($want->{out}, qr/^[1-9]\d* /, "$big: wrote windows ($want->{out})");
		if ($path eq 'transform')
		{
			like($want->{late}, qr/^[1-9]\d* /, "$big: kept late rows ($want->{late})");
		}
		is($got->{$_}, $want->{$_}, "$small: the same $_ as with all the memory") for sort keys %$want;
	}
}
}

my $log = slurp_file($node->logfile, $log_start);
for my $p (@pipelines)
{
	like($log, qr/batch \d+ of pipeline "${p}_small" was folded in \d+ parts/, "${p}_small: its batches were split");
	unlike($log, qr/pipeline "${p}_big" was folded/, "${p}_big: its batches were not");
}

$node->stop;
done_testing();

# Event-time windows against a reference model (SluiceTest::window_model)
# of the semantics in issue 4: a bank-like feed with out-of-order, very late
# and NULL-time rows, one file per batch, through tumbling and sliding
# windows in each output mode, compared row for row: the target, the late
# rows, each batch's progress (rows dropped by the watermark, watermark used
# and left, event time range, state rows) and the state left (bounded by the
# watermark).  Then small cases ported from Spark's EventTimeWatermarkSuite.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('windows_model', "timezone = 'UTC'\n");

my $nfiles = 20;
my $dir = $node->basedir . '/feed';
my @paths = gen_window_feed($dir, files => $nfiles, rows => 150, seed => 9, delay_s => 600);

my @cases = (
	[ 'tum_append',   size_s => 600, mode => 'append',   delay_s => 600 ],
	[ 'tum_update',   size_s => 600, mode => 'update',   delay_s => 600 ],
	[ 'tum_complete', size_s => 600, mode => 'complete', delay_s => 600 ],
	[ 'tum_update_nodelay', size_s => 600, mode => 'update' ],
	[ 'tum_append_nodelay', size_s => 600, mode => 'append', delay_s => 0 ],
	[ 'sld_append',   size_s => 600, slide_s => 300, mode => 'append',   delay_s => 600 ],
	[ 'sld_update',   size_s => 600, slide_s => 300, mode => 'update',   delay_s => 600 ],
	[ 'sld_complete', size_s => 600, slide_s => 300, mode => 'complete', delay_s => 600 ],
	# a slide that does not divide the size: 3 windows for some rows, 2 for others
	[ 'sld_odd_append', size_s => 600, slide_s => 240, mode => 'append', delay_s => 600 ],
	[ 'sld_odd_update', size_s => 600, slide_s => 240, mode => 'update', delay_s => 420 ],
);

for my $c (@cases)
{
	my ($name, %o) = @$c;
	create_window_pipeline($node, $name, $dir, %o);
	my $model = window_model(\@paths, %o);

	is($node->safe_psql('postgres', "SELECT sluice.run_once('$name')"),
		$nfiles, "$name: run_once commits one batch per file");

	# the feed exercises what it should (checked on the model, so a change
	# of the generator cannot silently make the comparisons trivial)
	if ($name eq 'tum_append')
	{
		my @drop = map { (split /\|/)[2] } @{ $model->{batches} };
		my $nlate = grep { (split /\|/)[5] ne '' } @{ $model->{late} };
		my $nnull = grep { (split /\|/)[5] eq '' } @{ $model->{late} };
		cmp_ok($nlate, '>=', 50, "$name: the feed has late rows ($nlate) besides NULL-time ones ($nnull)");
		cmp_ok($nnull, '>=', 10, "$name: the feed has NULL-time rows");
		my @b4 = split /\|/, $model->{batches}[3];
		is($b4[3], $b4[4], "$name: batch 4 (only stale rows) leaves the watermark where it was");
		my %wm = map { (split /\|/)[3] => 1 } @{ $model->{batches} };
		ok(scalar(grep { $_ ne '' && $_ % 600_000_000 == 0 } keys %wm) >= 2,
			"$name: some batches run with a watermark on a window boundary");
		cmp_ok(scalar(@{ $model->{target} }), '>=', 40, "$name: many windows emitted");
	}
	if ($name eq 'sld_append')
	{
		# a row late for one of its windows but not the other: dropped once
		# per late pair, kept once in late_rows
		my %late_ids;
		$late_ids{ (split /\|/)[2] } = 1 for @{ $model->{late} };
		my $pairs = 0;
		$pairs += (split /\|/)[2] for @{ $model->{batches} };
		cmp_ok($pairs, '>', scalar(keys %late_ids), "$name: some rows have one late and one on-time window");
	}

	window_check_model($node, $name, $model, $name);

	if ($o{mode} ne 'complete' && defined $o{delay_s})
	{
		# bounded state: nothing the watermark passed is kept
		is($node->safe_psql('postgres',
				"SELECT count(*) FILTER (WHERE s.window_end <= p.watermark) || '/' || count(*)"
				  . " FROM sluice_state_$name s, sluice.pipelines p WHERE p.name = '$name'"),
			'0/' . scalar(@{ $model->{state} }), "$name: state holds only windows with window_end > W");
		cmp_ok(scalar(@{ $model->{state} }), '<=', 6 * 5, "$name: state is small (a few windows per customer)");
	}
}

# ---------------------------------------------------------------------------
# Ported from Spark's EventTimeWatermarkSuite: value v is the event time
# 1970-01-01 00:00:00+00 + v seconds, windows of 5 seconds, a watermark delay
# of 10 seconds, count(*) per window; one AddData = one file = one batch.
# sluice emits append-mode windows in the batch whose watermark closes them,
# as Spark does with no-data micro-batches (its default).

my $mtime = time() - 3600;
my $fileno = 0;

sub spark_pipeline
{
	my ($name, $mode, %o) = @_;
	my $delay = $o{delay} // "'10 seconds'";
	my $d = $node->basedir . "/spark_$name";
	mkdir $d or die "mkdir $d: $!";
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE ${name}_out (window_start timestamptz, window_end timestamptz, count bigint);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$d', 'id bigint, ts timestamptz', max_files_per_trigger => 1),
  sluice.window_sink('${name}_out', '5 seconds', output_mode => '$mode'),
  event_time => 'ts', watermark_delay => $delay);
});
	return $d;
}

# AddData + process it: one file, run_once
sub add_data
{
	my ($name, $d, @values) = @_;
	my $path = sprintf('%s/add-%03d.csv', $d, ++$fileno);
	open my $fh, '>', "$path.tmp" or die $!;
	print $fh "id,ts\n";
	my $i = 0;
	for my $v (@values)
	{
		my @t = gmtime($v);
		printf $fh "%d,%s\n", ++$i, sprintf('%04d-%02d-%02d %02d:%02d:%02d+00',
			$t[5] + 1900, $t[4] + 1, $t[3], $t[2], $t[1], $t[0]);
	}
	close $fh;
	$mtime += 60;
	utime($mtime, $mtime, "$path.tmp");
	rename("$path.tmp", $path) or die $!;
	is($node->safe_psql('postgres', "SELECT sluice.run_once('$name')"), 1, "$name: AddData(@values) is one batch");
	return;
}

# the answer so far: "start:count" sorted by start
sub answer
{
	my ($name) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(format('%s:%s', extract(epoch FROM window_start)::int, count), ' '"
		  . " ORDER BY window_start), '') FROM ${name}_out");
}

# dropped|watermark|next_watermark|state_rows_total|sink_rows of the last batch (seconds)
sub last_batch
{
	my ($name) = @_;
	return $node->safe_psql('postgres',
		"SELECT concat_ws('|', num_rows_dropped_by_watermark, coalesce(extract(epoch FROM watermark)::int::text, 'NULL'),"
		  . " coalesce(extract(epoch FROM next_watermark)::int::text, 'NULL'), state_rows_total, sink_rows)"
		  . " FROM sluice.progress('$name', 1)");
}

{
	# test("append mode")
	my $n = 'spark_append';
	my $d = spark_pipeline($n, 'append');
	add_data($n, $d, 10, 11, 12, 13, 14, 15);
	is(answer($n), '', 'append mode: CheckNewAnswer() (nothing closed yet)');
	add_data($n, $d, 25);    # Advance watermark to 15 seconds
	is(answer($n), '10:5', 'append mode: CheckNewAnswer((10, 5)) once the watermark passes its end');
	is(last_batch($n), '0|5|15|2|1', 'append mode: assertNumStateRows(2), nothing dropped');
	add_data($n, $d, 10);    # Should not emit anything as data less than watermark
	is(answer($n), '10:5', 'append mode: late data is not emitted and the window is not emitted again');
	is(last_batch($n), '1|15|15|2|0', 'append mode: assertNumStateRows(2), one row dropped by the watermark');
}

{
	# test("update mode")
	my $n = 'spark_update';
	my $d = spark_pipeline($n, 'update');
	add_data($n, $d, 10, 11, 12, 13, 14, 15);
	is(answer($n), '10:5 15:1', 'update mode: CheckNewAnswer((10, 5), (15, 1))');
	is(last_batch($n), '0|NULL|5|2|2', 'update mode: two windows updated');
	add_data($n, $d, 25);    # Advance watermark to 15 seconds
	is(answer($n), '10:5 15:1 25:1', 'update mode: CheckNewAnswer((25, 1))');
	is(last_batch($n), '0|5|15|2|1', 'update mode: assertNumStateRows(2), one window updated');
	add_data($n, $d, 10, 25);    # Ignore 10 as its less than watermark
	is(answer($n), '10:5 15:1 25:2', 'update mode: CheckNewAnswer((25, 2)), 10 ignored');
	is(last_batch($n), '1|15|15|2|1', 'update mode: assertNumStateRows(2), one dropped, one window updated');
	add_data($n, $d, 10);    # Should not emit anything as data less than watermark
	is(answer($n), '10:5 15:1 25:2', 'update mode: CheckNewAnswer() for late data');
	is(last_batch($n), '1|15|15|2|0', 'update mode: assertNumStateRows(2), nothing updated');
}

{
	# update mode: late data within the delay still updates its window
	my $n = 'spark_update_within';
	my $d = spark_pipeline($n, 'update');
	add_data($n, $d, 10, 11, 25);    # watermark 15
	add_data($n, $d, 16, 17);        # [15, 20) ends after 15: not late
	is(answer($n), '10:2 15:2 25:1', 'update mode: data behind the max but within the delay updates its window');
	is(last_batch($n), '0|15|15|2|1', 'update mode: nothing dropped, [15,20) updated');
}

{
	# test("complete mode"): no eviction, nothing dropped
	my $n = 'spark_complete';
	my $d = spark_pipeline($n, 'complete');
	add_data($n, $d, 10, 11, 12);
	is(answer($n), '10:3', 'complete mode: CheckAnswer((10, 3))');
	add_data($n, $d, 25);
	is(answer($n), '10:3 25:1', 'complete mode: CheckAnswer((10, 3), (25, 1))');
	add_data($n, $d, 25);
	is(answer($n), '10:3 25:2', 'complete mode: CheckAnswer((10, 3), (25, 2))');
	add_data($n, $d, 10);
	is(answer($n), '10:4 25:2', 'complete mode: CheckAnswer((10, 4), (25, 2)): data behind the watermark counted');
	is(last_batch($n), '0|15|15|2|2', 'complete mode: nothing dropped, nothing evicted, W still tracked');
	add_data($n, $d, 25);
	is(answer($n), '10:4 25:3', 'complete mode: CheckAnswer((10, 4), (25, 3))');
}

{
	# test("event time and watermark metrics with Trigger.Once (SPARK-24699)"):
	# sluice closes windows with the watermark a batch leaves, so (10, 3)
	# comes one batch earlier than with Trigger.Once (no no-data batches)
	my $n = 'spark_metrics';
	my $d = spark_pipeline($n, 'append');
	my $stats = sub {
		$node->safe_psql('postgres',
			"SELECT concat_ws('|', extract(epoch FROM event_time_min)::int, extract(epoch FROM event_time_max)::int,"
			  . " coalesce(extract(epoch FROM watermark)::int::text, 'NULL'), extract(epoch FROM next_watermark)::int)"
			  . " FROM sluice.progress('$n', 1)");
	};
	add_data($n, $d, 15);
	is($stats->(), '15|15|NULL|5', 'metrics: min 15 max 15, watermark updated to 15 - 10 = 5');
	add_data($n, $d, 10, 12, 14);
	is($stats->(), '10|14|5|5', 'metrics: min 10 max 14, watermark 5 stays at 5');
	is(answer($n), '', 'metrics: nothing closed');
	add_data($n, $d, 25);
	is($stats->(), '25|25|5|15', 'metrics: watermark updated to 25 - 10 = 15');
	is(answer($n), '10:3', 'metrics: (10, 3) closed by watermark 15');
	add_data($n, $d, 50);
	is($stats->(), '50|50|15|40', 'metrics: watermark updated to 50 - 10 = 40');
	is(answer($n), '10:3 15:1 25:1', 'metrics: (15, 1), (25, 1) closed by watermark 40');
	add_data($n, $d, 50);
	is($stats->(), '50|50|40|40', 'metrics: watermark 40 used, unchanged');
}

{
	# test("recovery"): the watermark and the state survive restarts
	my $n = 'spark_recovery';
	my $d = spark_pipeline($n, 'append');
	add_data($n, $d, 10, 11, 12, 13, 14, 15);
	add_data($n, $d, 25);    # Advance watermark to 15 seconds
	is(answer($n), '10:5', 'recovery: CheckAnswer((10, 5))');
	$node->restart;
	add_data($n, $d, 10, 27, 30);    # Advance watermark to 20 seconds, 10 should be ignored
	is(answer($n), '10:5 15:1', 'recovery: after a restart, 10 ignored, (15, 1) closed');
	is(last_batch($n), '1|15|20|2|1', 'recovery: the batch after the restart used watermark 15');
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', "SELECT extract(epoch FROM watermark)::int FROM sluice.pipelines WHERE name = '$n'"),
		'20', 'recovery: watermark 20 after an immediate stop');
	add_data($n, $d, 17);    # Watermark should still be 20 seconds, 17 should be ignored
	is(answer($n), '10:5 15:1', 'recovery: 17 ignored');
	is(last_batch($n), '1|20|20|2|0', 'recovery: watermark still 20');
	add_data($n, $d, 40);    # Advance watermark to 30 seconds, emit first data 25
	is(answer($n), '10:5 15:1 25:2', 'recovery: CheckNewAnswer((25, 2))');
}

{
	# Windows are fixed durations aligned to the epoch whatever the timezone
	# of the pipeline's owner: a '1 day' window lasts 24 hours also across a
	# DST change (Europe/Paris, 2024-03-31), and a row near its end is in it.
	my $d = $node->basedir . '/dst';
	mkdir $d or die "mkdir $d: $!";
	open my $fh, '>', "$d/dst.csv" or die $!;
	print $fh "id,ts\n1,2024-03-30 12:00:00+00\n2,2024-03-31 12:00:00+00\n3,2024-03-31 23:30:00+00\n"
	  . "4,2024-04-01 12:00:00+00\n5,2024-04-05 12:00:00+00\n";
	close $fh;
	$node->safe_psql(
		'postgres', qq{
CREATE ROLE paris LOGIN IN ROLE pg_read_server_files;
ALTER ROLE paris SET timezone = 'Europe/Paris';
GRANT CREATE ON SCHEMA public TO paris;
SET ROLE paris;
CREATE TABLE dst_out (window_start timestamptz, window_end timestamptz, count bigint);
SELECT sluice.create_pipeline('dst', sluice.csv_source('$d', 'id bigint, ts timestamptz'),
  sluice.window_sink('dst_out', '1 day'), event_time => 'ts', watermark_delay => '1 hour');
});
	is($node->safe_psql('postgres', "SELECT sluice.run_once('dst')"), 1, 'dst: one batch');
	is($node->safe_psql('postgres',
			"SELECT string_agg(format('%s..%s:%s', to_char(window_start, 'MM-DD HH24:MI'), to_char(window_end, 'MM-DD HH24:MI'),"
			  . " count), ' ' ORDER BY window_start) FROM dst_out"),
		'03-30 00:00..03-31 00:00:1 03-31 00:00..04-01 00:00:2 04-01 00:00..04-02 00:00:1',
		"dst: '1 day' windows are 24 hours (UTC-aligned) across a DST change of the owner's timezone");
	is($node->safe_psql('postgres', "SELECT num_rows_dropped_by_watermark FROM sluice.progress('dst', 1)"),
		'0', 'dst: no row dropped');
}

{
	# test("delay threshold should not be negative.")
	my ($ret, $out, $err) = $node->psql('postgres',
		"SELECT sluice.create_pipeline('neg', sluice.csv_source('$dir', 'id bigint, ts timestamptz'),"
		  . " sluice.window_sink('spark_append_out', '5 seconds'), event_time => 'ts',"
		  . " watermark_delay => '-10 seconds')");
	like($err, qr/watermark_delay must not be negative/, 'a negative delay is refused');
}

$node->stop;
done_testing();

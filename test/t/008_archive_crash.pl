# Crashes around the file lifecycle and bad-row isolation:
# 1. after => 'archive': every batch dies right after its commit, before its
#    file is moved (sluice.crash_at = 'after_commit').  In the end every file
#    is in the archive directory exactly once, none is left in the source
#    directory, the table holds every row once, each batch committed once.
# 2. on_error => 'reject': every batch dies on its first attempt (after
#    reading its first, clean file); its replay fails on the bad rows of its
#    second file and is read again carefully.  Each bad line is rejected
#    exactly once, each good row is loaded exactly once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use File::Basename qw(basename);
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('archive_crash');
my $cols = $SluiceTest::COLUMNS;

sub csv_names
{
	my ($dir) = @_;
	opendir(my $dh, $dir) or die "could not open $dir: $!";
	my @names = sort grep { /\.csv$/ } readdir($dh);
	closedir $dh;
	return @names;
}

#
# 1. archive, crashing after every commit
#
{
	my $nfiles = 4;
	my $rows = 400;
	my $in = $node->basedir . '/arch_in';
	my $done = $node->basedir . '/arch_done';
	make_path($done);
	my @paths = gen_files($in, files => $nfiles, rows => $rows, first_id => 1, seed => 8);
	my @names = map { basename($_) } @paths;

	set_crash_at($node, 'after_commit');
	my $offset = log_size($node);
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE t_arch (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('p_arch',
  sluice.csv_source('$in', '$cols', max_files_per_trigger => 1, after => 'archive', archive_dir => '$done'),
  sluice.append_sink('t_arch'), '200 milliseconds');
SELECT sluice.start('p_arch');
});

	# every batch commits, then crashes; the file of the last batch is moved
	# by the first plan after the last crash restart
	wait_for_log_count($node, qr/kills itself at stage "after_commit"/, $nfiles, $offset);
	wait_for_log_count($node, qr/database system is ready to accept connections/, $nfiles, $offset);
	wait_for_server($node);
	wait_until($node,
		"SELECT count(*) FILTER (WHERE f.committed) = $nfiles AND count(*) = $nfiles"
		  . " FROM sluice.file f JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = 'p_arch'",
		't', 'archive: all files committed');
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	sleep 1 while time() < $deadline && csv_names($in) > 0;

	is_deeply([ csv_names($in) ], [], 'archive: no file left in the source directory');
	is_deeply([ csv_names($done) ], \@names, 'archive: every file in the archive directory, once');
	check_table($node, 't_arch', [ map { "$done/$_" } @names ],
		'archive: the table holds the rows of the archived files exactly once');
	is(progress_summary($node, 'p_arch'),
		join(' ', map { "$_:committed:1:1" } 1 .. $nfiles),
		'archive: each batch committed once, on its first attempt');
	is(log_count($node, qr/kills itself at stage "after_commit"/, $offset),
		$nfiles, 'archive: every batch crashed right after its commit');
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = 'p_arch'"),
		'0', 'archive: nothing recorded as an error');

	# a later plan (the worker keeps planning) neither re-reads nor moves anything more
	set_crash_at($node, '');
	wait_until($node,
		"SELECT state = 'running' AND worker_pid IS NOT NULL AND files_pending = 0"
		  . " FROM sluice.pipelines WHERE name = 'p_arch'",
		't', 'archive: worker back');
	sleep 1;
	is($node->safe_psql('postgres', 'SELECT count(*) FROM t_arch'), $nfiles * $rows,
		'archive: no row read twice');
	$node->safe_psql('postgres', "SELECT sluice.stop('p_arch')");
	wait_until($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		't', 'archive: worker stopped');
}

#
# 2. reject, crashing on the first attempt of every batch
#
{
	my $nfiles = 4;
	my $rows = 300;
	my $stage = $node->basedir . '/rej_stage';
	my $in = $node->basedir . '/rej_in';
	make_path($in);
	my @paths = gen_files($stage, files => $nfiles, rows => $rows, first_id => 100_001, seed => 9,
		prefix => 'rej');
	my $good = files_stats(@paths);

	# bad lines go into the 2nd and 4th file, right after the header (lines 2..5):
	# so each batch (two files) has a clean first file and a bad second one
	my @bad = (
		[ 'abc,1,1.00,2024-01-01 00:00:00+00', '22P02' ],
		[ '900001,99999999999,1.00,2024-01-01 00:00:00+00', '22003' ],
		[ '900002,1,1.00', '22P04' ],
		[ '900003,1,-5.00,2024-01-01 00:00:00+00', '23514' ]);
	my @want;
	for my $i (1, 3)
	{
		my $path = $paths[$i];
		my $mtime = (stat $path)[9];
		open my $fh, '<', $path or die;
		my ($header, @rest) = <$fh>;
		close $fh;
		open $fh, '>', $path or die;
		print $fh $header, (map { "$_->[0]\n" } @bad), @rest;
		close $fh;
		utime($mtime, $mtime, $path) or die;
		my $line = 2;
		push @want, map { join('|', basename($path), $line++, $_->[1]) } @bad;
	}
	rename($_, "$in/" . basename($_)) or die for @paths;

	for my $crash ('after_plan', 'after_read')
	{
		my $name = "p_$crash";
		my $table = "t_$crash";
		set_crash_at($node, $crash);
		my $offset = log_size($node);
		$node->safe_psql(
			'postgres', qq{
CREATE TABLE $table (id bigint, customer int, amount numeric(12,2) CHECK (amount >= 0), ts timestamptz);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$in', '$cols', max_files_per_trigger => 2, on_error => 'reject'),
  sluice.append_sink('$table'), '200 milliseconds', backpressure => false);
SELECT sluice.start('$name');
});
		wait_for_log_count($node, qr/kills itself at stage "\Q$crash\E"/, 2, $offset);
		wait_for_server($node);
		wait_until($node,
			"SELECT count(*) FILTER (WHERE f.committed) = $nfiles AND count(*) = $nfiles"
			  . " FROM sluice.file f JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'",
			't', "$crash: all files committed");

		is_deeply(table_stats($node, $table), $good, "$crash: every good row exactly once");
		is($node->safe_psql('postgres',
				"SELECT string_agg(format('%s|%s|%s', regexp_replace(file, '^.*/', ''), line, sqlstate), ' '"
				  . " ORDER BY file, line) FROM sluice.rejects WHERE pipeline = '$name'"),
			join(' ', @want), "$crash: every bad line rejected exactly once");
		is($node->safe_psql('postgres',
				"SELECT count(*) FROM sluice.rejects WHERE pipeline = '$name' AND raw_line IS NOT NULL"),
			scalar(@want), "$crash: with its raw line");
		is($node->safe_psql('postgres',
				"SELECT string_agg(format('%s:%s:%s:%s', batch_id, attempts, input_rows, rejected_rows), ' '"
				  . " ORDER BY batch_id) FROM sluice.progress('$name')"),
			join(' ', map { "$_:3:" . (2 * $rows + @bad) . ':' . scalar(@bad) } 1 .. 2),
			"$crash: each batch: crashed, replayed, read carefully (attempts 3); rows and rejects counted once");
		is(log_count($node, qr/kills itself at stage "\Q$crash\E"/, $offset), 2,
			"$crash: each batch crashed once");
		is($node->safe_psql('postgres',
				"SELECT format('%s|%s|%s', state, last_error, input_rows) FROM sluice.pipelines WHERE name = '$name'"),
			'running||' . (2 * (2 * $rows + @bad)), "$crash: the pipeline runs on, no error");

		set_crash_at($node, '');
		$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
		wait_until($node,
			"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
			't', "$crash: worker stopped");
	}
}

is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.batch WHERE status <> 'committed'"),
	'0', 'no batch left planned');

$node->stop;
done_testing();

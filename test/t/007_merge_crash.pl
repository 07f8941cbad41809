# A merge pipeline and a function pipeline whose worker dies (SIGKILL, so the
# whole server crash-restarts) at each stage of every batch: the merge target
# ends with exactly the last row of each key in file, then line order (computed
# here from the files), and the function is called for each batch id exactly
# once, with that batch's rows.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('merge_crash');

my $per_batch = 2;
my $rows = 150;
my $nkeys = 100;

# Four files whose names do not follow their mtimes: part-1 and part-4 have the
# same mtime (so name order decides between them), part-3 is the oldest and
# part-2 the newest.  File order is part-3, part-1, part-4, part-2.  Each line
# is id,v,amount with ids drawn from 1..$nkeys, so keys repeat within files and
# across files and batches.  Returns the files in file order, each as
# [name, [[id, v, amount], ...]].
sub write_files
{
	my ($dir, $seed) = @_;
	make_path($dir);
	srand($seed);
	my $base = time() - 86400;
	my %mtime = ('part-1' => $base + 2, 'part-2' => $base + 3, 'part-3' => $base + 1, 'part-4' => $base + 2);
	my %lines;
	for my $name (sort keys %mtime)
	{
		my $path = "$dir/$name.csv";
		open my $fh, '>', "$path.tmp" or die "could not write $path.tmp: $!";
		print $fh "id,v,amount\n";
		for my $line (1 .. $rows)
		{
			my $cents = int(rand(10_000_000));
			my $row = [ 1 + int(rand($nkeys)), "$name:$line", sprintf('%d.%02d', int($cents / 100), $cents % 100) ];
			push @{ $lines{$name} }, $row;
			print $fh join(',', @$row), "\n";
		}
		close $fh or die "could not close $path.tmp: $!";
		utime($mtime{$name}, $mtime{$name}, "$path.tmp") or die "utime $path.tmp: $!";
		rename("$path.tmp", $path) or die "rename $path.tmp: $!";
	}
	return map { [ $_, $lines{$_} ] } sort { $mtime{$a} <=> $mtime{$b} || $a cmp $b } keys %mtime;
}

# "id:v:amount,..." of the last row of each key, by id
sub last_per_key
{
	my (@files) = @_;
	my %last;
	for my $f (@files)
	{
		$last{ $_->[0] } = $_ for @{ $f->[1] };
	}
	return join(',', map { join(':', @{ $last{$_} }) } sort { $a <=> $b } keys %last);
}

# sum of amounts, as numeric text
sub cents_sum
{
	my $cents = 0;
	for my $a (@_)
	{
		my ($u, $f) = split /\./, $a;
		$cents += $u * 100 + $f;
	}
	return sprintf('%d.%02d', int($cents / 100), $cents % 100);
}

# Start a pipeline with sluice.crash_at set, and wait until it read all its
# files and survived one crash restart per batch, with its worker back and idle.
sub run_through_crashes
{
	my ($name, $stage, $nfiles, $nbatches) = @_;
	my $offset = log_size($node);
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");
	# connects through the crash restarts
	wait_until($node,
		"SELECT count(*) FILTER (WHERE f.committed) = $nfiles AND count(*) = $nfiles"
		  . " FROM sluice.file f JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'",
		't', "$name: all files committed");
	# after_commit crashes once more after the last commit
	wait_for_log_count($node, qr/all server processes terminated; reinitializing/, $nbatches, $offset);
	wait_for_log_count($node, qr/database system is ready to accept connections/, $nbatches, $offset);
	wait_for_server($node);
	wait_until($node,
		"SELECT state = 'running' AND worker_pid IS NOT NULL AND batch_in_flight IS NULL"
		  . " FROM sluice.pipelines WHERE name = '$name'",
		't', "$name: worker back and idle");
	is(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset),
		$nbatches, "$name: the worker killed itself once per batch");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"),
		'0', "$name: no error recorded");
	my $attempts = $stage eq 'after_commit' ? 1 : 2;
	is(progress_summary($node, $name),
		join(' ', map { "$_:committed:$attempts:$per_batch" } 1 .. $nbatches),
		"$name: each batch committed once, attempts $attempts");
	return;
}

sub stop_pipeline
{
	my ($name) = @_;
	$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
	wait_until($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		't', "$name: worker stopped");
	return;
}

my @stages = qw(after_plan after_read after_sink before_commit after_commit);
for my $i (0 .. $#stages)
{
	my $stage = $stages[$i];
	my $dir = $node->basedir . "/in_$stage";
	my @files = write_files($dir, 100 + $i);
	my $nfiles = @files;
	my $nbatches = $nfiles / $per_batch;
	my @batches = map { [ @files[ $_ * $per_batch .. ($_ + 1) * $per_batch - 1 ] ] } 0 .. $nbatches - 1;
	# every other target has no unique index on the key
	my $pk = $i % 2 == 0 ? 'PRIMARY KEY' : '';

	$node->safe_psql(
		'postgres', qq{
CREATE TABLE m_$stage (id int $pk, v text, amount numeric(12,2), loaded_at timestamptz DEFAULT clock_timestamp());
SELECT sluice.create_pipeline('m_$stage', sluice.csv_source('$dir', 'id int, v text, amount numeric',
                                                            max_files_per_trigger => $per_batch),
                              sluice.merge_sink('m_$stage', '{id}'), '200 milliseconds', backpressure => false);
CREATE TABLE flog_$stage (batch_id bigint, n bigint, total numeric, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION fsink_$stage(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE
    n bigint;
    s numeric;
BEGIN
    EXECUTE format('SELECT count(*), sum(amount) FROM %s', batch) INTO n, s;
    INSERT INTO flog_$stage (batch_id, n, total) VALUES (batch_id, n, s);
END
\$\$;
SELECT sluice.create_pipeline('f_$stage', sluice.csv_source('$dir', 'id int, v text, amount numeric',
                                                            max_files_per_trigger => $per_batch),
                              sluice.function_sink('fsink_$stage(bigint, regclass)'), '200 milliseconds',
                              backpressure => false);
});
	set_crash_at($node, $stage);

	# the merge pipeline
	run_through_crashes("m_$stage", $stage, $nfiles, $nbatches);
	is($node->safe_psql('postgres',
			"SELECT string_agg(format('%s:%s:%s', id, v, amount), ',' ORDER BY id) FROM m_$stage"),
		last_per_key(@files), "m_$stage: the table holds the last row of each key in file, then line order");
	is($node->safe_psql('postgres', "SELECT count(*) - count(DISTINCT id) FROM m_$stage"),
		'0', "m_$stage: no key twice" . ($pk ? '' : ' (no unique index)'));
	is($node->safe_psql('postgres',
			"SELECT string_agg(sink_rows::text, ',' ORDER BY batch_id) FROM sluice.progress('m_$stage', 100)"),
		join(',', map { my %k; $k{ $_->[0] } = 1 for map { @{ $_->[1] } } @$_; scalar(keys %k) } @batches),
		"m_$stage: sink_rows of each batch is the number of its distinct keys");
	stop_pipeline("m_$stage");

	# the function pipeline over the same files
	run_through_crashes("f_$stage", $stage, $nfiles, $nbatches);
	is($node->safe_psql('postgres',
			"SELECT string_agg(format('%s:%s:%s', batch_id, n, total), ',' ORDER BY batch_id, at) FROM flog_$stage"),
		join(',', map {
				my $b = $_;
				my @r = map { @{ $_->[1] } } @{ $batches[$b] };
				($b + 1) . ':' . scalar(@r) . ':' . cents_sum(map { $_->[2] } @r)
			} 0 .. $nbatches - 1),
		"f_$stage: the function ran once per batch id, with the rows of that batch's files");
	stop_pipeline("f_$stage");
	set_crash_at($node, '');
}

is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.batch WHERE status <> 'committed'"),
	'0', 'no batch left planned');

$node->stop;
done_testing();

# Streaming deduplication (create_pipeline(..., dedupe)) against a reference
# model written here from the semantics of issue 11: in the order rows are
# read, a row whose event time is NULL or at or before W (the watermark the
# batch started with) is late; a row whose key was seen (in the batch or an
# earlier one, and not yet forgotten) is a duplicate; both are dropped before
# the sink.  After the batch W = greatest(W, max event time - delay), and the
# keys whose first event time W passed are forgotten.  A feed of bank rows
# resent within a file and across files, some late, some with NULL times,
# through an append sink (by id, and by two nullable columns), a function
# sink and a window sink; compared with the model: the rows the sink got,
# each batch's counts and watermarks, and the keys remembered (bounded by
# the watermark).  Then the same through a crash at every stage of every
# batch, and a worker killed mid-batch and an immediate stop.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use File::Path qw(make_path);
use Time::Local qw(timegm);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('dedupe', "timezone = 'UTC'\n");
my $T0 = 1_704_067_200;    # 2024-01-01 00:00:00 UTC

# $nfiles files of about $rows rows: ids new in each file at times moving
# 300 s a file, and resent rows (the same id, the same or a later time) from
# this file and the three before it, late rows and NULL times.
sub gen_feed
{
	my ($dir, %o) = @_;
	my ($nfiles, $rows) = ($o{files}, $o{rows});
	srand($o{seed});
	make_path($dir);
	my (@paths, @sent);
	my $id = 0;
	my $mtime = time() - 86400;
	for my $k (1 .. $nfiles)
	{
		my @batch;
		for (1 .. $rows)
		{
			my $r = rand();
			if ($r < 0.25 && @sent)
			{
				# resent: an earlier row as it was, or with a later time
				my $old = $sent[ int(rand(@sent)) ];
				my @row = @$old;
				$row[3] += int(rand(120)) if defined $row[3] && rand() < 0.3;
				push @batch, \@row;
				next;
			}
			my $t = $T0 + $k * 300 + int(rand(300));
			$t = $T0 + $k * 300 - 1200 - int(rand(1200)) if $r > 0.93;    # late, mostly
			$t = undef if $r > 0.98;
			my $cust = rand() < 0.05 ? undef : 1 + int(rand(20));
			my $cents = rand() < 0.05 ? undef : int(rand(100_000));
			my $row = [ ++$id, $cust, $cents, $t ];
			push @batch, $row;
			push @sent, $row;
		}
		# resends within the file
		push @batch, [ @{ $batch[ int(rand(@batch)) ] } ] for 1 .. int($rows / 20);
		@sent = grep { !defined $_->[3] || $_->[3] > $T0 + ($k - 3) * 300 } @sent;
		for (my $i = $#batch; $i > 0; $i--)
		{
			my $j = int(rand($i + 1));
			@batch[ $i, $j ] = @batch[ $j, $i ];
		}
		my $path = sprintf('%s/f-%03d.csv', $dir, $k);
		open my $fh, '>', "$path.tmp" or die $!;
		print $fh "id,customer_id,amount,ts\n";
		for my $r (@batch)
		{
			my ($i, $c, $cents, $t) = @$r;
			my $ts = '';
			if (defined $t)
			{
				my @g = gmtime($t);
				$ts = sprintf('%04d-%02d-%02d %02d:%02d:%02d+00', $g[5] + 1900, $g[4] + 1, @g[ 3, 2, 1, 0 ]);
			}
			printf $fh "%d,%s,%s,%s\n", $i, $c // '', defined $cents ? sprintf('%d.%02d', int($cents / 100), $cents % 100) : '', $ts;
		}
		close $fh;
		$mtime += 60;
		utime($mtime, $mtime, "$path.tmp");
		rename("$path.tmp", $path) or die $!;
		push @paths, $path;
	}
	return @paths;
}

# The model.  Rows are read as text: "id|customer_id|amount|ts" with '' for
# NULL, ts in seconds.  Returns {rows => [kept rows], batches => [lines],
# keys => [remembered keys], W, kept_by_batch => [[rows] per batch]}.
sub dedupe_model
{
	my ($paths, %o) = @_;
	my $delay = $o{delay_s};
	my @key = @{ $o{key} };    # indexes into the row
	my (%state, @rows, @batches, @by_batch, $W);
	my $b = 0;
	for my $path (@$paths)
	{
		$b++;
		open my $fh, '<', $path or die $!;
		<$fh>;
		my ($late, $dups, $n, $max) = (0, 0, 0, undef);
		my %first;
		my @kept;
		while (my $line = <$fh>)
		{
			chomp $line;
			$n++;
			my @f = split /,/, $line, -1;
			my $t;
			if ($f[3] ne '')
			{
				my ($y, $mo, $d, $h, $mi, $s) = $f[3] =~ /^(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)/;
				$t = timegm($s, $mi, $h, $d, $mo - 1, $y);
				$max = $t if !defined $max || $t > $max;
			}
			if (!defined $t || (defined $W && $t <= $W))
			{
				$late++;
				next;
			}
			my $k = join('|', @f[@key]);
			if (exists $state{$k} || exists $first{$k})
			{
				$dups++;
				next;
			}
			$first{$k} = $t;
			push @kept, join('|', @f[ 0 .. 2 ], $t);
		}
		close $fh;
		%state = (%state, %first);
		my $newW = $W;
		$newW = $max - $delay if defined $max && (!defined $newW || $max - $delay > $newW);
		if (defined $newW)
		{
			delete $state{$_} for grep { $state{$_} <= $newW } keys %state;
		}
		push @batches, join('|', $b, $n, scalar(@kept), $late, $dups, $W // '', $newW // '', scalar(keys %state));
		push @rows, @kept;
		push @by_batch, \@kept;
		$W = $newW;
	}
	return { rows => [ sort @rows ], batches => \@batches, keys => [ sort keys %state ], W => $W,
		kept_by_batch => \@by_batch };
}

my $COLS = 'id bigint, customer_id int, amount numeric(12,2), ts timestamptz';
my $ROW = "concat_ws('|', id, coalesce(customer_id::text, ''), coalesce(amount::text, ''), extract(epoch FROM ts)::bigint)";

sub lines
{
	my ($sql) = @_;
	return [ sort grep { $_ ne '' } split /\n/, $node->safe_psql('postgres', $sql) ];
}

sub db_batches
{
	my ($name) = @_;
	return [ grep { $_ ne '' } split /\n/, $node->safe_psql('postgres',
		"SELECT concat_ws('|', batch_id, input_rows, coalesce(sink_rows::text, ''), num_rows_dropped_by_watermark,"
		  . " num_duplicates_dropped, coalesce(extract(epoch FROM watermark)::bigint::text, ''),"
		  . " coalesce(extract(epoch FROM next_watermark)::bigint::text, ''), state_rows_total)"
		  . " FROM sluice.progress('$name', 1000) ORDER BY batch_id") ];
}

# the append pipeline's target, its batches and its keys equal the model
sub check_append
{
	my ($name, $model, $keycols, $what, %o) = @_;
	rows_match(lines("SELECT $ROW FROM ${name}_out"), $model->{rows}, "$what: the sink got the model's rows");
	my $batches = $model->{batches};
	if ($o{function})
	{
		# a function sink's sink_rows is NULL
		$batches = [ map { my @f = split /\|/; $f[2] = ''; join('|', @f) } @$batches ];
	}
	rows_match(db_batches($name), $batches,
		"$what: per batch: input rows, rows to the sink, late, duplicates, watermarks, keys remembered");
	rows_match(lines("SELECT concat_ws('|', " . join(', ', map { "coalesce(${_}::text, '')" } @$keycols) . ")"
			  . " FROM sluice_dedupe_$name"), $model->{keys}, "$what: the keys remembered are the model's");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice_dedupe_$name d, sluice.pipelines p"
			  . " WHERE p.name = '$name' AND d.sluice_event_time <= p.watermark"), '0',
		"$what: no key the watermark passed is kept");
	return;
}

sub append_pipeline
{
	my ($name, $dir, $dedupe, %o) = @_;
	my $trigger = $o{trigger} // '1 second';
	$node->safe_psql('postgres', qq{
CREATE TABLE ${name}_out (id bigint, customer_id int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('$name', sluice.csv_source('$dir', '$COLS', max_files_per_trigger => 1),
  sluice.append_sink('${name}_out'), '$trigger', event_time => 'ts', watermark_delay => '600 seconds',
  backpressure => false, dedupe => '$dedupe');});
	return;
}

# 1. the model, through each kind of sink
my $nfiles = 12;
my $dir = $node->basedir . '/feed';
my @paths = gen_feed($dir, files => $nfiles, rows => 400, seed => 26);

{
	my $model = dedupe_model(\@paths, delay_s => 600, key => [0]);
	my ($late, $dups) = (0, 0);
	for (@{ $model->{batches} })
	{
		my @f = split /\|/;
		$late += $f[3];
		$dups += $f[4];
	}
	cmp_ok($dups, '>=', 500, "the feed resends rows ($dups duplicates in the model)");
	cmp_ok($late, '>=', 100, "the feed has late rows ($late in the model)");
	cmp_ok(scalar(@{ $model->{keys} }), '<', scalar(@{ $model->{rows} }) / 3,
		'the model forgets most keys: state is bounded by the watermark');

	append_pipeline('d_id', $dir, '{id}');
	is($node->safe_psql('postgres', "SELECT sluice.run_once('d_id')"), $nfiles, "d_id: one batch per file");
	check_append('d_id', $model, ['id'], 'd_id');
	# an id comes through again only once the watermark passed its first
	# time, which the model above has: the feed has some
	cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM (SELECT id FROM d_id_out GROUP BY id HAVING count(*) > 1) s"),
		'>=', 1, 'd_id: some ids came again after their key was forgotten');
}

{
	# two nullable columns: NULLs are equal, as GROUP BY has them
	my $model = dedupe_model(\@paths, delay_s => 600, key => [ 1, 2 ]);
	append_pipeline('d_pair', $dir, '{customer_id, amount}');
	is($node->safe_psql('postgres', "SELECT sluice.run_once('d_pair')"), $nfiles, "d_pair: one batch per file");
	check_append('d_pair', $model, [ 'customer_id', 'amount' ], 'd_pair');
	cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM d_pair_out WHERE customer_id IS NULL OR amount IS NULL"),
		'>=', 1, 'd_pair: rows with a NULL in the key got through once');
}

{
	# a function sink sees the rows without their duplicates, batch by batch
	my $model = dedupe_model(\@paths, delay_s => 600, key => [0]);
	$node->safe_psql('postgres', qq{
CREATE TABLE d_fn_out (batch bigint, id bigint, customer_id int, amount numeric(12,2), ts timestamptz);
CREATE FUNCTION d_fn(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS \$\$
BEGIN
    EXECUTE format('INSERT INTO d_fn_out SELECT \$1, id, customer_id, amount, ts FROM %s', batch) USING batch_id;
END \$\$;
SELECT sluice.create_pipeline('d_fn', sluice.csv_source('$dir', '$COLS', max_files_per_trigger => 1),
  sluice.function_sink('d_fn(bigint, regclass)'), event_time => 'ts', watermark_delay => '600 seconds',
  backpressure => false, dedupe => '{id}');});
	is($node->safe_psql('postgres', "SELECT sluice.run_once('d_fn')"), $nfiles, "d_fn: one batch per file");
	check_append('d_fn', $model, ['id'], 'd_fn', function => 1);
	my @per_batch = map { my $b = $_ + 1; map { "$b|$_" } @{ $model->{kept_by_batch}[$_] } } 0 .. $nfiles - 1;
	rows_match(lines("SELECT batch || '|' || $ROW FROM d_fn_out"), [ sort @per_batch ],
		'd_fn: each batch called the function with its own rows');
}

{
	# a window sink: the model's kept rows, as their own files, through window_model
	my $model = dedupe_model(\@paths, delay_s => 600, key => [0]);
	my $kdir = $node->basedir . '/kept';
	make_path($kdir);
	my @kept;
	for my $b (0 .. $nfiles - 1)
	{
		my $path = sprintf('%s/k-%03d.csv', $kdir, $b + 1);
		open my $fh, '>', $path or die $!;
		print $fh "id,customer_id,amount,ts\n";
		for (@{ $model->{kept_by_batch}[$b] })
		{
			my ($i, $c, $a, $t) = split /\|/, $_, -1;
			my @g = gmtime($t);
			printf $fh "%s,%s,%s,%04d-%02d-%02d %02d:%02d:%02d+00\n", $i, $c, $a, $g[5] + 1900, $g[4] + 1, @g[ 3, 2, 1, 0 ];
		}
		close $fh;
		push @kept, $path;
	}
	# the watermark comes from all the batch's rows, duplicates and late ones too
	my @w = map { (split /\|/, $_, -1)[6] } @{ $model->{batches} };
	my %spec = (size_s => 600, mode => 'update', delay_s => 600);
	my $wmodel = window_model(\@kept, %spec, watermarks => \@w);
	create_window_pipeline($node, 'd_win', $dir, %spec, dedupe => '{id}');
	is($node->safe_psql('postgres', "SELECT sluice.run_once('d_win')"), $nfiles, "d_win: one batch per file");
	rows_match(window_db_target($node, 'd_win_out'), $wmodel->{target},
		'd_win: the windows are those of the rows left after dedupe');
	rows_match(window_db_state($node, 'sluice_state_d_win'), $wmodel->{state}, 'd_win: window state as the model');
	rows_match(lines("SELECT concat_ws('|', batch_id, num_rows_dropped_by_watermark, num_duplicates_dropped,"
			  . " coalesce(extract(epoch FROM next_watermark)::bigint::text, ''))"
			  . " FROM sluice.progress('d_win', 1000)"),
		[ sort map { my @f = split /\|/; join('|', @f[ 0, 3, 4, 6 ]) } @{ $model->{batches} } ],
		'd_win: per batch late rows, duplicates and watermark as the dedupe model');
}

# 2. crash_at each stage of each batch
my $seed = 60;
for my $stage (qw(after_plan after_read after_sink before_commit after_commit))
{
	my $name = "c_$stage";
	my $sdir = $node->basedir . "/in_$stage";
	my $n = 4;
	my @p = gen_feed($sdir, files => $n, rows => 200, seed => $seed++);
	my $model = dedupe_model(\@p, delay_s => 600, key => [0]);
	set_crash_at($node, $stage);
	my $offset = log_size($node);
	append_pipeline($name, $sdir, '{id}', trigger => '200 milliseconds');
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");
	wait_until($node, "SELECT count(*) FROM sluice.progress('$name', 1000) WHERE status = 'committed'", $n,
		"$stage: all batches committed");
	wait_for_log_count($node, qr/database system is ready to accept connections/, $n, $offset);
	wait_for_server($node);
	is(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset), $n, "$stage: the worker killed itself once per batch");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"), '0', "$stage: no error");
	check_append($name, $model, ['id'], $stage);
	set_crash_at($node, '');
	$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
	wait_until($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		't', "$stage: worker stopped");
}

# 3. SIGKILL of the worker mid-batch, then an immediate stop, on bigger files
{
	my $name = 'c_kill';
	my $kdir = $node->basedir . '/kill_in';
	my $nkill = 8;
	my @p = gen_feed($kdir, files => $nkill, rows => 40_000, seed => 88);
	my $model = dedupe_model(\@p, delay_s => 600, key => [0]);
	append_pipeline($name, $kdir, '{id}', trigger => '100 milliseconds');
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");
	kill_then_stop($node, $name, $nkill);
	check_append($name, $model, ['id'], 'kill + immediate stop');
}

$node->stop;
done_testing();

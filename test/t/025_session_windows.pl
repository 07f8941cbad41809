# Session windows (window_sink(..., session_gap)) against a reference model
# written here, from the semantics of issue 11 alone: a row of a group at
# event time t spans [t, t + gap); rows whose spans overlap or touch form one
# session [first t, last t + gap).  A row is late when t <= W, the watermark
# the batch started with.  Append mode writes a session once, when W passes
# its end; update mode upserts the sessions a batch changed, and a session
# that swallows earlier ones replaces their rows; complete mode rewrites all.
# Sessions stay open across batches in the state table.  Compared row for
# row: the target, the late rows, each batch's progress and the state.  Then
# the same through crashes: sluice.crash_at at each stage of each batch, a
# worker killed with SIGKILL mid-batch and an immediate stop.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use List::Util qw(max);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('session_windows', "timezone = 'UTC'\n");

# aggregates of one row, or of a session (as window_model's partials)
sub agg_row
{
	my ($cents) = @_;
	return { n => 1, n_amt => 0 } unless defined $cents;
	return { n => 1, n_amt => 1, sum => $cents, lo => $cents, hi => $cents };
}

sub agg_add
{
	my ($x, $y) = @_;
	$x->{n} += $y->{n};
	$x->{n_amt} += $y->{n_amt};
	$x->{sum} += $y->{sum} if defined $y->{sum};
	$x->{lo} = $y->{lo} if defined $y->{lo} && (!defined $x->{lo} || $y->{lo} < $x->{lo});
	$x->{hi} = $y->{hi} if defined $y->{hi} && (!defined $x->{hi} || $y->{hi} > $x->{hi});
	return;
}

# The model: one batch per file.  Returns what window_model returns, and
# {grown} (sessions a batch extended that an earlier batch left open) and
# {bridged} (sessions that swallowed two or more earlier ones).
sub session_model
{
	my ($paths, %o) = @_;
	my $gap = $o{gap_s} * 1_000_000;
	my $delay = defined $o{delay_s} ? $o{delay_s} * 1_000_000 : undef;
	my $mode = $o{mode};
	my (%state, %target, @late, @batches, $W);    # %state: customer => [sessions]
	my ($grown, $bridged, $batch) = (0, 0, 0);
	for my $path (@$paths)
	{
		$batch++;
		my @rows = SluiceTest::_read_feed($path);
		my ($dropped, $etmin, $etmax) = (0, undef, undef);
		my %points;
		for my $r (@rows)
		{
			my ($id, $cust, $cents, $ts) = @$r;
			if (defined $ts)
			{
				$etmin = $ts if !defined $etmin || $ts < $etmin;
				$etmax = $ts if !defined $etmax || $ts > $etmax;
			}
			if (!defined $ts || ($mode ne 'complete' && defined $W && $ts <= $W))
			{
				$dropped++;
				push @late, join('|', $batch, $W // '', $id, $cust, SluiceTest::_fmt_cents($cents), $ts // '');
				next;
			}
			push @{ $points{$cust} }, { s => $ts, e => $ts + $gap, agg => agg_row($cents), new => 1 };
		}

		# each group's sessions and new spans, swept in start order into islands
		my $touched = 0;
		for my $cust (keys %points)
		{
			my @items = sort { $a->{s} <=> $b->{s} } (@{ $state{$cust} // [] }, @{ $points{$cust} });
			my @islands;
			for my $it (@items)
			{
				my $cur = $islands[-1];
				if ($cur && $it->{s} <= $cur->{e})
				{
					$cur->{e} = max($cur->{e}, $it->{e});
					agg_add($cur->{agg}, $it->{agg});
					$cur->{new} ||= $it->{new};
					push @{ $cur->{old} }, $it unless $it->{new};
					next;
				}
				push @islands, { s => $it->{s}, e => $it->{e}, agg => { %{ $it->{agg} } }, new => $it->{new},
					old => $it->{new} ? [] : [$it] };
			}
			for my $isl (grep { $_->{new} } @islands)
			{
				$touched++;
				$grown++ if @{ $isl->{old} };
				$bridged++ if @{ $isl->{old} } >= 2;
				if ($mode eq 'update')
				{
					delete $target{"$_->{s}|$_->{e}|$cust"} for @{ $isl->{old} };
					$target{"$isl->{s}|$isl->{e}|$cust"} = $isl;
				}
			}
			$state{$cust} = [ map { { s => $_->{s}, e => $_->{e}, agg => $_->{agg} } } @islands ];
		}

		my $newW = $W;
		$newW = $etmax - $delay if defined $delay && defined $etmax && (!defined $newW || $etmax - $delay > $newW);
		my ($removed, $sink_rows) = (0, 0);
		if ($mode ne 'complete' && defined $newW)
		{
			for my $cust (keys %state)
			{
				my @closed = grep { $_->{e} <= $newW } @{ $state{$cust} };
				$state{$cust} = [ grep { $_->{e} > $newW } @{ $state{$cust} } ];
				$removed += @closed;
				next unless $mode eq 'append';
				for my $s (@closed)
				{
					my $key = "$s->{s}|$s->{e}|$cust";
					die "model: session $key emitted twice" if exists $target{$key};
					$target{$key} = $s;
				}
			}
		}
		my $total = 0;
		$total += @{ $state{$_} } for keys %state;
		if ($mode eq 'complete')
		{
			%target = map { my $c = $_; map { ("$_->{s}|$_->{e}|$c" => $_) } @{ $state{$c} } } keys %state;
		}
		$sink_rows = $mode eq 'append' ? $removed : $mode eq 'update' ? $touched : $total;
		push @batches, join('|', $batch, scalar(@rows), $dropped, $W // '', $newW // '', $etmin // '',
			$etmax // '', $total, $touched, $mode eq 'append' || $mode eq 'update' ? $removed : 0, $sink_rows);
		$W = $newW;
	}
	my @state;
	for my $c (keys %state)
	{
		push @state, "$_->{s}|$_->{e}|$c" for @{ $state{$c} };
	}
	my $final = sub {
		my ($key, $s) = @_;
		my $a = $s->{agg};
		return join('|', $key, $a->{n}, $a->{n_amt}, SluiceTest::_fmt_cents($a->{sum}),
			SluiceTest::_fmt_cents($a->{lo}), SluiceTest::_fmt_cents($a->{hi}),
			SluiceTest::_fmt_avg($a->{sum}, $a->{n_amt}));
	};
	return {
		target => [ sort map { $final->($_, $target{$_}) } keys %target ],
		late => [ sort @late ],
		batches => \@batches,
		state => [ sort @state ],
		W => $W,
		grown => $grown,
		bridged => $bridged,
	};
}

# 1. the model, in every output mode
my $nfiles = 16;
my $dir = $node->basedir . '/feed';
my @paths = gen_window_feed($dir, files => $nfiles, rows => 150, seed => 25, delay_s => 600);

my @cases = (
	[ 'ses_append',   gap_s => 30,  mode => 'append',   delay_s => 600 ],
	[ 'ses_update',   gap_s => 30,  mode => 'update',   delay_s => 600 ],
	[ 'ses_complete', gap_s => 30,  mode => 'complete', delay_s => 600 ],
	[ 'ses_update_wide', gap_s => 120, mode => 'update', delay_s => 300 ],
	[ 'ses_append_nodelay', gap_s => 30, mode => 'append', delay_s => 0 ],
	[ 'ses_update_nowm', gap_s => 45, mode => 'update' ],
);
for my $c (@cases)
{
	my ($name, %o) = @$c;
	create_window_pipeline($node, $name, $dir, %o);
	my $model = session_model(\@paths, %o);
	is($node->safe_psql('postgres', "SELECT sluice.run_once('$name')"), $nfiles,
		"$name: run_once commits one batch per file");
	if ($name eq 'ses_update' || $name eq 'ses_update_wide')
	{
		# the feed exercises what it should (checked on the model)
		cmp_ok($model->{grown}, '>=', 10, "$name: sessions grow across batches ($model->{grown})");
		cmp_ok($model->{bridged}, '>=', 1, "$name: a row bridges sessions of earlier batches ($model->{bridged})");
		cmp_ok(scalar(@{ $model->{late} }), '>=', 100, "$name: the feed has late rows");
	}
	if ($name eq 'ses_append')
	{
		cmp_ok(scalar(@{ $model->{target} }), '>=', 50, "$name: many sessions emitted");
		cmp_ok(scalar(grep { (split /\|/)[1] - (split /\|/)[0] > 30_000_000 } @{ $model->{target} }), '>=', 20,
			"$name: many sessions hold more than one row");
	}
	window_check_model($node, $name, $model, $name);
	if (defined $o{delay_s} && $o{mode} ne 'complete')
	{
		is($node->safe_psql('postgres',
				"SELECT count(*) FILTER (WHERE s.window_end <= p.watermark) FROM sluice_state_$name s,"
				  . " sluice.pipelines p WHERE p.name = '$name'"),
			'0', "$name: state holds only sessions that end after W");
	}
}

# a gap of 0, a size with a gap, a slide with a gap: refused (pg_regress has the messages)
for my $bad ("'0 seconds'", "'1 month'")
{
	my ($rc, $out, $err) = $node->psql('postgres',
		"SELECT sluice.window_sink('ses_append_out', session_gap => $bad)");
	like($err, qr/invalid session_gap|not a fixed duration/, "session_gap $bad is refused");
}

# 2. crash_at each stage of each batch, update mode (sessions replaced in the target)
my %spec = (gap_s => 30, mode => 'update', delay_s => 600);
my $seed = 40;
for my $stage (qw(after_plan after_read after_sink before_commit after_commit))
{
	my $name = "s_$stage";
	my $sdir = $node->basedir . "/in_$stage";
	my $n = 5;
	my @p = gen_window_feed($sdir, files => $n, rows => 120, seed => $seed++);
	my $model = session_model(\@p, %spec);

	set_crash_at($node, $stage);
	my $offset = log_size($node);
	create_window_pipeline($node, $name, $sdir, %spec, trigger => '200 milliseconds');
	$node->safe_psql('postgres', "SELECT sluice.start('$name')");
	wait_until($node, "SELECT count(*) FILTER (WHERE f.committed) FROM sluice.file f"
		  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'", $n, "$stage: all files committed");
	wait_for_log_count($node, qr/database system is ready to accept connections/, $n, $offset);
	wait_for_server($node);
	is(log_count($node, qr/kills itself at stage "\Q$stage\E"/, $offset), $n, "$stage: the worker killed itself once per batch");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"), '0', "$stage: no error");
	window_check_model($node, $name, $model, $stage);
	set_crash_at($node, '');
	$node->safe_psql('postgres', "SELECT sluice.stop('$name')");
	wait_until($node, "SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'",
		't', "$stage: worker stopped");
}

# 3. SIGKILL of the worker mid-batch, then an immediate stop, on bigger files, append mode
my $name = 's_kill';
my $kdir = $node->basedir . '/kill_in';
my $nkill = 8;
my @kp = gen_window_feed($kdir, files => $nkill, rows => 40_000, seed => 77);
%spec = (gap_s => 20, mode => 'append', delay_s => 600);
my $model = session_model(\@kp, %spec);
create_window_pipeline($node, $name, $kdir, %spec, trigger => '100 milliseconds');
$node->safe_psql('postgres', "SELECT sluice.start('$name')");

kill_then_stop($node, $name, $nkill);
window_check_model($node, $name, $model, 'kill + immediate stop');

$node->stop;
done_testing();

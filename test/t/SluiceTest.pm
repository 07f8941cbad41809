# Shared helpers for the sluice crash/recovery TAP tests.
#
# Run as the postgres OS user, e.g.
#   runuser -u postgres -- env PATH=/usr/lib/postgresql/15/bin:$PATH TESTDIR=$PWD \
#     prove -I /usr/lib/postgresql/15/lib/pgxs/src/test/perl test/t/001_crash_stages.pl
package SluiceTest;

use strict;
use warnings;

use Digest::MD5 qw(md5_hex);
use File::Path qw(make_path);
use IPC::Run;
use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use Exporter 'import';
our @EXPORT = qw(
  sluice_node gen_files files_stats table_stats check_table
  create_csv_pipeline pipeline_id set_crash_at
  log_size log_count wait_for_log_count wait_for_server
  wait_until poll_value batch_reading kill_then_stop start_session progress_summary
  gen_window_feed window_model create_window_pipeline
  window_db_target window_db_late window_db_progress window_db_state window_check_model
  rows_match us_ts csv_rows fmt_cents last_per_customer
);

# Cluster.pm's init() runs pg_regress --config-auth; plain prove does not set it.
BEGIN
{
	$ENV{PG_REGRESS} //= '/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress';
}

our $COLUMNS = 'id bigint, customer int, amount numeric(12,2), ts timestamptz';

# A started node with sluice preloaded and CREATE EXTENSION done; %init
# goes to Cluster's init() (allows_streaming => 1 for a primary).
sub sluice_node
{
	my ($name, $extra_conf, %init) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%init);
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'sluice'
sluice.database = 'postgres'
sluice.restart_delay = 1
sluice.launcher_naptime = 1
restart_after_crash = on
log_statement = none
log_min_messages = warning
max_wal_size = 1GB
checkpoint_timeout = 30s
} . ($extra_conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION sluice');
	return $node;
}

# Write $nfiles CSV files of $rows rows each into $dir (created), with ids
# $first_id, $first_id+1, ... unique across the files.  Each file is
# written under a temporary name that does not match *.csv, given its
# mtime, then renamed, so the source never sees a partial file.  mtimes are
# one minute apart in file order, so the source reads them in that order.
# Returns the list of paths, in order.
sub gen_files
{
	my ($dir, %o) = @_;
	my $nfiles = $o{files} // 4;
	my $rows = $o{rows} // 100;
	my $id = $o{first_id} // 1;
	my $prefix = $o{prefix} // 'part';
	my $base = $o{mtime_base} // (time() - 86400);
	my $seed = $o{seed} // 42;
	make_path($dir);
	srand($seed);
	my @paths;
	for my $i (1 .. $nfiles)
	{
		my $path = sprintf('%s/%s-%04d.csv', $dir, $prefix, $i);
		my $tmp = "$path.tmp";
		open my $fh, '>', $tmp or die "could not write $tmp: $!";
		my $buf = "id,customer,amount,ts\n";
		for (1 .. $rows)
		{
			my $cents = 1 + int(rand(10_000_000));
			my @t = gmtime(1_700_000_000 + $id);
			$buf .= sprintf("%d,%d,%d.%02d,%04d-%02d-%02d %02d:%02d:%02d+00\n",
				$id, int(rand(1000)), int($cents / 100), $cents % 100,
				$t[5] + 1900, $t[4] + 1, $t[3], $t[2], $t[1], $t[0]);
			$id++;
			if (length($buf) > 1 << 20)
			{
				print $fh $buf;
				$buf = '';
			}
		}
		print $fh $buf;
		close $fh or die "could not close $tmp: $!";
		my $mtime = $base + 60 * $i;
		utime($mtime, $mtime, $tmp) or die "utime $tmp: $!";
		rename($tmp, $path) or die "rename $tmp: $!";
		push @paths, $path;
	}
	return @paths;
}

# count, count(distinct id), sum(amount), sum(id), md5 of the sorted ids:
# read from the files themselves.
sub files_stats
{
	my (@paths) = @_;
	my (@ids, %seen);
	my ($cents, $sumid) = (0, 0);
	for my $path (@paths)
	{
		open my $fh, '<', $path or die "could not read $path: $!";
		my $header = <$fh>;
		while (my $line = <$fh>)
		{
			my ($id, undef, $amount) = split /,/, $line;
			my ($units, $frac) = split /\./, $amount;
			$cents += $units * 100 + $frac;
			$sumid += $id;
			push @ids, $id;
			$seen{$id} = 1;
		}
		close $fh;
	}
	@ids = sort { $a <=> $b } @ids;
	return {
		count => scalar(@ids),
		distinct => scalar(keys %seen),
		sum_amount => sprintf('%d.%02d', int($cents / 100), $cents % 100),
		sum_id => "$sumid",
		md5 => md5_hex(join(',', @ids)),
	};
}

sub table_stats
{
	my ($node, $table) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT count(*), count(DISTINCT id), coalesce(sum(amount), 0.00), coalesce(sum(id), 0),"
		  . " md5(coalesce(string_agg(id::text, ',' ORDER BY id), '')) FROM $table");
	my @v = split /\|/, $out;
	return {
		count => $v[0],
		distinct => $v[1],
		sum_amount => $v[2],
		sum_id => $v[3],
		md5 => $v[4],
	};
}

# The table holds the rows of the files, each exactly once.
sub check_table
{
	my ($node, $table, $paths, $msg) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $want = files_stats(@$paths);
	my $got = table_stats($node, $table);
	return is_deeply($got, $want, $msg);
}

sub create_csv_pipeline
{
	my ($node, $name, $dir, $table, %o) = @_;
	my $max = defined $o{max_files} ? $o{max_files} : 'NULL';
	my $trigger = $o{trigger} // '1 second';
	# the tests count batches: backpressure (018) would make the first of a
	# worker small
	my $bp = $o{backpressure} ? 'true' : 'false';
	my $extra = $o{extra} // '';    # more csv_source() arguments, after a comma
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE $table (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$dir', '$COLUMNS', max_files_per_trigger => $max$extra),
  sluice.append_sink('$table'), '$trigger', backpressure => $bp);
});
	return;
}

# Rows [id, customer, cents, ts] of gen_files-like files, in file then line
# order, without the lines that do not parse as such (bad rows).
sub csv_rows
{
	my @rows;
	for my $path (@_)
	{
		open my $fh, '<', $path or die "could not read $path: $!";
		my $header = <$fh>;
		while (my $line = <$fh>)
		{
			chomp $line;
			my ($id, $c, $amount, $ts) = split /,/, $line;
			next unless defined $ts && $id =~ /^\d+$/ && $c =~ /^\d+$/ && $amount =~ /^(\d+)\.(\d\d)$/;
			push @rows, [ $id, $c, $1 * 100 + $2, $ts ];
		}
		close $fh;
	}
	return @rows;
}

sub fmt_cents
{
	my ($c) = @_;
	return sprintf('%d.%02d', int($c / 100), $c % 100);
}

# "customer|id|amount|ts" of the last row of each customer in @$rows (as
# csv_rows returns them), by customer: what a merge sink keyed by customer
# leaves
sub last_per_customer
{
	my ($rows) = @_;
	my %last;
	$last{ $_->[1] } = $_ for @$rows;
	return [ map { join('|', $_, $last{$_}[0], fmt_cents($last{$_}[2]), $last{$_}[3]) }
		  sort { $a <=> $b } keys %last ];
}

sub pipeline_id
{
	my ($node, $name) = @_;
	return $node->safe_psql('postgres',
		"SELECT id FROM sluice.pipeline WHERE name = '$name'");
}

# ALTER SYSTEM sluice.crash_at, reload, and wait until new backends see it
# (workers are forked by the postmaster, so they then see it too).
sub set_crash_at
{
	my ($node, $stage) = @_;
	if ($stage eq '')
	{
		$node->safe_psql('postgres',
			'ALTER SYSTEM RESET sluice.crash_at; SELECT pg_reload_conf();');
	}
	else
	{
		$node->safe_psql('postgres',
			"ALTER SYSTEM SET sluice.crash_at = '$stage'; SELECT pg_reload_conf();");
	}
	$node->poll_query_until('postgres', 'SHOW sluice.crash_at', $stage)
	  or die "sluice.crash_at did not become '$stage'";
	return;
}

sub log_size
{
	my ($node) = @_;
	return -s $node->logfile;
}

# Number of matches of $re in the server log from byte $offset on.
sub log_count
{
	my ($node, $re, $offset) = @_;
	my $log = slurp_file($node->logfile, $offset // 0);
	my $n = () = $log =~ /$re/g;
	return $n;
}

# Wait (bounded) until the log from $offset holds at least $n matches of $re.
sub wait_for_log_count
{
	my ($node, $re, $n, $offset) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	while (time() < $deadline)
	{
		return 1 if log_count($node, $re, $offset) >= $n;
		usleep(100_000);
	}
	die "timed out waiting for $n matches of $re in the server log";
}

# Wait until the server accepts connections (after a crash restart).
sub wait_for_server
{
	my ($node) = @_;
	$node->poll_query_until('postgres', 'SELECT true')
	  or die "server did not come back";
	return;
}

# poll_query_until that dies on timeout; it retries on connection errors,
# so it can be used across crash restarts.
sub wait_until
{
	my ($node, $sql, $expected, $what) = @_;
	$node->poll_query_until('postgres', $sql, $expected)
	  or die "timed out waiting for: " . ($what // $sql);
	return 1;
}

# Run $sql repeatedly until it prints something non-empty (connection
# errors are retried); returns that output.  Polls faster than
# poll_query_until.
sub poll_value
{
	my ($node, $sql, $timeout) = @_;
	$timeout //= $PostgreSQL::Test::Utils::timeout_default;
	my $deadline = time() + $timeout;
	my @cmd = ('psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', $sql);
	while (time() < $deadline)
	{
		my ($out, $err) = ('', '');
		IPC::Run::run(\@cmd, '>', \$out, '2>', \$err);
		chomp $out;
		return $out if $out ne '' && $err eq '';
		usleep(20_000);
	}
	die "timed out polling: $sql";
}

# (batch, pid): a worker of pipeline $name in the middle of reading a batch
# later than $after, polled for until there is one.
sub batch_reading
{
	my ($node, $name, $after) = @_;
	return split / /, poll_value($node,
		"SELECT b || ' ' || pid FROM (SELECT pid, substring(query from 'batch (\\d+):')::int AS b"
		  . " FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = '$name'"
		  . " AND state = 'active' AND query LIKE 'batch %: reading%') s WHERE b > $after ORDER BY b LIMIT 1");
}

# A running pipeline's worker killed with SIGKILL in the middle of a batch
# after the first, then the server stopped in immediate mode in the middle
# of a later batch, and started again; then, once its $batches batches
# have committed, at least one of them was replayed and none failed.
sub kill_then_stop
{
	my ($node, $name, $batches) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($batch, $pid) = batch_reading($node, $name, 1);
	note "SIGKILL of worker $pid during batch $batch";
	my $offset = log_size($node);
	kill 'KILL', $pid;
	wait_for_log_count($node, qr/\(PID $pid\) was terminated by signal 9/, 1, $offset);
	wait_for_server($node);
	($batch) = batch_reading($node, $name, $batch + 1);
	note "immediate stop during batch $batch";
	$node->stop('immediate');
	$node->start;
	wait_until($node, "SELECT count(*) FROM sluice.progress('$name', 1000) WHERE status = 'committed'", $batches,
		'kill: all batches committed');
	cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('$name', 1000) WHERE attempts > 1"),
		'>=', 1, 'kill: at least one batch was replayed');
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.errors WHERE pipeline = '$name'"), '0',
		'kill: no error');
	return;
}

# "batch:status:attempts:files" of every batch, oldest first.
sub progress_summary
{
	my ($node, $name) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(format('%s:%s:%s:%s', batch_id, status, attempts, files), ' ' ORDER BY batch_id)"
		  . " FROM sluice.progress('$name', 1000)");
}

# An asynchronous psql session: send() does not wait for the result;
# wait_for() pumps until stdout matches.  Use \echo markers to sync.
sub start_session
{
	my ($node) = @_;
	return SluiceTest::Session->new($node);
}

# ---------------------------------------------------------------------------
# Event-time windows (issue 4): a feed generator, a reference model of the
# window sink's semantics, and readers of what the database holds, all as
# sorted lists of '|'-separated text lines so they compare row for row.
# Times are integer microseconds since the Unix epoch (UTC) throughout.

use POSIX ();
use Time::Local qw(timegm);

our $WIN_T0 = 1_704_067_200;    # 2024-01-01 00:00:00 UTC, aligned to every window size used
our $WIN_COLUMNS = 'id bigint, customer_id int, amount numeric(12,2), ts timestamptz';
our $WIN_AGGS = '{count(*) AS n, count(amount) AS n_amount, sum(amount) AS total,'
  . ' min(amount) AS lo, max(amount) AS hi, avg(amount) AS av}';

# SQL for a timestamptz as integer microseconds since the epoch
sub us_ts
{
	my ($expr) = @_;
	return "(extract(epoch FROM $expr) * 1000000)::bigint";
}

sub _fmt_ts
{
	my ($us) = @_;
	return '' unless defined $us;
	my $frac = $us % 1_000_000;
	my @t = gmtime(($us - $frac) / 1_000_000);
	return sprintf('%04d-%02d-%02d %02d:%02d:%02d%s+00', $t[5] + 1900, $t[4] + 1, $t[3],
		$t[2], $t[1], $t[0], $frac ? sprintf('.%06d', $frac) : '');
}

sub _parse_ts
{
	my ($s) = @_;
	return undef if $s eq '';
	$s =~ /^(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?\+00$/
	  or die "bad timestamp '$s'";
	my $frac = defined $7 ? substr($7 . '000000', 0, 6) : 0;
	return timegm($6, $5, $4, $3, $2 - 1, $1) * 1_000_000 + $frac;
}

sub _fmt_cents
{
	my ($c) = @_;
	return '' unless defined $c;
	my $a = abs $c;
	return sprintf('%s%d.%02d', $c < 0 ? '-' : '', int($a / 100), $a % 100);
}

sub _parse_cents
{
	my ($s) = @_;
	return undef if $s eq '';
	$s =~ /^(-?)(\d+)\.(\d\d)$/ or die "bad amount '$s'";
	return ($1 ? -1 : 1) * ($2 * 100 + $3);
}

# avg = sum / count rounded half away from zero to 6 decimals, as
# PostgreSQL's round(numeric, 6) prints it
sub _fmt_avg
{
	my ($cents, $n) = @_;
	return '' if !defined $cents || !$n;
	use integer;
	my $a = abs $cents;
	my $q = (2 * $a * 10_000 + $n) / (2 * $n);    # units of 1e-6
	return sprintf('%s%d.%06d', ($cents < 0 && $q) ? '-' : '', $q / 1_000_000, $q % 1_000_000);
}

# Deterministic bank-like feed: $o{files} CSV files (id, customer_id 1..5
# or NULL (2%), amount numeric(12,2) with a few NULLs, ts with a few NULLs), file k about
# event time T0 + k * 6 min, with out-of-order rows (5-14 min behind), very
# late rows (30-120 min behind), rows exactly at / just before the watermark
# the batch will use (max event time of the earlier files - delay), aligned
# maxima in odd files (so the watermark lands on window boundaries), and
# file 4 (of feeds of 6 files or more) holding only very late and NULL-time
# rows (the watermark must not move back).  File names are in random order,
# mtimes one minute apart in file order: the source reads file k in batch k.
# Returns the paths in mtime order.
sub gen_window_feed
{
	my ($dir, %o) = @_;
	my $nfiles = $o{files} // 12;
	my $rows = $o{rows} // 100;
	my $id = $o{first_id} // 1;
	my $delay = ($o{delay_s} // 600) * 1_000_000;
	my $base = $o{mtime_base} // (time() - 86400);
	srand($o{seed} // 7);
	make_path($dir);
	my ($max, @paths);
	for my $k (1 .. $nfiles)
	{
		my $S = ($WIN_T0 + $k * 360) * 1_000_000;
		my $stale = $k == 4 && $nfiles >= 6;
		my @ts;
		for (1 .. $rows)
		{
			my $r = rand();
			my $t;
			if ($r < 0.04) { $t = undef }
			elsif ($stale || $r < 0.12) { $t = $S - (1800 + int(rand(5400))) * 1_000_000 }
			elsif ($r < 0.30) { $t = $S - (300 + int(rand(540))) * 1_000_000 }
			else
			{
				$t = $S + (int(rand(300)) - 150) * 1_000_000;
				$t += (250_000, 500_000, 999_999)[ int(rand(3)) ] if rand() < 0.25;
			}
			$t = undef if $stale && rand() < 0.1;
			push @ts, $t;
		}
		if (defined $max && !$stale)
		{
			my $w = $max - $delay;
			push @ts, $w, $w, $w - 1, $w - 1_000_000;
		}
		if ($k % 2 && !$stale)
		{
			my $a = (POSIX::floor(($S / 1_000_000 + 151) / 600) + 1) * 600;
			push @ts, $a * 1_000_000;
		}
		for my $t (@ts)
		{
			$max = $t if defined $t && (!defined $max || $t > $max);
		}
		# shuffle (Fisher-Yates, deterministic)
		for (my $i = $#ts; $i > 0; $i--)
		{
			my $j = int(rand($i + 1));
			@ts[ $i, $j ] = @ts[ $j, $i ];
		}
		my $buf = "id,customer_id,amount,ts\n";
		for my $t (@ts)
		{
			my $cents = rand() < 0.02 ? undef : int(rand(550_000)) - 50_000;
			my $cust = rand() < 0.02 ? '' : 1 + int(rand(5));
			$buf .= sprintf("%d,%s,%s,%s\n", $id++, $cust, _fmt_cents($cents), _fmt_ts($t));
		}
		my $tag = join('', map { ('a' .. 'z')[ int(rand(26)) ] } 1 .. 4);
		my $path = sprintf('%s/feed-%s-%02d.csv', $dir, $tag, $k);
		my $tmp = "$path.tmp";
		open my $fh, '>', $tmp or die "could not write $tmp: $!";
		print $fh $buf;
		close $fh or die "could not close $tmp: $!";
		my $mtime = $base + 60 * $k;
		utime($mtime, $mtime, $tmp) or die "utime $tmp: $!";
		rename($tmp, $path) or die "rename $tmp: $!";
		push @paths, $path;
	}
	return @paths;
}

# CSV rows of a file: [id, customer_id, cents|undef, ts_us|undef]
sub _read_feed
{
	my ($path) = @_;
	open my $fh, '<', $path or die "could not read $path: $!";
	my $header = <$fh>;
	my @rows;
	while (my $line = <$fh>)
	{
		chomp $line;
		my ($id, $c, $amount, $ts) = split /,/, $line, -1;
		push @rows, [ $id, $c, _parse_cents($amount), _parse_ts($ts) ];
	}
	close $fh;
	return @rows;
}

sub _win_final
{
	my ($key, $s) = @_;
	return join('|', $key, $s->{n}, $s->{n_amt}, _fmt_cents($s->{sum}), _fmt_cents($s->{lo}),
		_fmt_cents($s->{hi}), _fmt_avg($s->{sum}, $s->{n_amt}));
}

# The reference model of sluice's window sink (CONTEXT.md, issue 4), on the
# window sink created by create_window_pipeline: group by customer_id,
# aggregates $WIN_AGGS.  One batch per file, in the order given.
#   size_s, slide_s (undef: tumbling), delay_s (undef: no watermark), mode;
#   watermarks: the watermark each batch leaves (seconds), if not its own.
# Returns {target => [lines], late => [lines], batches => [lines],
# state => [lines], W => final watermark (us or undef)}; line formats as
# window_db_target / window_db_late / window_db_progress / window_db_state.
sub window_model
{
	my ($paths, %o) = @_;
	my $size = $o{size_s} * 1_000_000;
	my $slide = ($o{slide_s} // $o{size_s}) * 1_000_000;
	my $delay = defined $o{delay_s} ? $o{delay_s} * 1_000_000 : undef;
	my $mode = $o{mode};
	my $nwin = POSIX::ceil($size / $slide);
	my (%state, %target, @late, @batches);
	my $W;
	my $b = 0;
	for my $path (@$paths)
	{
		$b++;
		my @rows = _read_feed($path);
		my ($dropped, $etmin, $etmax) = (0, undef, undef);
		my %part;
		for my $r (@rows)
		{
			my ($id, $cust, $cents, $ts) = @$r;
			my $is_late = 0;
			if (!defined $ts)
			{
				$dropped++;
				$is_late = 1;
			}
			else
			{
				$etmin = $ts if !defined $etmin || $ts < $etmin;
				$etmax = $ts if !defined $etmax || $ts > $etmax;
				my $first;
				{
					use integer;
					$first = $ts / $slide;
				}
				for my $k (0 .. $nwin - 1)
				{
					my $ws = ($first - $k) * $slide;
					next unless $ws + $size > $ts;
					if ($mode ne 'complete' && defined $W && $ws + $size <= $W)
					{
						$dropped++;
						$is_late = 1;
						next;
					}
					my $p = $part{"$ws|" . ($ws + $size) . "|$cust"} //= { n => 0, n_amt => 0 };
					$p->{n}++;
					next unless defined $cents;
					$p->{n_amt}++;
					$p->{sum} += $cents;
					$p->{lo} = $cents if !defined $p->{lo} || $cents < $p->{lo};
					$p->{hi} = $cents if !defined $p->{hi} || $cents > $p->{hi};
				}
			}
			push @late, join('|', $b, $W // '', $id, $cust, _fmt_cents($cents), $ts // '') if $is_late;
		}
		# merge the batch's partial aggregates into the state
		for my $key (keys %part)
		{
			my ($p, $s) = ($part{$key}, $state{$key});
			if (!$s)
			{
				$state{$key} = { %$p };
				next;
			}
			$s->{n} += $p->{n};
			$s->{n_amt} += $p->{n_amt};
			$s->{sum} += $p->{sum} if defined $p->{sum};
			$s->{lo} = $p->{lo} if defined $p->{lo} && (!defined $s->{lo} || $p->{lo} < $s->{lo});
			$s->{hi} = $p->{hi} if defined $p->{hi} && (!defined $s->{hi} || $p->{hi} > $s->{hi});
		}
		my $newW = $W;
		if ($o{watermarks})
		{
			my $w = $o{watermarks}[ $b - 1 ];
			$newW = $w eq '' ? undef : $w * 1_000_000;
		}
		elsif (defined $delay && defined $etmax)
		{
			$newW = $etmax - $delay if !defined $newW || $etmax - $delay > $newW;
		}
		my ($removed, $sink_rows) = (0, 0);
		my $closed = sub { my ($we) = (split /\|/, $_[0])[1]; defined $newW && $we <= $newW };
		if ($mode eq 'append')
		{
			for my $key (grep { $closed->($_) } keys %state)
			{
				die "model: window $key emitted twice" if exists $target{$key};
				$target{$key} = _win_final($key, delete $state{$key});
				$removed++;
			}
			$sink_rows = $removed;
		}
		elsif ($mode eq 'update')
		{
			$target{$_} = _win_final($_, $state{$_}) for keys %part;
			$sink_rows = keys %part;
			for my $key (grep { $closed->($_) } keys %state)
			{
				delete $state{$key};
				$removed++;
			}
		}
		else
		{
			%target = map { $_ => _win_final($_, $state{$_}) } keys %state;
			$sink_rows = keys %state;
		}
		push @batches, join('|', $b, scalar(@rows), $dropped, $W // '', $newW // '', $etmin // '',
			$etmax // '', scalar(keys %state), scalar(keys %part), $removed, $sink_rows);
		$W = $newW;
	}
	return {
		target => [ sort values %target ],
		late => [ sort @late ],
		batches => \@batches,
		state => [ sort keys %state ],
		W => $W,
	};
}

# Target <name>_out, late rows <name>_late, pipeline <name> reading $dir
# one file per batch, event time ts, group by customer_id, $WIN_AGGS;
# windows of size_s (slide_s), or sessions of gap_s.
sub create_window_pipeline
{
	my ($node, $name, $dir, %o) = @_;
	my $slide = defined $o{slide_s} ? "'$o{slide_s} seconds'" : 'NULL';
	my $delay = defined $o{delay_s} ? "'$o{delay_s} seconds'" : 'NULL';
	my $trigger = $o{trigger} // '1 second';
	my $window = defined $o{gap_s} ? 'NULL, NULL' : "'$o{size_s} seconds', $slide";
	my $gap = defined $o{gap_s} ? ", session_gap => '$o{gap_s} seconds'" : '';
	my $dedupe = defined $o{dedupe} ? ", dedupe => '$o{dedupe}'" : '';
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE ${name}_out (window_start timestamptz, window_end timestamptz, customer_id int,
  n bigint, n_amount bigint, total numeric, lo numeric(12,2), hi numeric(12,2), av numeric);
CREATE TABLE ${name}_late (batch_id bigint, watermark timestamptz, id bigint, customer_id int,
  amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$dir', '$WIN_COLUMNS', max_files_per_trigger => 1),
  sluice.window_sink('${name}_out', $window, '{customer_id}', '$WIN_AGGS',
                     '$o{mode}', '${name}_late'$gap),
  '$trigger', event_time => 'ts', watermark_delay => $delay, backpressure => false$dedupe);
});
	return;
}

sub _lines
{
	my ($node, $sql) = @_;
	my $out = $node->safe_psql('postgres', $sql);
	return [ sort grep { $_ ne '' } split /\n/, $out ];
}

sub window_db_target
{
	my ($node, $table) = @_;
	return _lines($node,
		"SELECT concat_ws('|', " . us_ts('window_start') . ', ' . us_ts('window_end')
		  . ", coalesce(customer_id::text, ''), n, n_amount, coalesce(total::text, ''), coalesce(lo::text, ''),"
		  . " coalesce(hi::text, ''), coalesce(round(av, 6)::text, '')) FROM $table");
}

sub window_db_late
{
	my ($node, $table) = @_;
	return _lines($node,
		"SELECT concat_ws('|', batch_id, coalesce(" . us_ts('watermark') . "::text, ''), id, coalesce(customer_id::text, ''),"
		  . " coalesce(amount::text, ''), coalesce(" . us_ts('ts') . "::text, '')) FROM $table");
}

sub window_db_state
{
	my ($node, $table) = @_;
	return _lines($node,
		"SELECT concat_ws('|', " . us_ts('window_start') . ', ' . us_ts('window_end') . ", coalesce(customer_id::text, '')) FROM $table");
}

# one line per batch, oldest first: batch|input_rows|dropped|watermark|
# next_watermark|event_time_min|event_time_max|state_rows_total|
# state_rows_updated|state_rows_removed|sink_rows
sub window_db_progress
{
	my ($node, $name) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT concat_ws('|', batch_id, input_rows, num_rows_dropped_by_watermark, "
		  . join(', ', map { 'coalesce(' . us_ts($_) . "::text, '')" }
			  qw(watermark next_watermark event_time_min event_time_max))
		  . ", state_rows_total, state_rows_updated, state_rows_removed, sink_rows)"
		  . " FROM sluice.progress('$name', 100000) ORDER BY batch_id");
	return [ grep { $_ ne '' } split /\n/, $out ];
}

# Everything the database holds for window pipeline $name (target
# <name>_out, late rows <name>_late, progress, state, watermark) equals
# what the model (window_model, or a test's own) says.
sub window_check_model
{
	my ($node, $name, $model, $what) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	rows_match(window_db_target($node, "${name}_out"), $model->{target}, "$what: target equals the model");
	rows_match(window_db_late($node, "${name}_late"), $model->{late}, "$what: late rows equal the model");
	rows_match(window_db_progress($node, $name), $model->{batches},
		"$what: per batch: input rows, dropped, watermarks, event times, state rows total/updated/removed, sink rows");
	rows_match(window_db_state($node, "sluice_state_$name"), $model->{state}, "$what: state equals the model");
	is($node->safe_psql('postgres', "SELECT coalesce(" . us_ts('watermark') . "::text, 'NULL')"
			  . " FROM sluice.pipelines WHERE name = '$name'"),
		$model->{W} // 'NULL', "$what: pipelines.watermark is the model's W");
	return;
}

# is_deeply for two lists of lines, with a readable diagnostic
sub rows_match
{
	my ($got, $want, $msg) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $ok = ok(join("\n", @$got) eq join("\n", @$want), $msg);
	if (!$ok)
	{
		my (%g, %w);
		$g{$_}++ for @$got;
		$w{$_}++ for @$want;
		my @missing = grep { ($w{$_} // 0) > ($g{$_} // 0) } sort keys %w;
		my @extra = grep { ($g{$_} // 0) > ($w{$_} // 0) } sort keys %g;
		diag(sprintf('got %d rows, expected %d', scalar(@$got), scalar(@$want)));
		diag("expected, not got: $_") for grep { defined } @missing[ 0 .. 14 ];
		diag("got, not expected: $_") for grep { defined } @extra[ 0 .. 14 ];
		if (!@missing && !@extra)
		{
			for my $i (0 .. $#$want)
			{
				next if ($got->[$i] // '') eq $want->[$i];
				diag("first difference at line $i: got '" . ($got->[$i] // '') . "' expected '$want->[$i]'");
				last;
			}
		}
	}
	return $ok;
}

package SluiceTest::Session;

use strict;
use warnings;
use IPC::Run;

sub new
{
	my ($class, $node) = @_;
	my $self = bless { in => '', out => '', err => '' }, $class;
	$self->{timer} = IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default);
	$self->{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=0', '-d', $node->connstr('postgres'), '-f', '-' ],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err}, $self->{timer});
	return $self;
}

sub send
{
	my ($self, $sql) = @_;
	$self->{in} .= "$sql\n";
	$self->{h}->pump_nb;
	return;
}

# Pump until stdout matches $re; returns stdout up to and including the
# match and removes it from the buffer.
sub wait_for
{
	my ($self, $re) = @_;
	$self->{timer}->start($PostgreSQL::Test::Utils::timeout_default);
	$self->{h}->pump until $self->{out} =~ $re;
	$self->{out} =~ s/^(.*?$re)//s;
	return $1;
}

# Send $sql followed by an \echo marker and return its output.
sub query
{
	my ($self, $sql) = @_;
	my $mark = 'SYNC_' . ++$self->{n};
	$self->send("$sql\n\\echo $mark");
	my $out = $self->wait_for(qr/$mark\n/);
	$out =~ s/\n?$mark\n$//;
	return $out;
}

sub errors
{
	my ($self) = @_;
	return $self->{err};
}

sub quit
{
	my ($self) = @_;
	$self->{in} .= "\\q\n";
	$self->{h}->finish;
	return $? >> 8;
}

# Wait for psql to exit by itself (e.g. after -c); returns its exit code.
sub finish
{
	my ($self) = @_;
	$self->{timer}->start($PostgreSQL::Test::Utils::timeout_default);
	$self->{h}->finish;
	return $? >> 8;
}

1;

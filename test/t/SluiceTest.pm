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
  wait_until poll_value start_session progress_summary
);

# Cluster.pm's init() runs pg_regress --config-auth; plain prove does not set it.
BEGIN
{
	$ENV{PG_REGRESS} //= '/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress';
}

our $COLUMNS = 'id bigint, customer int, amount numeric(12,2), ts timestamptz';

# A started node with sluice preloaded and CREATE EXTENSION done.
sub sluice_node
{
	my ($name, $extra_conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
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
	$node->safe_psql(
		'postgres', qq{
CREATE TABLE $table (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('$name',
  sluice.csv_source('$dir', '$COLUMNS', max_files_per_trigger => $max),
  sluice.append_sink('$table'), '$trigger');
});
	return;
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

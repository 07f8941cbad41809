# ALTER EXTENSION sluice UPDATE from 0.1 to the current version (through 0.2)
# under running pipelines.
# sluice is installed as VERSION '0.1'; a non-superuser creates an append, a
# merge and a window pipeline under 0.1 and starts them.  The library the
# server runs is the current one's, as after a package upgrade and a restart.  (With
# SLUICE_PGBIN_01 naming the bin directory of a PostgreSQL 15 where sluice 0.1
# is installed, the pipelines first run there, under 0.1's library, and the
# server is then restarted with this installation's: a real package upgrade.)
# While files keep arriving, ALTER EXTENSION sluice UPDATE runs;
# afterwards every pipeline keeps its offsets, batches and window state, is
# running (start() brings back one that is not), reads every file exactly
# once, and its windows equal the reference model; the catalog can no longer
# be written by its users.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use File::Basename qw(dirname);
use File::Copy qw(move);
use File::Path qw(make_path);
use Time::HiRes qw(usleep);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $old_bin = $ENV{SLUICE_PGBIN_01};
my $node = PostgreSQL::Test::Cluster->new('upgrade', $old_bin ? (install_path => dirname($old_bin)) : ());
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'sluice'
sluice.database = 'postgres'
sluice.restart_delay = 1
sluice.launcher_naptime = 1
log_min_messages = warning
timezone = 'UTC'
});
$node->start;
# the version this library is built for
my ($version) = slurp_file("$FindBin::RealBin/../../sluice.control") =~ /default_version = '([^']+)'/;
note $old_bin ? "the pipelines start under the 0.1 library of $old_bin" : 'the library is the current one throughout';

my $feeds = PostgreSQL::Test::Utils::tempdir('feeds');
my $stage = PostgreSQL::Test::Utils::tempdir('stage');
my %dir = map { $_ => "$feeds/$_" } qw(ap mg wn);
make_path(values %dir);
my $base = time() - 86400;

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION sluice VERSION '0.1';
CREATE ROLE feeder LOGIN;
GRANT pg_read_server_files TO feeder;
CREATE SCHEMA ingest AUTHORIZATION feeder;
});
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'sluice'"), '0.1',
	'sluice 0.1 is installed');

sub as_feeder
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', "SET ROLE feeder;\n$sql");
}

as_feeder(qq{
CREATE TABLE ingest.ap_t (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('ap',
  sluice.csv_source('$dir{ap}', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.append_sink('ingest.ap_t'), '100 milliseconds');
CREATE TABLE ingest.mg_t (customer int PRIMARY KEY, id bigint, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('mg',
  sluice.csv_source('$dir{mg}', '$SluiceTest::COLUMNS', max_files_per_trigger => 1),
  sluice.merge_sink('ingest.mg_t', '{customer}'), '100 milliseconds');
CREATE TABLE ingest.wn_out (window_start timestamptz, window_end timestamptz, customer_id int,
  n bigint, n_amount bigint, total numeric, lo numeric(12,2), hi numeric(12,2), av numeric);
CREATE TABLE ingest.wn_late (batch_id bigint, watermark timestamptz, id bigint, customer_id int,
  amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('wn',
  sluice.csv_source('$dir{wn}', '$SluiceTest::WIN_COLUMNS', max_files_per_trigger => 1),
  sluice.window_sink('ingest.wn_out', '600 seconds', NULL, '{customer_id}', '$SluiceTest::WIN_AGGS',
                     'append', 'ingest.wn_late'),
  '100 milliseconds', event_time => 'ts', watermark_delay => '600 seconds');
});
my @pipelines = qw(ap mg wn);

# under 0.1 the catalog is open to its users: the point of the check below
is(as_feeder(q{INSERT INTO sluice.pipeline (name, source, sink, trigger)
                 VALUES ('forged', '{}', '{}', '1 second') RETURNING name;
               DELETE FROM sluice.pipeline WHERE name = 'forged' RETURNING name}),
	"forged\nforged", 'under 0.1, a user may write sluice.pipeline');

# The files: each feed gets some before the update, some while it runs and
# some after it.  They are written in a staging directory and moved in.
my %files;    # pipeline => [paths in the feed directory, in read order]
my %batch;    # pipeline => [[paths moved in before], [during], [after]]
sub staged
{
	my ($name, @paths) = @_;
	my @in;
	for my $p (@paths)
	{
		(my $to = $p) =~ s{^.*/}{$dir{$name}/};
		push @in, [ $p, $to ];
	}
	push @{ $files{$name} }, map { $_->[1] } @in;
	return @in;
}
sub move_in
{
	move($_->[0], $_->[1]) or die "move $_->[0]: $!" for @_;
	return;
}
my @ap = staged('ap', gen_files("$stage/ap", files => 15, rows => 3000, prefix => 'a', mtime_base => $base));
my @mg = staged('mg', gen_files("$stage/mg", files => 8, rows => 400, prefix => 'm', seed => 3, mtime_base => $base));
my @wn = staged('wn', gen_window_feed("$stage/wn", files => 12, rows => 120, seed => 8, mtime_base => $base));
%batch = (
	ap => [ [ @ap[ 0 .. 5 ] ], [ @ap[ 6 .. 11 ] ], [ @ap[ 12 .. 14 ] ] ],
	mg => [ [ @mg[ 0 .. 2 ] ], [ @mg[ 3 .. 5 ] ], [ @mg[ 6 .. 7 ] ] ],
	wn => [ [ @wn[ 0 .. 3 ] ], [ @wn[ 4 .. 7 ] ], [ @wn[ 8 .. 11 ] ] ],
);
move_in(@{ $batch{$_}[0] }) for @pipelines;
my %before = map { $_ => scalar @{ $batch{$_}[0] } } @pipelines;

sub committed_files
{
	my ($name) = @_;
	return "SELECT count(*) FILTER (WHERE f.committed) FROM sluice.file f"
	  . " JOIN sluice.pipeline p ON p.id = f.pipeline_id WHERE p.name = '$name'";
}

for my $name (@pipelines)
{
	as_feeder("SELECT sluice.start('$name')");
}

my %at_restart;
if ($old_bin)
{
	# under the 0.1 library the pipelines run
	for my $name (@pipelines)
	{
		wait_until($node, committed_files($name), $before{$name}, "0.1: $name read its first files");
	}
	for my $sql ('SELECT b::text FROM sluice.batch b ORDER BY pipeline_id, batch_id',
		'SELECT f::text FROM sluice.file f ORDER BY pipeline_id, path',
		'SELECT s::text FROM ingest.sluice_state_wn s ORDER BY 1',
		"SELECT watermark FROM sluice.pipeline WHERE name = 'wn'")
	{
		$at_restart{$sql} = $node->safe_psql('postgres', $sql);
	}
	cmp_ok(length($at_restart{'SELECT s::text FROM ingest.sluice_state_wn s ORDER BY 1'}), '>', 0,
		'0.1: the window pipeline has state');

	# the package upgrade: the same server restarts with the current files
	$node->stop;
	delete $node->{_install_path};    # from now on, the installation the tests run with
	$node->start;
}

# The current library on the 0.1 catalog, until the update: no pipeline runs a
# batch there, none is failed, and the launcher says why, once.
my $log_at_start = 0;
wait_for_log_count($node, qr/extension "sluice" is at version 0\.1, but its library is \Q$version\E/, 1, $log_at_start);
sleep 2;    # two more looks of the launcher
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker'"),
	'0', 'new library, 0.1 catalog: no worker runs');
is($node->safe_psql('postgres', "SELECT string_agg(name || ' ' || state, ', ' ORDER BY id) FROM sluice.pipeline"),
	'ap running, mg running, wn running', 'new library, 0.1 catalog: the pipelines stay running, none failed');
is(log_count($node, qr/extension "sluice" is at version 0\.1, but its library is \Q$version\E/, $log_at_start), 1,
	'new library, 0.1 catalog: the log says so once');
is(as_feeder("SELECT count(*) FROM sluice.error"), '0', 'new library, 0.1 catalog: no error recorded');
my (%batches_before, %last_before);
for my $name (@pipelines)
{
	$last_before{$name} = $node->safe_psql('postgres',
		"SELECT coalesce(max(b.batch_id), 0) FROM sluice.batch b JOIN sluice.pipeline p ON p.id = b.pipeline_id"
		  . " WHERE p.name = '$name'");
	$batches_before{$name} = $node->safe_psql('postgres',
		"SELECT b::text FROM sluice.batch b JOIN sluice.pipeline p ON p.id = b.pipeline_id"
		  . " WHERE p.name = '$name' ORDER BY b.batch_id");
}

# ---------------------------------------------------------------------------
# The update, while files arrive.  A reader of sluice.pipeline holds the
# update at its first ALTER TABLE, so that the files arrive while it runs.

my $reader = start_session($node);
$reader->query('BEGIN; SELECT count(*) FROM sluice.pipeline;');
my $update = start_session($node);
$update->send("ALTER EXTENSION sluice UPDATE;\n\\echo UPDATED");
wait_until($node,
	"SELECT wait_event_type FROM pg_stat_activity WHERE query LIKE 'ALTER EXTENSION sluice UPDATE%'",
	'Lock', 'ALTER EXTENSION waits for the reader of sluice.pipeline');
for my $i (0 .. 5)
{
	move_in(grep { defined } map { $batch{$_}[1][$i] } @pipelines);
	usleep(50_000);
}
is($node->safe_psql('postgres',
		"SELECT wait_event_type FROM pg_stat_activity WHERE query LIKE 'ALTER EXTENSION sluice UPDATE%'"),
	'Lock', 'every file of the stream arrived while ALTER EXTENSION ran');
$reader->query('COMMIT;');
$reader->quit;
$update->wait_for(qr/UPDATED\n/);
is($update->errors, '', 'ALTER EXTENSION sluice UPDATE succeeded');
$update->quit;
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'sluice'"), $version,
	"sluice is $version, the control file's version");
is($node->safe_psql('postgres', "SELECT count(*) || ' ' || count(*) FILTER (WHERE backpressure) FROM sluice.pipeline"),
	scalar(@pipelines) . ' 0', 'the pipelines made before the update keep running without backpressure');

# ---------------------------------------------------------------------------
# After the update

# the catalog is read-only to its users
for my $t (
	[ 'INSERT INTO sluice.pipeline', "INSERT INTO sluice.pipeline (name, owner, source, sink, trigger) VALUES ('forged', 'feeder', '{}', '{}', '1 second')" ],
	[ 'UPDATE sluice.pipeline', "UPDATE sluice.pipeline SET state = 'running'" ],
	[ 'UPDATE sluice.batch', "UPDATE sluice.batch SET status = 'planned'" ],
	[ 'DELETE FROM sluice.file', 'DELETE FROM sluice.file' ],
	[ 'INSERT INTO sluice.error', "INSERT INTO sluice.error (pipeline_id, sqlstate, message) VALUES (1, '00000', 'x')" ],
	[ 'nextval of sluice.pipeline_id_seq', "SELECT nextval('sluice.pipeline_id_seq')" ])
{
	my ($what, $sql) = @$t;
	my ($rc, $out, $err) = $node->psql('postgres', "SET ROLE feeder;\n\\set VERBOSITY verbose\n$sql");
	like($err, qr/ERROR:  42501: permission denied for (table|sequence)/, "after the update: a user may not $what");
}
is(as_feeder('SELECT count(*) FROM sluice.pipeline'), '3', 'the user still reads its pipelines');

# the catalog's rows say the same in their new columns
is($node->safe_psql('postgres',
		"SELECT string_agg(concat_ws(' ', name, owner, target, late_rows, state_table, sink->>'relid'), ', ' ORDER BY id)"
		  . ' FROM sluice.pipeline'),
	'ap feeder ingest.ap_t, mg feeder ingest.mg_t, wn feeder ingest.wn_out ingest.wn_late ingest.sluice_state_wn',
	'owners, targets, late rows and state tables moved to their typed columns');
is($node->safe_psql('postgres',
		"SELECT string_agg(name || ' ' || target, ', ' ORDER BY name) FROM sluice.pipelines"),
	'ap ingest.ap_t, mg ingest.mg_t, wn ingest.wn_out', 'sluice.pipelines shows them');
for my $name (@pipelines)
{
	# (the pipelines go on by themselves after the update: compare the batches they had)
	is($node->safe_psql('postgres',
			"SELECT b::text FROM sluice.batch b JOIN sluice.pipeline p ON p.id = b.pipeline_id"
			  . " WHERE p.name = '$name' AND b.batch_id <= $last_before{$name} ORDER BY b.batch_id"),
		$batches_before{$name}, "$name: its batches are those it had before the update");
}

# the pipelines go on by themselves
is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.pipeline WHERE state <> 'running'"), '0',
	'every pipeline is still running after the update');
wait_until($node,
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND usename = 'feeder'",
	'3', 'a worker runs each pipeline, as its owner');

for my $name (@pipelines)
{
	my $n = @{ $batch{$name}[0] } + @{ $batch{$name}[1] };
	wait_until($node, committed_files($name), $n, "$name: read the files that arrived before and during the update");
}
move_in(@{ $batch{$_}[2] }) for @pipelines;
for my $name (@pipelines)
{
	wait_until($node, committed_files($name), scalar(@{ $files{$name} }),
		"$name: read the files that arrived after the update");
}

# every file once: as many batches as files, one file each, and the targets
for my $name (@pipelines)
{
	my $n = @{ $files{$name} };
	is($node->safe_psql('postgres',
			"SELECT format('%s %s %s', count(*), count(*) FILTER (WHERE status = 'committed' AND files = 1),"
			  . " count(DISTINCT (end_offset->'files'->0->>'path'))) FROM sluice.progress('$name', 1000)"),
		"$n $n $n", "$name: $n batches, each committed with its own one file");
}
check_table($node, 'ingest.ap_t', $files{ap}, 'ap: the target holds every row of its files exactly once');
rows_match(
	[ split /\n/, $node->safe_psql('postgres',
		"SELECT concat_ws('|', customer, id, amount, ts) FROM ingest.mg_t ORDER BY customer") ],
	last_per_customer([ csv_rows(@{ $files{mg} }) ]),
	'mg: the target holds the last row of each customer over all its files');

my $model = window_model($files{wn}, size_s => 600, delay_s => 600, mode => 'append');
rows_match(window_db_target($node, 'ingest.wn_out'), $model->{target}, 'wn: the target equals the model');
rows_match(window_db_late($node, 'ingest.wn_late'), $model->{late}, 'wn: the late rows equal the model');
rows_match(window_db_progress($node, 'wn'), $model->{batches},
	'wn: each batch\'s watermark, dropped rows and state equal the model');
rows_match(window_db_state($node, 'ingest.sluice_state_wn'), $model->{state}, 'wn: the state equals the model');
is($node->safe_psql('postgres', 'SELECT ' . us_ts('watermark') . " FROM sluice.pipeline WHERE name = 'wn'"),
	$model->{W}, 'wn: the watermark is the model\'s');

if ($old_bin)
{
	my ($batches, $files, $state, $w) = @at_restart{
		'SELECT b::text FROM sluice.batch b ORDER BY pipeline_id, batch_id',
		'SELECT f::text FROM sluice.file f ORDER BY pipeline_id, path',
		'SELECT s::text FROM ingest.sluice_state_wn s ORDER BY 1',
		"SELECT watermark FROM sluice.pipeline WHERE name = 'wn'" };
	my %now_batches = map { $_ => 1 } split /\n/, $node->safe_psql('postgres',
		'SELECT b::text FROM sluice.batch b ORDER BY pipeline_id, batch_id');
	my %now_files = map { $_ => 1 } split /\n/, $node->safe_psql('postgres',
		'SELECT f::text FROM sluice.file f ORDER BY pipeline_id, path');
	is(scalar(grep { !$now_batches{$_} } split /\n/, $batches), 0, 'the batches committed under 0.1 are kept as they were');
	is(scalar(grep { !$now_files{$_} } split /\n/, $files), 0, 'the files read under 0.1 are kept as they were');
	is($node->safe_psql('postgres',
			"SELECT watermark FROM sluice.progress('wn', 1000) WHERE batch_id = $before{wn} + 1"),
		$w, 'wn: the first batch after the upgrade ran with the watermark of the last under 0.1');
}

# A dump of the upgraded database restores like any other: the update moved
# the extension to pg_catalog and took in the schema 0.1 made outside it.
is($node->safe_psql('postgres',
		"SELECT extnamespace::regnamespace FROM pg_extension WHERE extname = 'sluice'"),
	'pg_catalog', 'the upgraded extension lives in pg_catalog, as a fresh one');
my $dump = PostgreSQL::Test::Utils::tempdir('dump') . '/up.sql';
$node->command_ok([ 'pg_dump', '-d', 'postgres', '-f', $dump ], 'pg_dump of the upgraded database');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'restored', '-f', $dump ],
	'its dump restores into a new database with no error');
# (by column name: an upgraded table has its new columns last)
for my $sql ('SELECT row(id, name, owner, source, sink, target, late_rows, sink_function, trigger, transform,'
	  . ' event_time, watermark_delay, watermark, state_table, committed_batch, state)::text FROM sluice.pipeline ORDER BY id',
	'SELECT b::text FROM sluice.batch b ORDER BY 1',
	'SELECT f::text FROM sluice.file f ORDER BY 1')
{
	is($node->safe_psql('restored', $sql), $node->safe_psql('postgres', $sql), "restored: the same rows of: $sql");
}

$node->stop;
done_testing();

# Backpressure also slows down when the database is under pressure: when
# the WAL written since the last checkpoint began passes sluice.wal_pressure
# of max_wal_size, or a replica lags by more than sluice.max_replica_lag.
# Each plan then halves what a batch may take, down to one file, and
# sluice.pipelines says why; once the pressure is gone, batches grow again.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;

my $node = sluice_node('pressure', "checkpoint_timeout = '1h'\n", allows_streaming => 1);
my $cols = 'id bigint, customer int, amount numeric(12,2), ts timestamptz';

# WAL since the last checkpoint: some 10 MB, far over 0.1% of max_wal_size (1 GB)
sub make_wal
{
	$node->safe_psql('postgres', 'CHECKPOINT; DROP TABLE IF EXISTS junk; CREATE TABLE junk AS SELECT generate_series(1, 500000) AS n');
	return;
}

sub set_conf
{
	my ($setting) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET $setting; SELECT pg_reload_conf()");
	return;
}

sub pipeline
{
	my ($name, $files) = @_;
	my $dir = $node->basedir . "/$name";
	gen_files($dir, files => $files, rows => 200, prefix => $name);
	$node->safe_psql('postgres', qq{
CREATE TABLE t_$name ($cols);
SELECT sluice.create_pipeline('$name', sluice.csv_source('$dir', '$cols'),
  sluice.append_sink('t_$name'), '300 milliseconds');
SELECT sluice.start('$name');
});
	return;
}

my $throttled = "SELECT throttled_by FROM sluice.pipelines WHERE name = ";
my $five = "SELECT count(*) >= 5 FROM sluice.progress(%s, 10000)";

# ---------------------------------------------------------------------------
# 1. WAL near max_wal_size

set_conf('sluice.wal_pressure = 0.001');
make_wal();
pipeline('wal', 200);
my $why = poll_value($node, "$throttled 'wal'");
like($why, qr/^\d+ [kM]B of WAL since the last checkpoint began, more than sluice\.wal_pressure \(0\.001\) of max_wal_size$/,
	"wal: sluice.pipelines says why the pipeline is held back ($why)");
wait_until($node, sprintf($five, "'wal'"), 't', 'wal: five batches');
is($node->safe_psql('postgres', "SELECT max(files) || ' ' || max(size_limit) FROM sluice.progress('wal', 10000)"),
	'1 1', 'wal: under pressure every batch takes one file');
set_conf('sluice.wal_pressure = 0');    # never
wait_until($node, "SELECT throttled_by IS NULL FROM sluice.pipelines WHERE name = 'wal'", 't',
	'wal: sluice.wal_pressure = 0 ends it after the reload');
wait_until($node, "SELECT max(files) > 1 FROM sluice.progress('wal', 10000)", 't', 'wal: batches grow again');
wait_until($node, 'SELECT count(*) FROM t_wal', '40000', 'wal: every row');
is($node->safe_psql('postgres', 'SELECT count(DISTINCT id) FROM t_wal'), '40000', 'wal: every row once');

# ---------------------------------------------------------------------------
# 2. A replica that lags

$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('pressure_standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$standby->start;
$node->wait_for_catchup($standby);
$standby->safe_psql('postgres', 'SELECT pg_wal_replay_pause()');
set_conf("sluice.max_replica_lag = '64kB'");
make_wal();
pipeline('lag', 100);
$why = poll_value($node, "$throttled 'lag'");
like($why, qr/^a replica lags by \d+ [kM]B, more than sluice\.max_replica_lag$/,
	"lag: sluice.pipelines says why the pipeline is held back ($why)");
wait_until($node, sprintf($five, "'lag'"), 't', 'lag: five batches');
# the reason is the owner's to see (and pg_read_all_stats')
$node->safe_psql('postgres', 'CREATE ROLE other LOGIN');
my $id = $node->safe_psql('postgres', "SELECT id FROM sluice.pipeline WHERE name = 'lag'");
is($node->safe_psql('postgres', "SET ROLE other; SELECT (sluice._live($id)).throttled_by IS NULL"), 't',
	'lag: another role does not see why');
is($node->safe_psql('postgres', "GRANT pg_read_all_stats TO other; SET ROLE other; SELECT (sluice._live($id)).throttled_by IS NOT NULL"),
	't', 'lag: pg_read_all_stats does');
is($node->safe_psql('postgres', "SELECT max(files) FROM sluice.progress('lag', 10000)"), '1',
	'lag: while the replica lags every batch takes one file');
$standby->safe_psql('postgres', 'SELECT pg_wal_replay_resume()');
wait_until($node, "SELECT throttled_by IS NULL FROM sluice.pipelines WHERE name = 'lag'", 't',
	'lag: the pressure is gone once the replica caught up');
wait_until($node, 'SELECT count(*) FROM t_lag', '20000', 'lag: every row');
cmp_ok($node->safe_psql('postgres', "SELECT max(files) FROM sluice.progress('lag', 10000)"), '>', 1,
	'lag: batches grew again');

$standby->stop;
$node->stop;
done_testing();

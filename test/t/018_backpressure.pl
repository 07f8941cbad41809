# Backpressure: facing a backlog, a running pipeline sizes each batch from
# the speed of the last ones, so that a batch takes about one trigger
# interval.  The sink here costs 4 ms a row; after 3 warm-up batches every
# batch must take at most 2.5 times the 1-second trigger, for a CSV source
# (sized in bytes) and a Kafka source (sized in offsets).  The first batch of
# a backlog is small, sluice.progress shows what each batch was allowed,
# the user's own limits are never passed, and backpressure => false takes the
# whole backlog at once.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use SluiceTest;
use KafkaMock;

my $node = sluice_node('backpressure');
my $cols = 'id bigint, customer int, amount numeric(12,2), ts timestamptz';

# a sink that costs 4 ms a row
$node->safe_psql('postgres', qq{
CREATE TABLE slow_rows (pipeline text, batch_id bigint, id bigint);
CREATE FUNCTION slow_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS \$\$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('INSERT INTO slow_rows SELECT current_setting(''application_name''), %s, id FROM %s',
                   batch_id, batch);
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_sleep(0.004 * n);
END \$\$;
});

sub durations
{
	my ($name) = @_;
	return [ split /\n/, $node->safe_psql('postgres',
		"SELECT round((duration_ms->>'total')::numeric) FROM sluice.progress('$name', 1000) ORDER BY batch_id") ];
}

sub check_bounded
{
	my ($name, $what, $rows) = @_;
	my $d = durations($name);
	note "$what: batch durations (ms): @$d";
	cmp_ok(scalar(@$d), '>', 4, "$what: the backlog took several batches");
	my @late = grep { $_ > 2500 } @$d[ 3 .. $#$d ];
	is(scalar(@late), 0, "$what: after 3 warm-up batches no batch took more than 2.5 s");
	is($node->safe_psql('postgres', "SELECT count(*), count(DISTINCT id) FROM slow_rows WHERE pipeline = '$name'"),
		"$rows|$rows", "$what: every row once");
	is($node->safe_psql('postgres', "SELECT count(*) FROM sluice.progress('$name', 1000) WHERE size_limit IS NULL"),
		'0', "$what: progress shows what every batch was allowed");
	return;
}

# ---------------------------------------------------------------------------
# 1. A CSV source: 60 files of 25 rows (100 ms of sink each), 6 s of work

my $dir = $node->basedir . '/slow';
gen_files($dir, files => 60, rows => 25);
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('slow_csv', sluice.csv_source('$dir', '$cols'),
  sluice.function_sink('slow_sink(bigint, regclass)'), '1 second');
SELECT sluice.start('slow_csv');
});
wait_until($node, "SELECT count(*) FROM slow_rows WHERE pipeline = 'slow_csv'", '1500', 'csv: every row');
is($node->safe_psql('postgres', "SELECT files || ' ' || size_limit FROM sluice.progress('slow_csv', 1000) ORDER BY batch_id LIMIT 1"),
	'1 1', 'csv: the first batch of the backlog takes one file');
check_bounded('slow_csv', 'csv', 1500);

# ---------------------------------------------------------------------------
# 2. The same files without backpressure: one batch takes them all

my $dir2 = $node->basedir . '/slow2';
gen_files($dir2, files => 60, rows => 25, first_id => 100_000);
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('flood', sluice.csv_source('$dir2', '$cols'),
  sluice.function_sink('slow_sink(bigint, regclass)'), '1 second', backpressure => false);
SELECT sluice.start('flood');
});
wait_until($node, "SELECT count(*) FROM slow_rows WHERE pipeline = 'flood'", '1500', 'flood: every row');
is($node->safe_psql('postgres', "SELECT count(*) || ' ' || max(files) || ' ' || count(size_limit) FROM sluice.progress('flood', 1000)"),
	'1 60 0', 'flood: without backpressure the first batch takes all 60 files, unlimited');

# ---------------------------------------------------------------------------
# 3. A Kafka source: 1,200 messages in 2 partitions, 4.8 s of work

my $kafka = KafkaMock->new($node->basedir);
my $brokers = $kafka->brokers;
$kafka->cmd('topic slow 2');
for my $p (0 .. 1)
{
	my @lines = map { my $id = 200_000 + 1000 * $p + $_; "$id,7,1.50,2024-01-01 00:00:00+00" } 1 .. 600;
	is($kafka->produce('slow', $p, \@lines), 600, "slow: 600 messages into partition $p");
}
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('slow_kafka', sluice.kafka_source('$brokers', 'slow', '$cols'),
  sluice.function_sink('slow_sink(bigint, regclass)'), '1 second');
SELECT sluice.start('slow_kafka');
});
wait_until($node, "SELECT count(*) FROM slow_rows WHERE pipeline = 'slow_kafka'", '1200', 'kafka: every message');
is($node->safe_psql('postgres', "SELECT input_rows || ' ' || size_limit FROM sluice.progress('slow_kafka', 1000) ORDER BY batch_id LIMIT 1"),
	'100 100', 'kafka: the first batch of the backlog takes 100 messages');
check_bounded('slow_kafka', 'kafka', 1200);

# ---------------------------------------------------------------------------
# 4. A fast sink: backpressure lets batches grow, never past the user's limit

$kafka->cmd('topic fast 2');
for my $p (0 .. 1)
{
	my @lines = map { my $id = 300_000 + 10_000 * $p + $_; "$id,7,1.50,2024-01-01 00:00:00+00" } 1 .. 3000;
	is($kafka->produce('fast', $p, \@lines), 3000, "fast: 3000 messages into partition $p");
}
$node->safe_psql('postgres', qq{
CREATE TABLE t_fast ($cols);
SELECT sluice.create_pipeline('fast', sluice.kafka_source('$brokers', 'fast', '$cols', max_offsets_per_trigger => 500),
  sluice.append_sink('t_fast'), '100 milliseconds');
SELECT sluice.start('fast');
});
wait_until($node, 'SELECT count(*) FROM t_fast', '6000', 'fast: every message');
my $sizes = "SELECT (SELECT sum((e.value::text)::bigint - (s.value::text)::bigint)"
  . " FROM jsonb_each(b.start_offset->'fast') AS s JOIN jsonb_each(b.end_offset->'fast') AS e USING (key))"
  . " FROM sluice.progress('fast', 1000) AS b ORDER BY b.batch_id";
my @sizes = split /\n/, $node->safe_psql('postgres', $sizes);
note "fast: batch sizes @sizes";
is($sizes[0], 100, 'fast: the first batch takes 100 messages');
is(scalar(grep { $_ > 500 } @sizes), 0, 'fast: no batch takes more than max_offsets_per_trigger');
cmp_ok($node->safe_psql('postgres', "SELECT max(size_limit) FROM sluice.progress('fast', 1000)"), '>', 500,
	'fast: backpressure alone would have allowed more');

# ---------------------------------------------------------------------------
# 5. A sink whose cost is fixed (300 ms a batch, whatever its size) against a
# 100 ms trigger: smaller batches would not be shorter, so no batch is
# allowed less than the initial 100 offsets; and min_offsets_per_trigger
# raises what backpressure allows

# the pipelines above give their workers back first (sluice.max_workers is 4)
$node->safe_psql('postgres', 'SELECT sluice.stop(name) FROM sluice.pipeline');
wait_until($node, 'SELECT count(worker_pid) FROM sluice.pipelines', '0', 'every earlier worker gone');
$node->safe_psql('postgres', q{
CREATE FUNCTION fixed_sink(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO slow_rows SELECT current_setting(''application_name''), %s, id FROM %s',
                   batch_id, batch);
    PERFORM pg_sleep(0.3);
END $$;
});
for my $topic (qw(fixed least))
{
	$kafka->cmd("topic $topic 1");
	my $base = $topic eq 'fixed' ? 400_000 : 500_000;
	my @lines = map { my $id = $base + $_; "$id,7,1.50,2024-01-01 00:00:00+00" } 1 .. 600;
	is($kafka->produce($topic, 0, \@lines), 600, "$topic: 600 messages");
}
$node->safe_psql('postgres', qq{
SELECT sluice.create_pipeline('fixed', sluice.kafka_source('$brokers', 'fixed', '$cols'),
  sluice.function_sink('fixed_sink(bigint, regclass)'), '100 milliseconds');
SELECT sluice.create_pipeline('least', sluice.kafka_source('$brokers', 'least', '$cols', min_offsets_per_trigger => 300),
  sluice.function_sink('fixed_sink(bigint, regclass)'), '100 milliseconds');
SELECT sluice.start('fixed'), sluice.start('least');
});
wait_until($node, "SELECT count(*) FROM slow_rows WHERE pipeline = 'fixed'", '600', 'fixed: every message');
is($node->safe_psql('postgres', "SELECT min(size_limit) || ' ' || min(input_rows) FROM sluice.progress('fixed', 1000)"),
	'100 100', 'fixed: no batch was allowed less than 100 offsets, though each took 3 trigger intervals');
wait_until($node, "SELECT count(*) FROM slow_rows WHERE pipeline = 'least'", '600', 'least: every message');
is($node->safe_psql('postgres', "SELECT string_agg(size_limit || ':' || input_rows, ' ' ORDER BY batch_id) FROM sluice.progress('least', 1000)"),
	'300:300 300:300', 'least: backpressure allows no batch less than min_offsets_per_trigger (300, not 100)');

$node->stop;
$kafka->stop;
done_testing();

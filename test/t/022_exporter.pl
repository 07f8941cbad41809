# sluice.metrics() through the real postgres_exporter (Debian's
# prometheus-postgres-exporter, installed by scripts/setup) with the
# repository's query file, contrib/prometheus/sluice.yaml: the exporter,
# connected as a role with pg_monitor, serves sluice_pipeline_* series
# labelled by pipeline, with the values the catalog holds; the Grafana
# dashboard (contrib/grafana/sluice.json) is valid JSON and uses only series
# the exporter serves.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use SluiceTest;

my $exporter = '/usr/bin/prometheus-postgres-exporter';
plan skip_all => "$exporter is not installed (scripts/setup installs it)" unless -x $exporter;

my $repo = "$FindBin::RealBin/../..";
my $node = sluice_node('exporter');

# two pipelines of two owners: one with 3 batches of 40 rows, one failed
my $dir = $node->basedir . '/feed';
my @paths = gen_files($dir, files => 3, rows => 40, prefix => 'feed');
my $bad = $node->basedir . '/bad';
mkdir $bad;
open my $fh, '>', "$bad/bad.csv" or die;
print $fh "id,customer,amount,ts\n1,2,abc,2024-01-01 00:00:00+00\n";
close $fh;
$node->safe_psql('postgres', qq{
CREATE ROLE alice LOGIN IN ROLE pg_read_server_files;
CREATE ROLE bob LOGIN IN ROLE pg_read_server_files;
CREATE ROLE scraper LOGIN IN ROLE pg_monitor;
GRANT CREATE ON SCHEMA public TO alice, bob;
});
$node->safe_psql('postgres', qq{
SET ROLE alice;
CREATE TABLE t_feed (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('feed',
  sluice.csv_source('$dir', '$SluiceTest::COLUMNS', max_files_per_trigger => 1,
                    on_error => 'skip'),
  sluice.append_sink('t_feed'), 'available_now');
});
is($node->safe_psql('postgres', "SET ROLE alice; SELECT sluice.run_once('feed')"), '3', 'feed: 3 batches');
$node->safe_psql('postgres', qq{
SET ROLE bob;
CREATE TABLE t_bad (id bigint, customer int, amount numeric(12,2), ts timestamptz);
SELECT sluice.create_pipeline('bad', sluice.csv_source('$bad', '$SluiceTest::COLUMNS'),
  sluice.append_sink('t_bad'), 'available_now');
});
$node->psql('postgres', "SET ROLE bob; SELECT sluice.run_once('bad')");

# what each role sees
is($node->safe_psql('postgres', 'SET ROLE alice; SELECT string_agg(pipeline, \',\') FROM sluice.metrics()'),
	'feed', 'metrics(): a plain role sees its own pipelines only');
is($node->safe_psql('postgres', 'SET ROLE scraper; SELECT string_agg(pipeline, \',\' ORDER BY pipeline) FROM sluice.metrics()'),
	'bad,feed', 'metrics(): pg_monitor sees every pipeline');
is($node->safe_psql('postgres', q{SET ROLE scraper;
SELECT concat_ws(' ', running, failed, batches_total, input_rows_total, output_rows_total, rejected_rows_total,
                 failures_total, workers) FROM sluice.metrics() WHERE pipeline = 'feed'}),
	'0 0 3 120 120 0 0 0', 'metrics(): feed: stopped, 3 batches, 120 rows in and out');
is($node->safe_psql('postgres', q{SET ROLE scraper;
SELECT concat_ws(' ', running, failed, batches_total, failures_total) FROM sluice.metrics() WHERE pipeline = 'bad'}),
	'0 1 0 1', 'metrics(): bad: failed, no batch, one failure');

# the exporter
my $port = PostgreSQL::Test::Cluster::get_free_port();
my ($out, $err) = ('', '');
my $dsn = sprintf('host=%s port=%d user=scraper dbname=postgres sslmode=disable', $node->host, $node->port);
my $h = IPC::Run::start(
	[ $exporter, "--web.listen-address=127.0.0.1:$port", "--extend.query-path=$repo/contrib/prometheus/sluice.yaml",
	  '--disable-default-metrics', '--disable-settings-metrics' ],
	'>', \$out, '2>', \$err,
	init => sub { $ENV{DATA_SOURCE_NAME} = $dsn });
my $http = HTTP::Tiny->new(timeout => 10);
my $body = '';
for (1 .. 100)
{
	my $r = $http->get("http://127.0.0.1:$port/metrics");
	$body = $r->{content} if $r->{success};
	last if $body =~ /^sluice_pipeline_input_rows_total/m;
	usleep(200_000);
}
$h->kill_kill;
note "exporter stderr: $err" if $err ne '';

my %series;
while ($body =~ /^(sluice_pipeline_\w+)\{([^}]*)\} (\S+)$/mg)
{
	my ($name, $labels, $value) = ($1, $2, $3);
	my ($pipeline) = $labels =~ /pipeline="([^"]*)"/;
	$series{$name}{ $pipeline // '' } = $value;
}
ok(exists $series{sluice_pipeline_input_rows_total}, 'exporter: serves sluice_pipeline_input_rows_total');
is($series{sluice_pipeline_input_rows_total}{feed}, '120', 'exporter: feed read 120 rows');
is($series{sluice_pipeline_batches_total}{feed}, '3', 'exporter: in 3 batches');
is($series{sluice_pipeline_output_rows_total}{feed}, '120', 'exporter: and wrote 120');
is($series{sluice_pipeline_failed}{bad}, '1', 'exporter: bad is failed');
is($series{sluice_pipeline_failures_total}{bad}, '1', 'exporter: with one failure');
is($series{sluice_pipeline_running}{feed}, '0', 'exporter: feed is not running');
like($body, qr/^# TYPE sluice_pipeline_input_rows_total counter$/m, 'exporter: input_rows_total is a counter');
like($body, qr/^# TYPE sluice_pipeline_backlog gauge$/m, 'exporter: backlog is a gauge');
my @columns = grep { $_ ne 'pipeline' } split /\n/, $node->safe_psql('postgres',
	"SELECT parameter_name FROM information_schema.parameters WHERE specific_name LIKE 'metrics%'"
	  . " AND specific_schema = 'sluice' AND parameter_mode = 'OUT' ORDER BY ordinal_position");
is(scalar(@columns), 16, 'metrics() has 16 numbers');
is(join(' ', grep { !exists $series{"sluice_pipeline_$_"} } @columns), '',
	'exporter: a series for every column of metrics()');
unlike($body, qr/"dir"|\/feed|password/, 'exporter: no source option is in the series');

# the Grafana dashboard
my $dashboard = decode_json(slurp_file("$repo/contrib/grafana/sluice.json"));
my @exprs = map { map { $_->{expr} } @{ $_->{targets} } } @{ $dashboard->{panels} };
cmp_ok(scalar(@exprs), '>=', 10, 'grafana: the dashboard has its queries');
my %used = map { $_ => 1 } map { /\b(sluice_pipeline_\w+)/g } @exprs, $dashboard->{templating}{list}[0]{query};
is(join(' ', grep { !exists $series{$_} } sort keys %used), '', 'grafana: every series it uses is served by the exporter');
cmp_ok(scalar(keys %used), '>=', 12, 'grafana: it shows most of the series');

$node->stop;
done_testing();

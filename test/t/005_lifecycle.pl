# Launcher and worker lifecycle: the library must be preloaded; the launcher
# restarts a worker that was terminated; start() rolled back starts nothing.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# without shared_preload_libraries CREATE EXTENSION fails with a hint
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
my ($rc, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION sluice');
isnt($rc, 0, 'CREATE EXTENSION fails without preloading');
like($err, qr/sluice must be loaded via shared_preload_libraries/, 'the error says why');
like($err, qr/HINT:  Add sluice to shared_preload_libraries/, 'and how to fix it');
$plain->stop;

my $node = PostgreSQL::Test::Cluster->new('lifecycle');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'sluice'
sluice.restart_delay = 1
});
$node->start;

my $dir = $node->basedir . '/feed';
mkdir $dir or die;
$node->safe_psql('postgres', qq{
CREATE EXTENSION sluice;
CREATE TABLE t (id int PRIMARY KEY);
SELECT sluice.create_pipeline('life', sluice.csv_source('$dir', 'id int'), sluice.append_sink('t'));
});

# a rolled-back start() starts nothing
$node->safe_psql('postgres', q{BEGIN; SELECT sluice.start('life'); ROLLBACK;});
sleep 1;
is($node->safe_psql('postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sluice worker'"),
	'0', 'no worker after a rolled-back start()');

$node->safe_psql('postgres', q{SELECT sluice.start('life')});
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND application_name = 'life'")
  or die 'worker did not start';
my $pid = $node->safe_psql('postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'sluice worker'");

# terminating the worker is not a crash: the launcher starts a new one
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'sluice worker' AND pid <> $pid")
  or die 'worker was not restarted';
pass('a terminated worker is restarted by the launcher');
is($node->safe_psql('postgres', "SELECT state FROM sluice.pipelines"), 'running',
	'the pipeline is still running');

# and it still works
open(my $fh, '>', "$dir/a.csv") or die;
print $fh "id\n1\n2\n3\n";
close $fh;
$node->poll_query_until('postgres', 'SELECT count(*) = 3 FROM t')
  or die 'rows did not arrive';
pass('the restarted worker ingests new files');

# stop() ends the worker
$node->safe_psql('postgres', q{SELECT sluice.stop('life')});
$node->poll_query_until('postgres',
	"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'sluice worker'")
  or die 'worker did not stop';
pass('stop() ends the worker');

$node->stop;
done_testing();

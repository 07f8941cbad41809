# The tests' Kafka cluster: test/kafka_mock (librdkafka's mock cluster, a
# real Kafka protocol peer on loopback ports), driven through its stdin.
#
#   my $kafka = KafkaMock->new($basedir);          # or ($basedir, '-p'): through
#                                                    # the proxy, which can hide partitions
#   $kafka->cmd('topic bank 4');
#   $kafka->produce('bank', 0, \@lines);            # or ..., 'commit' / 'abort'
#   $kafka->brokers;                                 # "127.0.0.1:port,..."
#   $kafka->stop;
package KafkaMock;

use strict;
use warnings;

use FindBin;
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;

my $seq = 0;

sub new
{
	my ($class, $dir, @args) = @_;
	my $self = bless { dir => $dir, in => '', out => '', err => '' }, $class;
	my $bin = "$FindBin::RealBin/../kafka_mock";
	die "no $bin: run make first" unless -x $bin;
	$self->{h} = IPC::Run::start([$bin, @args], '<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	my $line = $self->_line;
	die "kafka_mock: $line" unless $line =~ /^bootstrap (\S+)$/;
	$self->{brokers} = $1;
	return $self;
}

sub _line
{
	my ($self) = @_;
	$self->{h}->pump until $self->{out} =~ s/^([^\n]*)\n//;
	return $1;
}

sub brokers { return $_[0]->{brokers}; }

# Send one command; die unless the answer is "ok ...".  Returns the answer.
sub cmd
{
	my ($self, $cmd) = @_;
	$self->{in} .= "$cmd\n";
	my $answer = $self->_line;
	die "kafka_mock: $cmd: $answer" unless $answer =~ /^ok/;
	return $answer;
}

# Produce each line as one message to topic/partition, optionally in a
# transaction that is committed or aborted; returns the count acknowledged.
sub produce
{
	my ($self, $topic, $partition, $lines, $txn) = @_;
	my $file = sprintf('%s/produce_%d.txt', $self->{dir}, ++$seq);
	open(my $fh, '>', $file) or die "$file: $!";
	print $fh map { "$_\n" } @$lines;
	close($fh);
	my ($n) = $self->cmd("produce $topic $partition $file" . ($txn ? " $txn" : '')) =~ /^ok (\d+)/;
	unlink $file;
	return $n;
}

sub stop
{
	my ($self) = @_;
	return unless $self->{h};
	$self->{in} .= "quit\n";
	eval { $self->{h}->finish; };
	$self->{h}->kill_kill if $@;
	delete $self->{h};
	return;
}

sub DESTROY
{
	my ($self) = @_;
	$self->{h}->kill_kill if $self->{h};
	return;
}

1;

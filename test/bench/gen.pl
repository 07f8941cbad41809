#!/usr/bin/perl
# gen.pl: deterministic bank-transaction CSV files for the sluice benchmark.
#
#   perl test/bench/gen.pl OUT_DIR N_FILES ROWS_PER_FILE FIRST_ID SEED
#
# Writes OUT_DIR/bank_0001.csv .. bank_NNNN.csv with the header
# transaction_id,customer_id,amount,transaction_date.  transaction_id runs
# from FIRST_ID up, unique across all files; customer_id is in 1..1000;
# amount has two decimals (0.01 .. 5000.00, about 1 in 10 negative, a
# refund); transaction_date is an ISO 8601 timestamptz in 2024, non
# decreasing within a file.  The same arguments always give the same bytes
# (a 64-bit xorshift generator of its own, not Perl's rand()).
use strict;
use warnings;
no warnings 'portable';	# 64-bit constants below; perl here is 64-bit
use integer;

die "usage: $0 out_dir n_files rows_per_file first_id seed\n" unless @ARGV == 5;
my ($out, $n_files, $rows, $first_id, $seed) = @ARGV;
die "$out is not a directory\n" unless -d $out;
for ($n_files, $rows, $first_id, $seed) {
	die "arguments after out_dir must be non-negative integers\n" unless /^\d+$/;
}

# xorshift64*, state kept non-zero; 'use integer' gives wrapping 64-bit ops
my $s = ($seed * 2654435761 + 88172645463325252) || 1;
sub rnd {
	my ($n) = @_;				# uniform-ish in 0 .. n-1
	$s ^= ($s >> 12) & 0x000FFFFFFFFFFFFF;
	$s ^= $s << 25;
	$s ^= ($s >> 27) & 0x0000001FFFFFFFFF;
	my $v = ($s * 2685821657736338717) >> 1;
	$v &= 0x7FFFFFFFFFFFFFFF;
	return $v % $n;
}

my @mdays = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31);    # 2024
my $id = $first_id;
my $year_secs = 366 * 86400;
for my $f (1 .. $n_files) {
	my $path = sprintf("%s/bank_%04d.csv", $out, $f);
	open(my $fh, '>', $path) or die "cannot write $path: $!\n";
	print $fh "transaction_id,customer_id,amount,transaction_date\n";
	# each file covers a slice of the year; times grow inside a file
	my $t = ($f - 1) * ($year_secs / ($n_files || 1));
	my $step = 2 * ($year_secs / ($n_files || 1)) / ($rows || 1);
	$step = 1 if $step < 1;
	my $buf = '';
	for my $r (1 .. $rows) {
		$t += rnd($step) if $step > 0;
		$t = $year_secs - 1 if $t >= $year_secs;
		my $day = $t / 86400;
		my $sec = $t % 86400;
		my $m = 0;
		while ($day >= $mdays[$m]) { $day -= $mdays[$m]; $m++; }
		my $cents = 1 + rnd(500000);
		my $sign = rnd(10) == 0 ? '-' : '';
		$buf .= sprintf("%d,%d,%s%d.%02d,2024-%02d-%02dT%02d:%02d:%02d+00:00\n",
						$id++, 1 + rnd(1000), $sign, $cents / 100, $cents % 100,
						$m + 1, $day + 1, $sec / 3600, ($sec / 60) % 60, $sec % 60);
		if (length($buf) > 65536) { print $fh $buf; $buf = ''; }
	}
	print $fh $buf;
	close($fh) or die "cannot write $path: $!\n";
}

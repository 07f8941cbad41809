#!/usr/bin/perl
# Deterministic bank-transaction CSV feed for the demo and tests.
#   perl test/gen_bank.pl OUT_DIR N_FILES ROWS_PER_FILE FIRST_ID SEED [DELAY_SECONDS]
# Writes OUT_DIR/bank_00001.csv ... with transaction_id FIRST_ID.. (unique, consecutive),
# customer_id 1..1000, amount 0.01..9999.99, transaction_date ISO timestamptz.
# Each file is written in a staging dir next to OUT_DIR and renamed in, so it is
# complete when it appears. Same arguments => same bytes.
use strict;
use warnings;
use File::Basename qw(basename dirname);
use POSIX qw(strftime);
use Time::HiRes qw(sleep);

@ARGV >= 5 or die "usage: $0 out_dir n_files rows_per_file first_id seed [delay_seconds]\n";
my ($out, $n_files, $rows, $id, $seed, $delay) = @ARGV;
$delay //= 0;
srand($seed);

-d $out or mkdir $out or die "mkdir $out: $!\n";
my $staging = dirname($out) . '/.staging-' . basename($out);
-d $staging or mkdir $staging or die "mkdir $staging: $!\n";

my $t = 1704067200;    # 2024-01-01 00:00:00 UTC
for my $f (1 .. $n_files) {
    my $name = sprintf 'bank_%05d.csv', $f;
    open my $fh, '>', "$staging/$name" or die "open $staging/$name: $!\n";
    print $fh "transaction_id,customer_id,amount,transaction_date\n";
    for (1 .. $rows) {
        $t += int(rand(60));
        my $cents = 1 + int(rand(999_999));
        printf $fh "%d,%d,%d.%02d,%s\n", $id++, 1 + int(rand(1000)),
            int($cents / 100), $cents % 100, strftime('%Y-%m-%dT%H:%M:%S+00:00', gmtime $t);
    }
    close $fh or die "close $staging/$name: $!\n";
    rename "$staging/$name", "$out/$name" or die "rename into $out: $!\n";
    sleep $delay if $delay > 0 && $f < $n_files;
}
rmdir $staging;

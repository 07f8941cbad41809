#!/usr/bin/perl
# Deterministic loan-foreclosure CSV feed for the demo and tests: later records
# update earlier ones (upsert with sluice.merge_sink, key loan_id).
#   perl test/gen_loans.pl OUT_DIR N_FILES ROWS_PER_FILE N_LOANS SEED
# Writes OUT_DIR/loans_00001.csv ... with the header loan_id,status,balance,updated_at;
# each line is an update of a random loan (loan_id 1..N_LOANS), status one of
# current, delinquent, foreclosure, paid_off (paid_off has balance 0.00),
# balance 0.00..999999.99 (fits numeric(12,2)), updated_at an ISO timestamptz that
# strictly increases across lines and files. So the latest state of a loan is its
# last record in file order, then line order.
# Each file is written in a staging dir next to OUT_DIR and renamed in, so it is
# complete when it appears; its mtime is set to its last updated_at, so mtimes
# strictly increase with the file number (mtime order = name order = write order).
# Same arguments => same bytes and same mtimes.
use strict;
use warnings;
use File::Basename qw(basename dirname);
use POSIX qw(strftime);

@ARGV == 5 or die "usage: $0 out_dir n_files rows_per_file n_loans seed\n";
my ($out, $n_files, $rows, $n_loans, $seed) = @ARGV;
$n_loans >= 1 or die "$0: n_loans must be at least 1\n";
srand($seed);

-d $out or mkdir $out or die "mkdir $out: $!\n";
my $staging = dirname($out) . '/.staging-' . basename($out);
-d $staging or mkdir $staging or die "mkdir $staging: $!\n";

my @status = qw(current delinquent foreclosure paid_off);
my $t = 1704067200;    # 2024-01-01 00:00:00 UTC
for my $f (1 .. $n_files) {
    $t++;    # mtimes increase even with 0 rows per file
    my $name = sprintf 'loans_%05d.csv', $f;
    open my $fh, '>', "$staging/$name" or die "open $staging/$name: $!\n";
    print $fh "loan_id,status,balance,updated_at\n";
    for (1 .. $rows) {
        $t += 1 + int(rand(60));
        my $loan = 1 + int(rand($n_loans));
        my $st = $status[int(rand(@status))];
        my $cents = int(rand(100_000_000));
        $cents = 0 if $st eq 'paid_off';
        printf $fh "%d,%s,%d.%02d,%s\n", $loan, $st, int($cents / 100), $cents % 100,
            strftime('%Y-%m-%dT%H:%M:%S+00:00', gmtime $t);
    }
    close $fh or die "close $staging/$name: $!\n";
    utime $t, $t, "$staging/$name" or die "utime $staging/$name: $!\n";
    rename "$staging/$name", "$out/$name" or die "rename into $out: $!\n";
}
rmdir $staging;

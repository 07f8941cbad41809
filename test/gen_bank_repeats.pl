#!/usr/bin/perl
# Deterministic bank-transaction CSV files in which some rows repeat the
# transaction_id of an earlier row (for upsert tests and the merge benchmark).
#   perl test/gen_bank_repeats.pl OUT_DIR N_FILES ROWS_PER_FILE SEED REPEAT_EVERY
# Same columns and format as test/gen_bank.pl (transaction_id,customer_id,amount,
# transaction_date). Counting rows across all files from 1, every REPEAT_EVERY-th
# row (REPEAT_EVERY = 5: 20% of the rows) repeats the transaction_id of a random
# earlier row, with new customer_id, amount and transaction_date; all other rows
# get the next new id (1, 2, ...). So the files hold
#   N_FILES * ROWS_PER_FILE - int(N_FILES * ROWS_PER_FILE / REPEAT_EVERY)
# distinct ids, and the latest version of an id is its last row in file order
# (the files' names and mtimes both increase), then line order.
# Files are written in a staging dir next to OUT_DIR and renamed in. Same
# arguments => same bytes.
use strict;
use warnings;
use File::Basename qw(basename dirname);
use POSIX qw(strftime);

@ARGV == 5 or die "usage: $0 out_dir n_files rows_per_file seed repeat_every\n";
my ($out, $n_files, $rows, $seed, $every) = @ARGV;
$every >= 2 or die "$0: repeat_every must be at least 2\n";
srand($seed);

-d $out or mkdir $out or die "mkdir $out: $!\n";
my $staging = dirname($out) . '/.staging-' . basename($out);
-d $staging or mkdir $staging or die "mkdir $staging: $!\n";

my $t = 1704067200;    # 2024-01-01 00:00:00 UTC
my ($row, $next_id) = (0, 1);
for my $f (1 .. $n_files) {
    $t++;
    my $name = sprintf 'bank_%05d.csv', $f;
    open my $fh, '>', "$staging/$name" or die "open $staging/$name: $!\n";
    print $fh "transaction_id,customer_id,amount,transaction_date\n";
    for (1 .. $rows) {
        $row++;
        $t += int(rand(60));
        my $id = $row % $every == 0 ? 1 + int(rand($next_id - 1)) : $next_id++;
        my $cents = 1 + int(rand(999_999));
        printf $fh "%d,%d,%d.%02d,%s\n", $id, 1 + int(rand(1000)),
            int($cents / 100), $cents % 100, strftime('%Y-%m-%dT%H:%M:%S+00:00', gmtime $t);
    }
    close $fh or die "close $staging/$name: $!\n";
    utime $t, $t, "$staging/$name" or die "utime $staging/$name: $!\n";
    rename "$staging/$name", "$out/$name" or die "rename into $out: $!\n";
}
rmdir $staging;

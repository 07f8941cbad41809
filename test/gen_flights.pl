#!/usr/bin/perl
# Deterministic flight-departure CSV feed with late records, for event-time windows.
#   perl test/gen_flights.pl OUT_DIR N_FILES ROWS_PER_FILE SEED [LATE_PER_FILE [STRAGGLERS_PER_FILE]]
# Writes OUT_DIR/flights_00001.csv ... with the header
#   flight_id,origin,dep_delay_minutes,scheduled_departure
# flight_id unique and increasing with the line written, origin one of six airports,
# dep_delay_minutes an int (-10..180, mostly small), scheduled_departure an ISO
# timestamptz. File f covers the hour [H0 + (f-1) h, H0 + f h) (H0 = 2024-03-01
# 06:00 UTC), its ROWS_PER_FILE on-time records spread evenly over the hour, so the
# files come in time order. Mixed in at random lines:
#   - from file 3 on, LATE_PER_FILE (default 2) records that arrive late: their
#     scheduled_departure lies at least one hour before the file's hour (somewhere in
#     the hours of files 1 .. f-2), so their 15-minute window ended at least 45
#     minutes before it; a pipeline reading one file per batch with a watermark
#     delay of 15 minutes has already closed that window (its watermark, the latest
#     time of file f-1 minus 15 minutes, is past H0 + (f-1) h - 3600/ROWS_PER_FILE s
#     - 15 min) and drops them;
#   - from file 2 on, STRAGGLERS_PER_FILE (default 1) records 5 minutes before the
#     file's hour: late too, but within a 15-minute watermark delay, so counted.
# Prints one line per late record to stdout: "late FLIGHT_ID FILE SCHEDULED_DEPARTURE"
# (stragglers are not listed). Each file is written in a staging dir next to OUT_DIR
# and renamed in; its mtime is H0 + f h, so mtime order = name order = time order.
# Same arguments => same bytes, same mtimes and the same output.
use strict;
use warnings;
use File::Basename qw(basename dirname);
use POSIX qw(strftime);

@ARGV >= 4 && @ARGV <= 6
    or die "usage: $0 out_dir n_files rows_per_file seed [late_per_file [stragglers_per_file]]\n";
my ($out, $n_files, $rows, $seed, $late, $strag) = @ARGV;
$late  //= 2;
$strag //= 1;
$rows >= 1 or die "$0: rows_per_file must be at least 1\n";
srand($seed);

-d $out or mkdir $out or die "mkdir $out: $!\n";
my $staging = dirname($out) . '/.staging-' . basename($out);
-d $staging or mkdir $staging or die "mkdir $staging: $!\n";

my @airports = qw(ATL ORD DFW DEN LAX JFK);
my $h0       = 1709272800;    # 2024-03-01 06:00:00 UTC
my $id       = 1;
my $iso      = sub { strftime('%Y-%m-%dT%H:%M:%S+00:00', gmtime $_[0]) };
my $delay    = sub {           # minutes: mostly -10..20, sometimes a long delay
    my $r = rand();
    return $r < 0.8 ? -10 + int(rand(31)) : $r < 0.97 ? 20 + int(rand(60)) : 80 + int(rand(101));
};

for my $f (1 .. $n_files) {
    my $start = $h0 + ($f - 1) * 3600;
    # (time, kind) of every record of the file, in line order
    my @recs = map { [$start + int(($_ + rand()) * 3600 / $rows), 'on_time'] } 0 .. $rows - 1;
    my @extra;
    push @extra, [$start - 300, 'straggler'] for $f >= 2 ? (1 .. $strag) : ();
    push @extra, [$h0 + int(rand(($f - 2) * 3600)), 'late'] for $f >= 3 ? (1 .. $late) : ();
    splice @recs, int(rand(@recs + 1)), 0, $_ for @extra;

    my $name = sprintf 'flights_%05d.csv', $f;
    open my $fh, '>', "$staging/$name" or die "open $staging/$name: $!\n";
    print $fh "flight_id,origin,dep_delay_minutes,scheduled_departure\n";
    for my $r (@recs) {
        my ($t, $kind) = @$r;
        printf $fh "%d,%s,%d,%s\n", $id, $airports[int(rand(@airports))], $delay->(), $iso->($t);
        printf "late %d %s %s\n", $id, $name, $iso->($t) if $kind eq 'late';
        $id++;
    }
    close $fh or die "close $staging/$name: $!\n";
    utime $start + 3600, $start + 3600, "$staging/$name" or die "utime $staging/$name: $!\n";
    rename "$staging/$name", "$out/$name" or die "rename into $out: $!\n";
}
rmdir $staging;

/*
 * flow.c
 *		Backpressure: how much the next batch of a running pipeline may take,
 *		from how fast its last batches went.
 *
 * A source measures a batch's size in a unit of its own (bytes of files,
 * Kafka offsets); its plan takes at most the limit given, besides the
 * user's own limits per trigger (always at least one file or message).
 * The first batch of a worker takes the source's small initial size.
 * After each batch that left a backlog, the limit becomes what the batch's
 * rate would do in one trigger interval: size * interval / duration, at most
 * four times what the batch took, so that one fast batch cannot open the
 * gates wide, and never below the initial size (as Spark's PID estimator
 * has a minimum rate): when a batch's fixed cost alone exceeds the
 * interval, smaller batches would not be shorter, only fewer rows a
 * second.  A batch that took everything there was leaves the limit
 * alone: a quiet stream says nothing about speed.  This is the
 * proportional part of Spark's PIDRateEstimator; the fixed cost of a batch
 * makes the estimate err on the small side.
 *
 * When the database is under pressure (a replica lags by more than
 * sluice.max_replica_lag, or the WAL written since the last checkpoint
 * began passes sluice.wal_pressure of max_wal_size), each plan halves the
 * limit, down to one file or message a batch, and nothing lets it grow
 * until the pressure is gone; the reason shows in sluice.pipelines.
 *
 * run_once and available_now pipelines drain without it: they have no
 * interval to keep to.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "sluice.h"
#include "source.h"

#define FLOW_MAX_GROWTH 4

/* Why the database is under pressure, or NULL.  In a transaction. */
static char *
flow_pressure(void)
{
	uint64		wal = GetXLogInsertRecPtr() - GetRedoRecPtr();
	double		max_wal = (double) max_wal_size_mb * 1024 * 1024;

	if (sluice_max_replica_lag >= 0)
	{
		bool		isnull;
		Datum		lag;

		catalog_exec("SELECT max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.replay_lsn))::int8"
					 " FROM pg_catalog.pg_stat_replication AS r",
					 0, NULL, NULL, NULL, SPI_OK_SELECT);
		lag = spi_datum(0, 1, &isnull);
		if (!isnull && DatumGetInt64(lag) > (int64) sluice_max_replica_lag * 1024)
			return psprintf("a replica lags by %s, more than sluice.max_replica_lag",
							text_to_cstring(DatumGetTextPP(DirectFunctionCall1(pg_size_pretty, lag))));
	}
	if (sluice_wal_pressure > 0 && wal > sluice_wal_pressure * max_wal)
		return psprintf("%s of WAL since the last checkpoint began, more than sluice.wal_pressure (%g) of max_wal_size",
						text_to_cstring(DatumGetTextPP(DirectFunctionCall1(pg_size_pretty,
																		   Int64GetDatum((int64) wal)))),
						sluice_wal_pressure);
	return NULL;
}

/*
 * The limit for the next batch's plan, in the source's unit; 0 for none.
 * Sets *throttled_by to why the database's pressure holds it back, or NULL.
 */
int64
flow_limit(PipelineRun *run, char **throttled_by)
{
	*throttled_by = NULL;
	run->throttled = false;
	if (!run->backpressure || run->available_now)
		return 0;
	if (run->size_limit == 0)
		run->size_limit = run->source->initial_size;
	if ((*throttled_by = flow_pressure()) != NULL)
	{
		run->throttled = true;
		run->size_limit = Max(1, run->size_limit / 2);
	}
	return run->size_limit;
}

/*
 * A batch committed: it took size units in ms milliseconds, and left
 * backlog units (files, offsets) waiting (-1 if unknown).
 */
void
flow_observe(PipelineRun *run, int64 size, double ms, int64 backlog)
{
	double		interval = run->trigger_ms > 0 ? run->trigger_ms : 1000;
	double		next;

	if (!run->backpressure || run->available_now || run->throttled || size <= 0 || ms <= 0 ||
		backlog == 0)
		return;
	next = Min((double) size * interval / ms, (double) size * FLOW_MAX_GROWTH);
	run->size_limit = (int64) Max((double) run->source->initial_size, Min(next, (double) PG_INT64_MAX / 2));
}

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
 * gates wide.  A batch that took everything there was leaves the limit
 * alone: a quiet stream says nothing about speed.  This is the
 * proportional part of Spark's PIDRateEstimator; the fixed cost of a batch
 * makes the estimate err on the small side.
 *
 * run_once and available_now pipelines drain without it: they have no
 * interval to keep to.
 */
#include "postgres.h"

#include "sluice.h"
#include "source.h"

#define FLOW_MAX_GROWTH 4

/* The limit for the next batch's plan, in the source's unit; 0 for none. */
int64
flow_limit(PipelineRun *run, const SourceRoutine *source)
{
	if (!run->backpressure || run->available_now)
		return 0;
	if (run->size_limit == 0)
		run->size_limit = source->initial_size;
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

	if (!run->backpressure || run->available_now || size <= 0 || ms <= 0 || backlog == 0)
		return;
	next = Min((double) size * interval / ms, (double) size * FLOW_MAX_GROWTH);
	run->size_limit = (int64) Max(1.0, Min(next, (double) PG_INT64_MAX / 2));
}

/*
 * watermark.c
 *		Event times and the watermark, as window sinks and deduplication
 *		keep them.
 *
 * A batch runs with the watermark W its pipeline had when it started (read
 * under the pipeline's row lock).  After it, W = greatest(W, the batch's
 * latest event time - watermark_delay); it never moves back, and it stays
 * NULL until a batch has an event time and there is a delay.
 */
#include "postgres.h"

#include <math.h>

#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "sluice.h"

/*
 * The event time of a row (column att, a timestamptz or, when !is_tz, a
 * timestamp in the session's time zone); false when it is NULL.
 */
bool
event_time_get(TupleTableSlot *row, int att, bool is_tz, TimestampTz *et)
{
	if (row->tts_isnull[att])
		return false;
	*et = is_tz ? DatumGetTimestampTz(row->tts_values[att]) :
		DatumGetTimestampTz(DirectFunctionCall1(timestamp_timestamptz, row->tts_values[att]));
	if (TIMESTAMP_NOT_FINITE(*et))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("event time of a row of the batch is infinite"),
				 errdetail("An infinite event time falls in no window and moves no watermark.")));
	return true;
}

void
event_times_add(EventTimes *e, TimestampTz et)
{
	if (e->n == 0 || et < e->min)
		e->min = et;
	if (e->n == 0 || et > e->max)
		e->max = et;
	e->n++;
	e->sum += et;
}

/* Their mean, rounded to the microsecond (e->n > 0). */
TimestampTz
event_times_avg(EventTimes *e)
{
	return (TimestampTz) rint((double) e->sum / (double) Max(e->n, 1));
}

/*
 * The watermark a batch leaves, from the one it started with (w, if
 * *has_w) and its event times; *has_w says whether there is one then.
 */
TimestampTz
watermark_next(TimestampTz w, bool *has_w, EventTimes *e, Datum delay, bool has_delay)
{
	TimestampTz m;

	if (!has_delay || e->n == 0)
		return w;
	m = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_mi_interval, TimestampTzGetDatum(e->max), delay));
	if (*has_w && m <= w)
		return w;
	*has_w = true;
	return m;
}

/*
 * window.c
 *		The window sink: event-time windows with a watermark.
 *
 * Under the pipeline's row lock, which serializes the watermark and the
 * windows emitted, sluice._window_write() aggregates the batch set-based
 * into the state table and writes the output mode's windows, as the owner;
 * what it returns (the new watermark and the state metrics) goes to the
 * catalog here.  A later release folds rows into partial aggregates in C
 * as the source parses them.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

#include "sink.h"

static int64
window_write(Pipeline *p, Batch *b, Oid input, Oid stage, Rejects *rj)
{
	Oid			types[11] = {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID};
	Datum		values[11];
	char		nulls[11];
	Datum		args[7];
	char		argnulls[7] = "       ";
	bool		isnull;
	int64		written;

	/* windows are written as a whole: no row-by-row isolation (rj) */
	values[0] = Int32GetDatum(p->id);
	catalog_exec("SELECT sluice._sink(p), p.state_table, p.event_time, p.watermark_delay, p.watermark"
				 " FROM sluice.pipeline AS p WHERE p.id = $1 FOR UPDATE",
				 1, types, values, NULL, SPI_OK_SELECT);
	args[0] = Int64GetDatum(b->id);
	for (int i = 1; i <= 5; i++)
	{
		args[i] = spi_datum(0, i, &isnull);
		argnulls[i] = isnull ? 'n' : ' ';
	}
	args[6] = ObjectIdGetDatum(input);
	pinned_exec("SELECT * FROM sluice._window_write($1, $2, $3, $4, $5, $6, $7)", 7,
				(Oid[]) {INT8OID, JSONBOID, REGCLASSOID, TEXTOID, INTERVALOID, TIMESTAMPTZOID, REGCLASSOID},
				args, argnulls, SPI_OK_SELECT);

	/* written, new watermark, event time min and max, dropped, total, updated, removed, event time avg */
	written = spi_int64(0, 1);
	values[1] = Int64GetDatum(b->id);
	values[2] = spi_datum(0, 2, &isnull);
	nulls[2] = isnull ? 'n' : ' ';
	values[3] = args[5];
	nulls[3] = argnulls[5];
	for (int i = 4; i < 11; i++)
	{
		values[i] = spi_datum(0, i - 1, &isnull);
		nulls[i] = isnull ? 'n' : ' ';
	}
	nulls[0] = nulls[1] = ' ';
	catalog_exec("WITH w AS (UPDATE sluice.pipeline SET watermark = $3"
				 "  WHERE id = $1 AND watermark IS DISTINCT FROM $3)"
				 " UPDATE sluice.batch SET watermark = $4, next_watermark = $3, event_time_min = $5,"
				 "  event_time_max = $6, num_rows_dropped_by_watermark = $7, state_rows_total = $8,"
				 "  state_rows_updated = $9, state_rows_removed = $10, event_time_avg = $11"
				 " WHERE pipeline_id = $1 AND batch_id = $2",
				 11, types, values, nulls, SPI_OK_UPDATE);
	return written;
}

const SinkRoutine window_sink_routine = {
	.type = "window",
	.direct = false,
	.write = window_write,
};

/*
 * rejects.c
 *		Isolating bad rows, for sources with on_error => 'reject' or 'skip'.
 *
 * A batch first runs on the fast path, exactly as with on_error => 'fail'.
 * Only when it fails with a data error (SQLSTATE class 22) or an integrity
 * violation (class 23) is it rolled back and run again carefully: each line
 * is parsed by COPY's own NextCopyFrom() into the staging table in a
 * subtransaction of its own, and a line that fails is set aside with its
 * file, line number, text and error.  The sink then takes the staged rows
 * in one statement; if the sink refuses some (NOT NULL, CHECK, foreign or
 * unique keys), it takes them one at a time, again in subtransactions, and
 * sets aside the refused ones.  So clean batches never pay for this.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/copyfrom_internal.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "sluice.h"

bool
rejects_is_row_error(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_DATA_EXCEPTION ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION;
}

static void
rejects_add(Rejects *rj, int fileno, int64 line, const char *raw, ErrorData *edata)
{
	RejectedRow *r;

	rj->count++;
	if (!rj->keep)
		return;
	r = palloc(sizeof(RejectedRow));
	r->file = fileno >= 0 ? list_nth(rj->files, fileno) : NULL;
	r->line = line;
	r->raw = raw ? pstrdup(raw) : NULL;
	r->sqlstate = pstrdup(unpack_sql_state(edata->sqlerrcode));
	r->message = pstrdup(edata->message);
	rj->rows = lappend(rj->rows, r);
}

/*
 * Run fn(arg) in a subtransaction.  Returns NULL if it succeeded, or the
 * error if it failed with a row error; any other error is re-thrown.
 */
static ErrorData *
try_in_subxact(void (*fn) (void *), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;

	if (edata && !rejects_is_row_error(edata->sqlerrcode))
		ReThrowError(edata);
	return edata;
}

typedef struct CopyRowState
{
	CopyFromState cstate;
	Relation	rel;
	Datum	   *values;
	bool	   *nulls;
	ExprContext *econtext;
	bool		more;
	ItemPointerData tid;
} CopyRowState;

static void
copy_one_row(void *arg)
{
	CopyRowState *st = arg;

	st->more = NextCopyFrom(st->cstate, st->econtext, st->values, st->nulls);
	if (st->more)
	{
		HeapTuple	tup = heap_form_tuple(RelationGetDescr(st->rel), st->values, st->nulls);

		simple_heap_insert(st->rel, tup);
		st->tid = tup->t_self;
	}
}

/*
 * COPY one file into the staging table line by line, setting bad lines
 * aside.  Returns the number of lines read, good or bad.
 */
uint64
rejects_copy_file(Rejects *rj, Oid stage, List *attnames, List *options, const char *path)
{
	CopyRowState st;
	List	   *attlist = NIL;
	ListCell   *lc;
	MemoryContext rowcxt;
	MemoryContext oldcxt = CurrentMemoryContext;
	int			fileno;
	uint64		lines = 0;

	rj->files = lappend(rj->files, pstrdup(path));
	fileno = list_length(rj->files) - 1;

	foreach(lc, attnames)
		attlist = lappend(attlist, makeString(lfirst(lc)));
	st.rel = table_open(stage, RowExclusiveLock);
	st.cstate = BeginCopyFrom(make_parsestate(NULL), st.rel, NULL, path, false, NULL,
							  attlist, options);
	st.values = palloc(sizeof(Datum) * RelationGetDescr(st.rel)->natts);
	st.nulls = palloc(sizeof(bool) * RelationGetDescr(st.rel)->natts);
	st.econtext = CreateStandaloneExprContext();
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "sluice careful copy", ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(rowcxt);
		st.more = false;
		edata = try_in_subxact(copy_one_row, &st);
		MemoryContextSwitchTo(oldcxt);
		if (edata)
		{
			lines++;
			rejects_add(rj, fileno, (int64) st.cstate->cur_lineno,
						st.cstate->line_buf.data, edata);
			/* past an encoding error nothing more of the file can be read */
			if (st.cstate->input_reached_error)
				break;
			MemoryContextReset(rowcxt);
			continue;
		}
		if (!st.more)
			break;
		lines++;
		if (rj->nstaged == rj->maxstaged)
		{
			rj->maxstaged = Max(1024, rj->maxstaged * 2);
			rj->staged = rj->staged ? repalloc_huge(rj->staged, sizeof(StagedRow) * rj->maxstaged)
				: palloc(sizeof(StagedRow) * rj->maxstaged);
		}
		rj->staged[rj->nstaged].tid = st.tid;
		rj->staged[rj->nstaged].fileno = fileno;
		rj->staged[rj->nstaged].line = (int64) st.cstate->cur_lineno;
		rj->nstaged++;
		MemoryContextReset(rowcxt);
	}

	EndCopyFrom(st.cstate);
	FreeExprContext(st.econtext, true);
	MemoryContextDelete(rowcxt);
	table_close(st.rel, NoLock);
	return lines;
}

typedef struct SinkRowState
{
	const char *sql;
	Datum		values[2];
	uint64		processed;
} SinkRowState;

static void
sink_one_row(void *arg)
{
	SinkRowState *st = arg;

	Datum		values[2] = {st->values[0],
		PointerGetDatum(construct_array(&st->values[1], 1, TIDOID, sizeof(ItemPointerData), false,
										TYPALIGN_SHORT))};

	if (SPI_execute_with_args(st->sql, 2, (Oid[]) {INT8OID, TIDARRAYOID}, values,
							  NULL, false, 0) < 0)
		elog(ERROR, "could not write a row to the sink");
	st->processed = SPI_processed;
}

static void
sink_all_rows(void *arg)
{
	SinkRowState *st = arg;

	if (SPI_execute_with_args(st->sql, 1, (Oid[]) {INT8OID}, st->values, NULL, false, 0) < 0)
		elog(ERROR, "could not write the batch to the sink");
	st->processed = SPI_processed;
}

static int
staged_cmp(const void *a, const void *b)
{
	return ItemPointerCompare((ItemPointer) &((const StagedRow *) a)->tid,
							  (ItemPointer) &((const StagedRow *) b)->tid);
}

/*
 * Write the relation "input" to the sink: all rows in one statement if the
 * sink takes them, else row by row, setting refused rows aside.  Rows of
 * the staging table itself are traced to their file and line; rows that a
 * transform made are set aside with no line.  Either way the row's text as
 * PostgreSQL prints a record stands for the raw line.  Row by row goes
 * backwards when the sink keeps the first row of a key it sees (a merge
 * that ignores matches), so that the last row wins as in one statement.
 * Returns the rows written.
 */
int64
rejects_write(Rejects *rj, const char *all_sql, const char *row_sql, Oid input, Oid stage,
			  int64 batch_id, bool backwards)
{
	SinkRowState st;
	ErrorData  *edata;
	char	   *rel = quote_qualified_identifier("pg_temp", get_rel_name(input));
	ItemPointerData *tids;
	uint64		ntids;
	int64		written = 0;

	st.sql = all_sql;
	st.values[0] = Int64GetDatum(batch_id);
	edata = try_in_subxact(sink_all_rows, &st);
	if (edata == NULL)
		return (int64) st.processed;
	FreeErrorData(edata);

	if (input == stage)
		qsort(rj->staged, rj->nstaged, sizeof(StagedRow), staged_cmp);

	/* not read-only: the staged rows must be visible to the snapshot */
	if (SPI_execute(psprintf("SELECT ctid FROM %s ORDER BY ctid", rel), false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the staged rows");
	ntids = SPI_processed;
	tids = palloc(sizeof(ItemPointerData) * Max(ntids, 1));
	for (uint64 i = 0; i < ntids; i++)
	{
		bool		isnull;

		tids[i] = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull));
	}

	st.sql = row_sql;
	for (uint64 n = 0; n < ntids; n++)
	{
		uint64		i = backwards ? ntids - 1 - n : n;
		StagedRow  *found = NULL;
		char	   *raw = NULL;

		st.values[1] = PointerGetDatum(&tids[i]);
		edata = try_in_subxact(sink_one_row, &st);
		if (edata == NULL)
		{
			written += st.processed;
			continue;
		}
		if (input == stage)
		{
			StagedRow	key;

			key.tid = tids[i];
			found = bsearch(&key, rj->staged, rj->nstaged, sizeof(StagedRow), staged_cmp);
		}
		if (SPI_execute_with_args(psprintf("SELECT r::text FROM %s AS r WHERE ctid = $1", rel),
								  1, (Oid[]) {TIDOID}, &st.values[1], NULL, false, 0) == SPI_OK_SELECT &&
			SPI_processed == 1)
			raw = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		rejects_add(rj, found ? found->fileno : -1, found ? found->line : 0, raw, edata);
		FreeErrorData(edata);
	}
	return written;
}

/* Keep the set-aside rows in sluice.reject, in the batch transaction. */
void
rejects_save(Rejects *rj, int32 pipeline_id, int64 batch_id)
{
	ListCell   *lc;

	foreach(lc, rj->rows)
	{
		RejectedRow *r = lfirst(lc);
		Datum		values[7];
		char		nulls[7] = "       ";

		values[0] = Int32GetDatum(pipeline_id);
		values[1] = Int64GetDatum(batch_id);
		if (r->file)
			values[2] = CStringGetTextDatum(r->file);
		else
			nulls[2] = 'n';
		values[3] = Int64GetDatum(r->line);
		if (r->line == 0)
			nulls[3] = 'n';
		if (r->raw)
			values[4] = CStringGetTextDatum(r->raw);
		else
			nulls[4] = 'n';
		values[5] = CStringGetTextDatum(r->sqlstate);
		values[6] = CStringGetTextDatum(r->message);
		catalog_exec("INSERT INTO sluice.reject (pipeline_id, batch_id, file, line, raw_line, sqlstate, message)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7)",
					 7, (Oid[]) {INT4OID, INT8OID, TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID},
					 values, nulls, SPI_OK_INSERT);
	}
}

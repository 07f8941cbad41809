/*
 * rejects.c
 *		Isolating bad rows, for sources with on_error => 'reject' or 'skip'.
 *
 * A batch first runs on the fast path, exactly as with on_error => 'fail'.
 * Only when it fails with a data error (SQLSTATE class 22) or an integrity
 * violation (class 23) is it rolled back and run again carefully, at a cost
 * that grows with the number of bad rows rather than with the batch:
 *
 * 1. Each file is parsed by COPY's own NextCopyFrom() in subtransactions of
 *	  up to PARSE_CHUNK_ROWS rows.  They only parse, into slots whose memory
 *	  is ours and outlives them, and write nothing, so they are assigned no
 *	  transaction id.  A line that fails rolls back its subtransaction, is
 *	  set aside with its file, line number, text and error, and parsing goes
 *	  on after it in a new one.  The rows parsed so far are then inserted
 *	  into the staging table outside any subtransaction, in the batch
 *	  transaction: a file with b bad lines costs about rows/PARSE_CHUNK_ROWS
 *	  + b subtransactions, none of which takes a transaction id.
 *
 * 2. The sink takes the staged rows in one statement.  If it refuses some
 *	  (NOT NULL, CHECK, foreign or unique keys, a null merge key), the rows
 *	  are split in SINK_SPLIT parts, each written in a subtransaction of its
 *	  own; a part that fails is split again, down to single rows, which are
 *	  set aside.  That is O(b log n) subtransactions (and transaction ids)
 *	  for b refused rows among n.  Every row that is not refused is written
 *	  once, in file order, so the sink ends as one statement over them
 *	  would leave it.
 *
 * So clean batches never pay for this, and a batch with a few bad rows
 * costs a few times a clean one instead of a transaction id per row.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/copyfrom_internal.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_node.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "sluice.h"

/*
 * Rows parsed in one subtransaction, and staged together, at most: enough
 * to make the subtransactions' own cost vanish, few enough to keep a chunk
 * in memory.  The limits of COPY's own multi-insert buffers.
 */
#define PARSE_CHUNK_ROWS 1000
#define PARSE_CHUNK_BYTES 65535

/*
 * Parts that rows the sink refused are split in.  More parts waste less
 * work on parts that fail, the rows a statement wrote before its refused
 * row, but take more statements: 16 take up to 16 log16(n) = 4 log2(n) for
 * a refused row among n.  With 2 refused rows among 200,000, halves gave
 * the sink statements 350,000 rows in all, 16 parts 227,000.
 */
#define SINK_SPLIT 16

bool
rejects_is_row_error(int sqlerrcode)
{
	return ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_DATA_EXCEPTION ||
		ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION;
}

static void
rejects_add(Rejects *rj, int fileno, int64 line, const char *raw, ErrorData *edata)
{
	MemoryContext old;
	RejectedRow *r;

	rj->count++;
	if (!rj->keep)
		return;
	old = MemoryContextSwitchTo(rj->cxt ? rj->cxt : CurrentMemoryContext);
	r = palloc(sizeof(RejectedRow));
	r->file = fileno >= 0 ? list_nth(rj->files, fileno) : NULL;
	r->line = line;
	r->position = NULL;
	if (rj->locate && line > 0)
	{
		r->position = rj->locate(rj->locate_arg, line);
		r->line = 0;
	}
	r->raw = raw ? pstrdup(raw) : NULL;
	r->sqlstate = pstrdup(unpack_sql_state(edata->sqlerrcode));
	r->message = pstrdup(edata->message);
	rj->rows = lappend(rj->rows, r);
	MemoryContextSwitchTo(old);
}

/* A bad message a stream's source set aside itself, before COPY saw it. */
void
rejects_set_aside(Rejects *rj, const char *position, const char *raw, ErrorData *edata)
{
	MemoryContext old;
	RejectedRow *r;

	rj->count++;
	if (!rj->keep)
		return;
	/* called while COPY parses, in memory that is reset after each chunk */
	old = MemoryContextSwitchTo(rj->cxt);
	r = palloc0(sizeof(RejectedRow));
	r->position = pstrdup(position);
	r->raw = raw ? pstrdup(raw) : NULL;
	r->sqlstate = pstrdup(unpack_sql_state(edata->sqlerrcode));
	r->message = pstrdup(edata->message);
	rj->rows = lappend(rj->rows, r);
	MemoryContextSwitchTo(old);
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

typedef struct ParseChunk
{
	CopyFromState cstate;
	ExprContext *econtext;
	TupleTableSlot **slots;		/* the rows parsed and not yet staged */
	int			nslots;			/* slots made so far */
	int64	   *lines;			/* their line numbers */
	int			nrows;
	int			nbytes;			/* their lines' length */
	bool		eof;
	MemoryContext chunkcxt;		/* their values, until they are staged */
} ParseChunk;

/*
 * Parse lines into st->slots until the chunk is full or the file ends.  It
 * runs in a subtransaction and writes nothing: an error leaves the rows
 * parsed before it in the slots, which are not the subtransaction's.
 */
static void
parse_rows(void *arg)
{
	ParseChunk *st = arg;

	MemoryContextSwitchTo(st->chunkcxt);
	while (st->nrows < st->nslots && st->nbytes < PARSE_CHUNK_BYTES)
	{
		TupleTableSlot *slot = st->slots[st->nrows];

		CHECK_FOR_INTERRUPTS();
		if (!NextCopyFrom(st->cstate, st->econtext, slot->tts_values, slot->tts_isnull))
		{
			st->eof = true;
			break;
		}
		ExecStoreVirtualTuple(slot);
		st->lines[st->nrows++] = (int64) st->cstate->cur_lineno;
		st->nbytes += st->cstate->line_buf.len;
	}
}

/*
 * Make more slots, twice as many up to PARSE_CHUNK_ROWS: many files are
 * small, and making a thousand slots costs more than reading a few lines.
 * Not in a parsing subtransaction: a slot pins the tuple descriptor in the
 * current resource owner, and must outlive it.
 */
static void
add_slots(ParseChunk *st, Relation rel)
{
	int			n = Min(Max(8, st->nslots * 2), PARSE_CHUNK_ROWS);

	for (; st->nslots < n; st->nslots++)
		st->slots[st->nslots] = table_slot_create(rel, NULL);
}

/*
 * Insert the parsed rows into the staging table, in the batch transaction,
 * and keep where each one went and where it came from.
 */
static void
stage_rows(Rejects *rj, ParseChunk *st, Relation rel, BulkInsertState bistate, int fileno)
{
	MemoryContext oldcxt;

	if (st->nrows == 0)
		return;
	oldcxt = MemoryContextSwitchTo(st->chunkcxt);
	table_multi_insert(rel, st->slots, st->nrows, GetCurrentCommandId(true), 0, bistate);
	MemoryContextSwitchTo(oldcxt);

	if (rj->nstaged + st->nrows > rj->maxstaged)
	{
		while (rj->nstaged + st->nrows > rj->maxstaged)
			rj->maxstaged = Max(1024, rj->maxstaged * 2);
		rj->staged = rj->staged ? repalloc_huge(rj->staged, sizeof(StagedRow) * rj->maxstaged)
			: palloc(sizeof(StagedRow) * rj->maxstaged);
	}
	for (int i = 0; i < st->nrows; i++)
	{
		StagedRow  *r = &rj->staged[rj->nstaged++];

		r->tid = st->slots[i]->tts_tid;
		r->fileno = fileno;
		r->line = st->lines[i];
		ExecClearTuple(st->slots[i]);
	}
	st->nrows = 0;
	st->nbytes = 0;
	MemoryContextReset(st->chunkcxt);
}

/*
 * COPY one file (or what a stream's data_source callback feeds) into the
 * staging table, setting bad lines aside.  Returns the number of lines
 * read, good or bad.
 */
uint64
rejects_copy_file(Rejects *rj, Oid stage, List *attnames, List *options, const char *path,
				  copy_data_source_cb data_source)
{
	ParseChunk	st;
	Relation	rel;
	BulkInsertState bistate;
	List	   *attlist = NIL;
	ListCell   *lc;
	int			fileno;
	uint64		lines = 0;

	rj->files = lappend(rj->files, path ? pstrdup(path) : NULL);
	fileno = path ? list_length(rj->files) - 1 : -1;

	foreach(lc, attnames)
		attlist = lappend(attlist, makeString(lfirst(lc)));
	rel = table_open(stage, RowExclusiveLock);
	memset(&st, 0, sizeof(st));
	st.cstate = BeginCopyFrom(make_parsestate(NULL), rel, NULL, path, false, data_source,
							  attlist, options);
	st.econtext = CreateStandaloneExprContext();
	st.slots = palloc(sizeof(TupleTableSlot *) * PARSE_CHUNK_ROWS);
	add_slots(&st, rel);
	st.lines = palloc(sizeof(int64) * PARSE_CHUNK_ROWS);
	st.chunkcxt = AllocSetContextCreate(CurrentMemoryContext, "sluice careful copy",
										ALLOCSET_DEFAULT_SIZES);
	bistate = GetBulkInsertState();

	while (!st.eof)
	{
		ErrorData  *edata = try_in_subxact(parse_rows, &st);
		bool		full = st.nrows == st.nslots;

		lines += st.nrows;
		stage_rows(rj, &st, rel, bistate, fileno);
		if (edata == NULL)
		{
			if (full && st.nslots < PARSE_CHUNK_ROWS)
				add_slots(&st, rel);
			continue;
		}
		lines++;
		rejects_add(rj, fileno, (int64) st.cstate->cur_lineno, st.cstate->line_buf.data, edata);
		FreeErrorData(edata);
		/*
		 * Past a line that could not be read at all, nothing more of the file
		 * can be: after an encoding error, or a carriage return or newline
		 * that is not the file's line end, COPY's reader stays where it
		 * failed, and reading on would fail there again, for ever.
		 */
		if (st.cstate->input_reached_error || !st.cstate->line_buf_valid)
			break;
	}

	FreeBulkInsertState(bistate);
	table_finish_bulk_insert(rel, 0);
	EndCopyFrom(st.cstate);
	FreeExprContext(st.econtext, true);
	for (int i = 0; i < st.nslots; i++)
		ExecDropSingleTupleTableSlot(st.slots[i]);
	MemoryContextDelete(st.chunkcxt);
	table_close(rel, NoLock);
	return lines;
}

typedef struct SinkState
{
	Rejects    *rj;
	Oid			input;
	Oid			stage;
	char	   *rel;			/* the input relation, quoted */
	bool		backwards;
	const char *all_sql;		/* the statement for all rows */
	SPIPlanPtr	some_plan;		/* the one for the rows in values[1] */
	Datum		values[2];		/* the batch id; the rows' ctids, as tid[] */
	uint64		processed;
	int64		written;
} SinkState;

static void
sink_rows(void *arg)
{
	SinkState  *st = arg;
	int			rc;

	if (st->some_plan)
		rc = SPI_execute_plan(st->some_plan, st->values, NULL, false, 0);
	else
		rc = SPI_execute_with_args(st->all_sql, 1, (Oid[]) {INT8OID}, st->values, NULL, false, 0);
	if (rc < 0)
		elog(ERROR, "could not write rows to the sink: %s", SPI_result_code_string(rc));
	st->processed = SPI_processed;
}

static int
staged_cmp(const void *a, const void *b)
{
	return ItemPointerCompare((ItemPointer) &((const StagedRow *) a)->tid,
							  (ItemPointer) &((const StagedRow *) b)->tid);
}

/* Set a row the sink refused aside, traced to its file and line if it has one. */
static void
set_aside(SinkState *st, ItemPointer tid, ErrorData *edata)
{
	StagedRow  *found = NULL;
	char	   *raw = NULL;
	Datum		value = PointerGetDatum(tid);

	if (st->input == st->stage)
	{
		StagedRow	key;

		key.tid = *tid;
		found = bsearch(&key, st->rj->staged, st->rj->nstaged, sizeof(StagedRow), staged_cmp);
	}
	if (st->rj->keep &&
		SPI_execute_with_args(psprintf("SELECT r::text FROM %s AS r WHERE ctid = $1", st->rel),
							  1, (Oid[]) {TIDOID}, &value, NULL, false, 0) == SPI_OK_SELECT &&
		SPI_processed == 1)
		raw = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	rejects_add(st->rj, found ? found->fileno : -1, found ? found->line : 0, raw, edata);
}

/*
 * Write the rows tids[0 .. n - 1] to the sink in a subtransaction, unless
 * "failed" says that they just failed together.  If the sink refuses some,
 * split them in SINK_SPLIT parts and write each the same way, down to
 * single rows, which are set aside.  The parts go in file order, or the
 * last first when st->backwards, so that of the rows of a key the one that
 * wins is the one that wins in one statement.
 */
static void
write_rows(SinkState *st, ItemPointerData *tids, uint64 n, bool failed)
{
	uint64		nparts = Min(n, SINK_SPLIT);

	if (!failed)
	{
		ErrorData  *edata;

		st->values[1] = tid_array(tids, (int64) n);
		edata = try_in_subxact(sink_rows, st);
		pfree(DatumGetPointer(st->values[1]));
		if (edata == NULL)
		{
			st->written += (int64) st->processed;
			return;
		}
		if (n == 1)
			set_aside(st, &tids[0], edata);
		FreeErrorData(edata);
		if (n == 1)
			return;
	}
	for (uint64 p = 0; p < nparts; p++)
	{
		uint64		k = st->backwards ? nparts - 1 - p : p;
		uint64		lo = n * k / nparts;
		uint64		hi = n * (k + 1) / nparts;

		write_rows(st, tids + lo, hi - lo, false);
	}
}

/*
 * Write the relation "input" to the sink: all rows in one statement if the
 * sink takes them, else in parts as above, setting refused rows aside.
 * Rows of the staging table itself are traced to their file and line; rows
 * that a transform made are set aside with no line.  Either way the row's
 * text as PostgreSQL prints a record stands for the raw line.  Parts go
 * backwards when the sink keeps the first row of a key it sees (a merge
 * that ignores matches), so that the last row wins as in one statement.
 * Returns the rows written.
 */
int64
rejects_write(Rejects *rj, const char *all_sql, const char *row_sql, Oid input, Oid stage,
			  int64 batch_id, bool backwards)
{
	SinkState	st;
	ErrorData  *edata;
	ItemPointerData *tids;
	uint64		ntids;

	memset(&st, 0, sizeof(st));
	st.rj = rj;
	st.input = input;
	st.stage = stage;
	st.rel = quote_qualified_identifier("pg_temp", get_rel_name(input));
	st.backwards = backwards;
	st.all_sql = all_sql;
	st.values[0] = Int64GetDatum(batch_id);
	edata = try_in_subxact(sink_rows, &st);
	if (edata == NULL)
		return (int64) st.processed;
	FreeErrorData(edata);

	if (input == stage)
	{
		/* the staged rows are all the rows of the staging table */
		qsort(rj->staged, rj->nstaged, sizeof(StagedRow), staged_cmp);
		ntids = rj->nstaged;
		tids = palloc(sizeof(ItemPointerData) * Max(ntids, 1));
		for (uint64 i = 0; i < ntids; i++)
			tids[i] = rj->staged[i].tid;
	}
	else
	{
		/* not read-only: the rows must be visible to the snapshot */
		if (SPI_execute(psprintf("SELECT ctid FROM %s ORDER BY ctid", st.rel), false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the rows to write");
		ntids = SPI_processed;
		tids = palloc(sizeof(ItemPointerData) * Max(ntids, 1));
		for (uint64 i = 0; i < ntids; i++)
		{
			bool		isnull;

			tids[i] = *(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
														 SPI_tuptable->tupdesc, 1, &isnull));
		}
		SPI_freetuptable(SPI_tuptable);
	}

	/*
	 * One generic plan for all parts.  It reads them by TID scan, whereas a
	 * plan for a known number of tids costs each as a random page read and
	 * scans the whole input instead for more than a thousand or so.
	 */
	st.some_plan = SPI_prepare_cursor(row_sql, 2, (Oid[]) {INT8OID, TIDARRAYOID},
									  CURSOR_OPT_GENERIC_PLAN);
	if (st.some_plan == NULL)
		elog(ERROR, "could not prepare the statement for some rows: %s",
			 SPI_result_code_string(SPI_result));
	write_rows(&st, tids, ntids, true);
	SPI_freeplan(st.some_plan);
	return st.written;
}

/* Keep the set-aside rows in sluice.reject, in the batch transaction. */
void
rejects_save(Rejects *rj, int32 pipeline_id, int64 batch_id)
{
	ListCell   *lc;

	foreach(lc, rj->rows)
	{
		RejectedRow *r = lfirst(lc);
		Datum		values[8];
		char		nulls[8] = "        ";

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
		if (r->position)
			values[7] = CStringGetTextDatum(r->position);
		else
			nulls[7] = 'n';
		catalog_exec("INSERT INTO sluice.reject (pipeline_id, batch_id, file, line, raw_line, sqlstate, message, position)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb)",
					 8, (Oid[]) {INT4OID, INT8OID, TEXTOID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID},
					 values, nulls, SPI_OK_INSERT);
	}
}

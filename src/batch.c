/*
 * batch.c
 *		One micro-batch: plan it, then read, write and commit it.  Knows no
 *		source and no sink by name: it calls their routines (source.h,
 *		sink.h) at fixed points.
 *
 * Exactly-once comes from two transactions per batch:
 *
 *	1. plan: the source claims the next slice of its input for batch N and
 *	   records it; batch N is recorded as 'planned'.  If a planned batch
 *	   already exists (a crash, a failure), it is taken again instead, with
 *	   the same id and the same slice.
 *	2. process: lock batch N, have the source read its slice and the sink
 *	   write it, have the source advance its offsets, mark the batch
 *	   committed, and commit: the sink rows and the offsets become durable
 *	   together through the WAL, or not at all.
 *
 * A pipeline may have several workers.  They plan one at a time, and a
 * planned batch is leased to its worker (its slot's current_batch), so no
 * other worker takes it up while that one lives.  Batches are read and
 * staged side by side, but write their sink and commit in batch order
 * (batch_wait_turn), so the result is the one worker's.  The batch row is
 * locked first and the final update only succeeds while the batch is still
 * 'planned', so of two workers racing for one batch (a stale worker after a
 * restart) only one commits it: a planner skips a planned batch that
 * another worker holds (SKIP LOCKED), and a worker that already took one up
 * blocks on the row lock, then finds the batch no longer planned and writes
 * nothing.
 *
 * Catalog statements run as the extension's owner (catalog_exec); reading
 * the source and writing the sink run as the pipeline's owner.
 *
 * sluice.crash_at makes the worker SIGKILL itself at a named stage of the
 * first attempt of each batch, for the crash tests.
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "sink.h"
#include "source.h"
#include "sluice.h"

/* what the error context callback names */
typedef struct BatchErrorContext
{
	const char *pipeline;
	Batch	   *batch;
} BatchErrorContext;

static void
batch_error_context(void *arg)
{
	BatchErrorContext *c = arg;

	if (c->batch && c->batch->unit)
		errcontext("sluice pipeline \"%s\", batch " INT64_FORMAT ", %s",
				   c->pipeline, c->batch->id, c->batch->unit);
	else if (c->batch)
		errcontext("sluice pipeline \"%s\", batch " INT64_FORMAT, c->pipeline, c->batch->id);
	else
		errcontext("sluice pipeline \"%s\"", c->pipeline);
}

void
crash_point(const char *stage, int attempts)
{
	if (attempts == 1 && strcmp(sluice_crash_at, stage) == 0)
	{
		ereport(LOG,
				(errmsg("sluice worker kills itself at stage \"%s\" as sluice.crash_at asks", stage)));
		kill(MyProcPid, SIGKILL);
		for (;;)
			pause();
	}
}

Oid
temp_relid(const char *name)
{
	return get_relname_relid(name, LookupExplicitNamespace("pg_temp", false));
}

/*
 * The columns a source delivers, from its catalog options: names, and
 * types parsed by PostgreSQL's own parser.
 */
List *
source_columns(Jsonb *source)
{
	List	   *columns = NIL;
	JsonbValue	v;
	JsonbIterator *it;
	JsonbValue	elem;
	JsonbIteratorToken tok;

	if (!getKeyJsonValueFromContainer(&source->root, "columns", 7, &v) || v.type != jbvBinary)
		elog(ERROR, "sluice source has no columns");
	it = JsonbIteratorInit(v.val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
	{
		Jsonb	   *col;
		SourceColumn *c;
		char	   *type;

		if (tok != WJB_ELEM || elem.type != jbvBinary)
			continue;
		col = JsonbValueToJsonb(&elem);
		c = palloc(sizeof(SourceColumn));
		c->name = jsonb_get_text(col, "name");
		type = jsonb_get_text(col, "type");
		if (c->name == NULL || type == NULL)
			elog(ERROR, "sluice source column without a name or a type");
		parseTypeString(type, &c->typid, &c->typmod, false);
		columns = lappend(columns, c);
	}
	return columns;
}

/*
 * The temporary table "batch" that the source's rows are staged in for a
 * transform or a sink that does not take them straight, as the owner.
 */
Oid
create_stage(List *columns)
{
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	appendStringInfoString(&sql, "CREATE TEMP TABLE batch (");
	foreach(lc, columns)
	{
		SourceColumn *c = lfirst(lc);

		appendStringInfo(&sql, "%s%s %s", foreach_current_index(lc) > 0 ? ", " : "",
						 quote_identifier(c->name), format_type_with_typemod(c->typid, c->typmod));
	}
	appendStringInfoString(&sql, ") ON COMMIT DROP");
	pinned_exec(sql.data, 0, NULL, NULL, NULL, SPI_OK_UTILITY);
	return temp_relid("batch");
}

/*
 * Hand every row COPY's parser gives to a sink's receiver instead of
 * inserting it (see SinkRoutine.receiver).  Returns the rows parsed.
 */
uint64
copy_to_receiver(CopyFromState cstate, Relation rel, DestReceiver *dest)
{
	TupleTableSlot *slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	ExprContext *econtext = CreateStandaloneExprContext();
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "sluice parsed row",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = CurrentMemoryContext;
	uint64		rows = 0;

	for (;;)
	{
		bool		more;

		CHECK_FOR_INTERRUPTS();
		MemoryContextReset(rowcxt);
		ResetExprContext(econtext);
		MemoryContextSwitchTo(rowcxt);
		ExecClearTuple(slot);
		more = NextCopyFrom(cstate, econtext, slot->tts_values, slot->tts_isnull);
		MemoryContextSwitchTo(oldcxt);
		if (!more)
			break;
		ExecStoreVirtualTuple(slot);
		dest->receiveSlot(slot, dest);
		rows++;
	}
	ExecDropSingleTupleTableSlot(slot);
	FreeExprContext(econtext, true);
	MemoryContextDelete(rowcxt);
	return rows;
}

/* Read the pipeline's row, in the current transaction; NULL if it is gone. */
static Pipeline *
pipeline_load(int32 id)
{
	Datum		value = Int32GetDatum(id);
	Pipeline   *p;
	bool		isnull;
	char	   *on_error;

	if (catalog_exec("SELECT p.name, p.state,"
					 "  CASE WHEN p.trigger = 'available_now' THEN 0"
					 "       ELSE (extract(epoch FROM p.trigger::interval) * 1000)::int8 END,"
					 "  p.source, sluice._sink(p), p.target::oid, p.transform,"
					 "  p.source->>'type', p.sink->>'type', p.backpressure, coalesce(p.max_retries, -1),"
					 "  p.dedupe_table IS NOT NULL"
					 " FROM sluice.pipeline AS p WHERE p.id = $1",
					 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT) == 0)
		return NULL;

	p = palloc0(sizeof(Pipeline));
	p->id = id;
	p->name = spi_text(0, 1);
	p->state = spi_text(0, 2);
	p->trigger_ms = spi_int64(0, 3);
	p->source = DatumGetJsonbPCopy(spi_datum(0, 4, &isnull));
	p->sink = DatumGetJsonbPCopy(spi_datum(0, 5, &isnull));
	p->target = DatumGetObjectId(spi_datum(0, 6, &isnull));
	if (isnull)
		p->target = InvalidOid;
	p->transform = spi_text(0, 7);
	p->source_routine = source_routine(spi_text(0, 8));
	p->sink_routine = sink_routine(spi_text(0, 9));
	p->columns = source_columns(p->source);
	on_error = jsonb_get_text(p->source, "on_error");
	p->isolate_rows = on_error != NULL && strcmp(on_error, "fail") != 0;
	p->keep_rejects = on_error != NULL && strcmp(on_error, "reject") == 0;
	p->backpressure = DatumGetBool(spi_datum(0, 10, &isnull));
	p->max_retries = DatumGetInt32(spi_datum(0, 11, &isnull));
	p->dedupe = DatumGetBool(spi_datum(0, 12, &isnull));
	return p;
}

/*
 * Before a worker's first batch: is the catalog whole?  While pg_restore
 * loads a dump, a pipeline's row can be there before its batches, its
 * files or its state table's unique index; a batch then would read again
 * what committed batches read.  Until it is whole the batch is transient:
 * tried again later.
 */
static void
batch_check_catalog(PipelineRun *run, Pipeline *p)
{
	Datum		value = Int32GetDatum(run->id);

	if (run->catalog_whole)
		return;
	catalog_exec("SELECT p.committed_batch > coalesce(b.last, 0) OR coalesce(b.files, 0) > f.files"
				 "   OR EXISTS (SELECT 1 FROM unnest(ARRAY[p.state_table, p.dedupe_table]) AS s(t)"
				 "               WHERE t IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_index i"
				 "                                                    WHERE i.indrelid = t AND i.indisunique))"
				 " FROM sluice.pipeline AS p,"
				 "  LATERAL (SELECT max(batch_id) AS last, sum(files) AS files FROM sluice.batch"
				 "            WHERE pipeline_id = p.id AND status = 'committed') AS b,"
				 "  LATERAL (SELECT count(*) AS files FROM sluice.file WHERE pipeline_id = p.id AND committed) AS f"
				 " WHERE p.id = $1",
				 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT);
	if ((SPI_processed == 1 && strcmp(spi_text(0, 1), "t") == 0) ||
		(p->source_routine->offsets_missing && p->source_routine->offsets_missing(run->id)))
		ereport(ERROR,
				(errcode(ERRCODE_SLUICE_CATALOG_INCOMPLETE),
				 errmsg("the catalog of pipeline \"%s\" is not whole yet", run->name),
				 errdetail("Its committed batches, their files or offsets, or its state table's unique index are missing, as while pg_restore loads a dump."),
				 errhint("The batch is tried again later.")));
	run->catalog_whole = true;
}

/* The source's state, once per worker, in the worker's long-lived memory. */
static void
source_open(PipelineRun *run, Pipeline *p)
{
	run->source_state = p->source_routine->open(p, run->run_cxt, !run->available_now);
	run->source = p->source_routine;
}

/* The worker holds batch_id (0: none), as its slot shows. */
static void
batch_lease(PipelineRun *run, int64 batch_id)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	run->slot->current_batch = batch_id;
	LWLockRelease(sluice_shared->lock);
}

/*
 * Whether batch_id is still planned once whoever holds its row lock (the
 * worker processing it) is done: the lock is taken in a subtransaction that
 * is rolled back, so it is not kept, and the wait is a lock wait, which the
 * deadlock detector sees.
 */
static bool
batch_planned_after_lock(int32 pipeline_id, int64 batch_id)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Datum		values[2] = {Int32GetDatum(pipeline_id), Int64GetDatum(batch_id)};
	bool		planned;

	BeginInternalSubTransaction(NULL);
	planned = catalog_exec("SELECT 1 FROM sluice.batch WHERE pipeline_id = $1 AND batch_id = $2"
						   " AND status = 'planned' FOR SHARE",
						   2, (Oid[]) {INT4OID, INT8OID}, values, NULL, SPI_OK_SELECT) > 0;
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return planned;
}

/*
 * Wait until every batch of the pipeline before this one has committed:
 * batches are read and staged side by side by several workers, but write
 * their sink and commit in batch order, so a merge's last row of a key
 * wins as with one worker, and a stream's offsets advance in order.  A
 * batch before this one that is being processed is waited for on its row
 * lock; one that another worker planned but not yet took up, on the
 * condition variable every commit broadcasts.  One that no worker holds
 * (its worker failed or went) is taken up by the next plan; this batch then
 * gives way, as transient.
 */
static void
batch_wait_turn(PipelineRun *run, Batch *b)
{
	Datum		values[3] = {Int32GetDatum(run->id), Int64GetDatum(b->id)};
	bool		waited = false;

	for (;;)
	{
		int64		before;
		bool		leased;

		values[2] = slot_leases(run->id, run->slot);
		if (catalog_exec("SELECT batch_id, batch_id = ANY ($3) FROM sluice.batch"
						 " WHERE pipeline_id = $1 AND batch_id < $2 AND status = 'planned'"
						 " ORDER BY batch_id LIMIT 1",
						 3, (Oid[]) {INT4OID, INT8OID, INT8ARRAYOID}, values, NULL, SPI_OK_SELECT) == 0)
			break;
		before = spi_int64(0, 1);
		leased = strcmp(spi_text(0, 2), "t") == 0;
		if (!waited)
			pgstat_report_activity(STATE_RUNNING,
								   psprintf("batch " INT64_FORMAT ": waiting for batch " INT64_FORMAT " to commit",
											b->id, before));
		waited = true;
		if (!batch_planned_after_lock(run->id, before))
			continue;
		if (!leased)
			ereport(ERROR,
					(errcode(ERRCODE_SLUICE_OUT_OF_TURN),
					 errmsg("batch " INT64_FORMAT " of pipeline \"%s\" must commit after batch " INT64_FORMAT ", which no worker holds",
							b->id, run->name, before),
					 errdetail("Batches of a pipeline commit in order; the earlier one is taken up at once.")));
		/* woken by every commit; the timeout is a safety net */
		(void) ConditionVariableTimedSleep(&sluice_shared->batch_committed, 100, PG_WAIT_EXTENSION);
	}
	if (waited)
		ConditionVariableCancelSleep();
}

/*
 * Plan the next batch, or take up a planned one.  Returns its id, 0 when
 * there is nothing to do, -1 when the pipeline should stop.
 */
static int64
batch_plan(PipelineRun *run, int *attempts)
{
	Oid			types[5] = {INT4OID, INT8OID, JSONBOID, INT8OID, INT8OID};
	Datum		values[5];
	Pipeline   *p;
	int64		batch_id;
	int64		backlog = 0;
	int64		claimed;
	int64		limit;
	char	   *throttled_by;
	Jsonb	   *slice = NULL;

	values[0] = Int32GetDatum(run->id);

	/* a new library over an old catalog: wait for ALTER EXTENSION UPDATE */
	if (!extension_version_ok(NULL))
		return -1;
	p = pipeline_load(run->id);
	if (p == NULL || (!run->run_once && strcmp(p->state, "running") != 0))
		return -1;
	run->trigger_ms = p->trigger_ms;
	run->isolate_rows = p->isolate_rows;
	run->backpressure = p->backpressure;
	run->max_retries = p->max_retries;
	batch_check_catalog(run, p);

	/*
	 * One planner at a time per pipeline, among its workers.  The lock is on
	 * an object no SQL command names (the pipeline as a member of the class
	 * sluice.pipeline), so no user can hold it, and it takes no transaction
	 * id: an idle plan writes nothing.  A batch is leased to its worker from
	 * here (the slot's current_batch, set before the plan commits), so the
	 * next planner, who waits for this lock, sees the lease.
	 */
	LockDatabaseObject(get_relname_relid("pipeline", get_namespace_oid("sluice", false)),
					   (Oid) run->id, 0, ExclusiveLock);

	/* a planned batch that no worker holds comes first: replay it, same id, same slice */
	values[1] = slot_leases(run->id, run->slot);
	if (catalog_exec("UPDATE sluice.batch b SET attempts = attempts + 1 FROM ("
					 "  SELECT batch_id FROM sluice.batch WHERE pipeline_id = $1 AND status = 'planned'"
					 "   AND batch_id <> ALL ($2)"
					 "  ORDER BY batch_id LIMIT 1 FOR UPDATE SKIP LOCKED) o"
					 " WHERE b.pipeline_id = $1 AND b.batch_id = o.batch_id"
					 " RETURNING b.batch_id, b.attempts",
					 2, (Oid[]) {INT4OID, INT8ARRAYOID}, values, NULL, SPI_OK_UPDATE_RETURNING) > 0)
	{
		*attempts = (int) spi_int64(0, 2);
		batch_lease(run, spi_int64(0, 1));
		return spi_int64(0, 1);
	}

	if (run->source_state == NULL)
		source_open(run, p);

	catalog_exec("SELECT coalesce(max(batch_id), 0) + 1 FROM sluice.batch WHERE pipeline_id = $1",
				 1, types, values, NULL, SPI_OK_SELECT);
	batch_id = spi_int64(0, 1);

	limit = flow_limit(run, &throttled_by);
	claimed = p->source_routine->plan(run->source_state, p, batch_id, &limit, &backlog, &slice);

	stats_set_backlog(run->id, backlog);
	stats_set_throttled(run->id, throttled_by);
	run->backlog = backlog - claimed;	/* once this batch commits */

	if (claimed == 0)
		return 0;

	values[1] = Int64GetDatum(batch_id);
	values[2] = slice ? JsonbPGetDatum(slice) : (Datum) 0;
	values[3] = Int64GetDatum(limit);
	values[4] = Int64GetDatum(run->backlog);
	catalog_exec("INSERT INTO sluice.batch (pipeline_id, batch_id, status, attempts, planned_at, slice, size_limit,"
				 "  run_id, backlog)"
				 " SELECT $1, $2, 'planned', 1, clock_timestamp(), $3, $4, p.run_id, $5 FROM sluice.pipeline AS p WHERE p.id = $1",
				 5, types, values, slice ? (limit ? "     " : "   n ") : (limit ? "  n  " : "  nn "),
				 SPI_OK_INSERT);
	*attempts = 1;
	batch_lease(run, batch_id);
	return batch_id;
}

/* Milliseconds since start. */
static double
elapsed_ms(instr_time start)
{
	instr_time	now;

	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	return INSTR_TIME_GET_MILLISEC(now);
}

/*
 * run_once() with more waiting: plan the next batch in the transaction of
 * this one, which then commits both, so that a drain of N batches commits
 * N + 1 times, not 2N, and waits for the disk once.  Its size
 * comes from this batch's speed, as after a commit.  A plan that fails is
 * rolled back alone (a subtransaction) and made again in a transaction of
 * its own.
 */
static void
batch_plan_ahead(PipelineRun *run, Pipeline *p, Batch *b, double plan_ms, instr_time start, bool careful)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	instr_time	now;

	if (!run->run_once || careful || run->backlog <= 0 || p->source_routine->plan_ahead == NULL ||
		!p->source_routine->plan_ahead(run->source_state))
		return;
	INSTR_TIME_SET_CURRENT(now);
	INSTR_TIME_SUBTRACT(now, start);
	flow_observe(run, b->size, plan_ms + INSTR_TIME_GET_MILLISEC(now), run->backlog);
	b->observed = true;

	INSTR_TIME_SET_CURRENT(now);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		int64		next = batch_plan(run, &run->next_attempts);

		run->next_batch = next > 0 ? next : 0;	/* -1: stop, which the next plan says again */
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
			PG_RE_THROW();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		ereport(LOG,
				(errmsg("sluice pipeline \"%s\": the batch after batch " INT64_FORMAT " could not be planned with it: %s",
						run->name, b->id, edata->message),
				 errdetail("It is planned in a transaction of its own.")));
		run->next_batch = 0;
		batch_lease(run, b->id);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	run->next_plan_ms = elapsed_ms(now);
}

/*
 * Read, write and commit a planned batch in one transaction.  Returns false
 * if another worker committed it first.
 */
static bool
batch_process(PipelineRun *run, Batch *b, double plan_ms, bool careful)
{
	Datum		values[8];
	Pipeline   *p;
	instr_time	start;
	instr_time	elapsed;
	double		write_ms;
	char	   *durations;
	bool		staged;
	bool		fold;
	Oid			into;
	Oid			input;
	int64		sink_rows;
	Rejects		rj;

	INSTR_TIME_SET_CURRENT(start);
	values[0] = Int32GetDatum(run->id);
	values[1] = Int64GetDatum(b->id);

	p = pipeline_load(run->id);
	if (p == NULL)
		return false;
	if (catalog_exec("SELECT 1 FROM sluice.batch WHERE pipeline_id = $1 AND batch_id = $2"
					 " AND status = 'planned' FOR UPDATE",
					 2, (Oid[]) {INT4OID, INT8OID}, values, NULL, SPI_OK_SELECT) == 0)
		return false;
	if (run->source_state == NULL)
		source_open(run, p);

	memset(&rj, 0, sizeof(rj));
	rj.keep = p->keep_rejects;
	rj.cxt = CurrentMemoryContext;	/* lives until rejects_save() */

	/*
	 * An append sink without a transform takes the rows straight, at COPY's
	 * speed; a sink that folds rows takes them one by one as they are
	 * parsed, in its turn, and the staging table only gives their shape.
	 * Deduplication takes the rows out of the staging table (or the
	 * transform's result) that the sink must not see.
	 */
	fold = !careful && p->transform == NULL && p->sink_routine->receiver != NULL && !p->dedupe;
	staged = careful || p->transform != NULL || !p->sink_routine->direct || p->dedupe;
	into = staged ? create_stage(p->columns) : p->target;
	if (fold)
	{
		batch_wait_turn(run, b);
		b->dest = p->sink_routine->receiver(p, b, into);
	}
	p->source_routine->read(run->source_state, p, b, into, careful ? &rj : NULL);
	b->dest = NULL;
	b->unit = NULL;
	input = into;

	if (staged && p->transform)
	{
		int			nestlevel = NewGUCNestLevel();

		check_single_select(p->transform);

		/*
		 * The owner's own query, with the owner's search_path but pg_temp
		 * first: "batch" is the staging table, whatever else is on it.
		 */
		(void) set_config_option("search_path", psprintf("pg_temp, %s", namespace_search_path),
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		if (SPI_execute(psprintf("CREATE TEMP TABLE batch_out ON COMMIT DROP AS SELECT * FROM (%s) AS q",
								 p->transform), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not run the transform");
		AtEOXact_GUC(true, nestlevel);
		input = temp_relid("batch_out");
	}

	/* read and transformed side by side with other workers; written in batch order */
	if (!fold)
		batch_wait_turn(run, b);
	if (p->dedupe)
		dedupe_batch(p, b, input);
	if (staged)
		sink_rows = p->sink_routine->write(p, b, input, into, careful ? &rj : NULL);
	else
		sink_rows = (int64) b->rows;
	if (careful)
		rejects_save(&rj, run->id, b->id);
	crash_point("after_sink", b->attempts);

	p->source_routine->commit(run->source_state, p, b);

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	write_ms = INSTR_TIME_GET_MILLISEC(elapsed);
	durations = psprintf("{\"plan\": %.3f, \"write\": %.3f, \"total\": %.3f}",
						 plan_ms, write_ms, plan_ms + write_ms);

	/* the compare-and-set that makes the batch ours */
	values[2] = Int64GetDatum((int64) b->rows);
	values[3] = Int64GetDatum(b->bytes);
	values[4] = CStringGetTextDatum(durations);
	values[5] = Int32GetDatum(b->units);
	values[6] = Int64GetDatum(sink_rows);
	values[7] = Int64GetDatum(rj.count);
	catalog_exec("UPDATE sluice.pipeline SET committed_batch = $2 WHERE id = $1",
				 2, (Oid[]) {INT4OID, INT8OID}, values, NULL, SPI_OK_UPDATE);
	if (catalog_exec("UPDATE sluice.batch SET status = 'committed', committed_at = clock_timestamp(),"
					 "  input_rows = $3, bytes = $4, durations = $5::text::jsonb, files = $6,"
					 "  sink_rows = $7, rejected_rows = $8"
					 " WHERE pipeline_id = $1 AND batch_id = $2 AND status = 'planned'",
					 8, (Oid[]) {INT4OID, INT8OID, INT8OID, INT8OID, TEXTOID, INT4OID, INT8OID, INT8OID},
					 values, sink_rows < 0 ? "      n " : NULL, SPI_OK_UPDATE) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("batch " INT64_FORMAT " of pipeline \"%s\" was committed by another worker",
						b->id, run->name)));

	/*
	 * Any role may LISTEN: the payload names the pipeline, the batch and
	 * what happened; its numbers only with sluice.notify_details.  Far
	 * under the 8,000 bytes a payload may have.  A notification queue
	 * filled by someone else's idle listener must not fail the batch: past
	 * half full, none is sent.
	 */
	values[2] = CStringGetTextDatum(run->name);
	values[3] = Int64GetDatum((int64) b->rows);
	values[4] = Float8GetDatum(plan_ms + write_ms);
	values[5] = BoolGetDatum(sluice_notify_details);
	catalog_exec("SELECT pg_notify('sluice_progress', (jsonb_build_object('pipeline', $3, 'batch_id', $2, 'status', 'committed')"
				 "  || CASE WHEN $6 THEN jsonb_build_object('input_rows', $4, 'duration_ms', round($5::numeric, 3),"
				 "       'watermark', (SELECT next_watermark FROM sluice.batch WHERE pipeline_id = $1 AND batch_id = $2))"
				 "     ELSE '{}' END)::text)"
				 " WHERE pg_notification_queue_usage() < 0.5",
				 6, (Oid[]) {INT4OID, INT8OID, TEXTOID, INT8OID, FLOAT8OID, BOOLOID}, values, NULL, SPI_OK_SELECT);

	batch_plan_ahead(run, p, b, plan_ms, start, careful);

	/*
	 * With the next batch planned, the commit need not wait for the disk:
	 * the last batch's commit waits, and with it for every one before (the
	 * log is flushed in order), and the worker flushes before it tells the
	 * run_once() caller.  A crash before then may take the last few batches
	 * back, each with its offsets and its plan of the next: they are read
	 * again, exactly once.
	 */
	if (run->next_batch > 0)
		xact_no_wait();
	crash_point("before_commit", b->attempts);
	return true;
}

/*
 * Record an error in sluice.error in a fresh transaction; with fail, also
 * fail the pipeline and tell the worker's slot (a run_once() caller).
 */
static void
batch_record_error(PipelineRun *run, int64 batch_id, ErrorData *edata, bool fail)
{
	Oid			types[7] = {INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[7];
	char		nulls[7] = "       ";
	const char *strs[4] = {edata->message, edata->detail, edata->hint, edata->context};

	values[0] = Int32GetDatum(run->id);
	values[1] = Int64GetDatum(batch_id);
	if (batch_id <= 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	for (int i = 0; i < 4; i++)
	{
		if (strs[i])
			values[3 + i] = CStringGetTextDatum(strs[i]);
		else
			nulls[3 + i] = 'n';
	}

	xact_begin("recording a failure");
	catalog_exec("INSERT INTO sluice.error (pipeline_id, batch_id, sqlstate, message, detail, hint, context)"
				 " SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM sluice.pipeline WHERE id = $1)",
				 7, types, values, nulls, SPI_OK_INSERT);
	if (fail)
		catalog_exec("UPDATE sluice.pipeline SET state = 'failed' WHERE id = $1", 1, types, values, NULL,
					 SPI_OK_UPDATE);
	/* as after a commit; the error's SQLSTATE only, never its text, which may quote a row */
	values[0] = CStringGetTextDatum(run->name);
	values[3] = CStringGetTextDatum(fail ? "failed" : "retrying");
	values[4] = BoolGetDatum(sluice_notify_details);
	catalog_exec("SELECT pg_notify('sluice_progress', (jsonb_build_object('pipeline', $1, 'batch_id', $2, 'status', $4)"
				 "  || CASE WHEN $5 THEN jsonb_build_object('error', $3) ELSE '{}' END)::text)"
				 " WHERE pg_notification_queue_usage() < 0.5",
				 5, (Oid[]) {TEXTOID, INT8OID, TEXTOID, TEXTOID, BOOLOID}, values, nulls[1] == 'n' ? " n   " : NULL,
				 SPI_OK_SELECT);
	xact_end();
	if (!fail)
		return;

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	run->slot->failed = true;
	run->slot->sqlerrcode = edata->sqlerrcode;
	strlcpy(run->slot->message, edata->message ? edata->message : "", SLUICE_MSG_LEN);
	strlcpy(run->slot->detail, edata->detail ? edata->detail : "", SLUICE_MSG_LEN);
	strlcpy(run->slot->hint, edata->hint ? edata->hint : "", SLUICE_MSG_LEN);
	strlcpy(run->slot->context, edata->context ? edata->context : "", SLUICE_MSG_LEN);
	LWLockRelease(sluice_shared->lock);
}

/*
 * One attempt at a batch through both transactions, in the batch's memory.
 * On an error the batch is rolled back and the error returned, in the
 * worker's memory; nothing is recorded yet.
 */
static BatchOutcome
batch_try(PipelineRun *run, bool careful, int64 *batch_id_out, ErrorData **edata_out)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(run->batch_cxt);
	Batch		b;
	BatchErrorContext errctx = {run->name, NULL};
	ErrorContextCallback callback;
	volatile BatchOutcome outcome = BATCH_NONE;
	volatile int64 batch_id = 0;

	memset(&b, 0, sizeof(b));
	callback.callback = batch_error_context;
	callback.arg = &errctx;
	callback.previous = error_context_stack;
	error_context_stack = &callback;

	PG_TRY();
	{
		instr_time	start;
		bool		ours;
		double		plan_ms;

		INSTR_TIME_SET_CURRENT(start);
		if (run->next_batch > 0)
		{
			/* planned with the batch before */
			batch_id = b.id = run->next_batch;
			b.attempts = run->next_attempts;
			plan_ms = run->next_plan_ms;
			run->next_batch = 0;
		}
		else
		{
			run->backlog = -1;	/* unknown when a planned batch is replayed */
			run->attempts = 0;
			xact_begin("planning a batch");
			batch_id = b.id = batch_plan(run, &b.attempts);
			xact_end();
			plan_ms = elapsed_ms(start);
		}
		run->attempts = b.attempts;

		if (b.id < 0)
			outcome = BATCH_STOP;
		else if (b.id > 0)
		{
			errctx.batch = &b;
			crash_point("after_plan", b.attempts);

			xact_begin(careful ? "processing a batch row by row" : "processing a batch");
			ours = batch_process(run, &b, plan_ms, careful);
			xact_end();			/* if not ours, nothing was written */
			ConditionVariableBroadcast(&sluice_shared->batch_committed);
			if (ours)
			{
				instr_time	took;

				INSTR_TIME_SET_CURRENT(took);
				INSTR_TIME_SUBTRACT(took, start);
				stats_add_batch(run->id, (int64) INSTR_TIME_GET_MICROSEC(took));
				if (!b.observed)
					flow_observe(run, b.size, INSTR_TIME_GET_MILLISEC(took), run->backlog);
				crash_point("after_commit", b.attempts);
				if (run->backlog >= 0)
					stats_set_backlog(run->id, run->backlog);
				if (run->source->after_commit)
					run->source->after_commit(run->source_state, &b);
			}
			LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
			if (ours)
				run->slot->batches_committed++;
			run->slot->current_batch = run->next_batch;	/* still leased, if planned ahead */
			LWLockRelease(sluice_shared->lock);
			outcome = BATCH_COMMITTED;
		}
	}
	PG_CATCH();
	{
		*edata_out = xact_catch(run->run_cxt);
		outcome = BATCH_FAILED;
		run->next_batch = 0;	/* rolled back with its batch, or left planned for a replay */
		batch_lease(run, 0);	/* the batch is left planned, for whichever worker plans next */
	}
	PG_END_TRY();

	error_context_stack = callback.previous;
	*batch_id_out = batch_id;
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(run->batch_cxt);
	return outcome;
}

/* errors that go away by themselves: the batch is tried again later */
static bool
is_transient(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_SLUICE_FILE_CHANGED ||
		sqlerrcode == ERRCODE_SLUICE_CATALOG_INCOMPLETE ||
		sqlerrcode == ERRCODE_CONNECTION_FAILURE;	/* a stream's brokers out of reach */
}

/*
 * Log a failed batch once, with its SQLSTATE, the whole error and what
 * comes of it.
 */
static void
batch_log_failure(PipelineRun *run, int64 batch_id, ErrorData *edata, const char *outcome)
{
	ereport(LOG,
			(errmsg("sluice pipeline \"%s\": %s failed with SQLSTATE %s, %s: %s", run->name,
					batch_id > 0 ? psprintf("batch " INT64_FORMAT, batch_id) : "a plan",
					unpack_sql_state(edata->sqlerrcode), outcome, edata->message ? edata->message : ""),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
			 edata->hint ? errhint("%s", edata->hint) : 0,
			 edata->context ? errcontext_msg("%s", edata->context) : 0));
}

/*
 * A transient failure: tried again after 1 s, doubling at each failure in
 * a row up to sluice.max_retry_delay, as Flink's exponential-delay restart
 * strategy; recorded in sluice.errors (but while pg_restore loads the
 * catalog) and shown, with the batch's attempts
 * and when it is tried again, in sluice.pipelines.  Past the pipeline's
 * max_retries it fails instead.  Returns whether it is tried again.
 */
static bool
batch_retry_later(PipelineRun *run, int64 batch_id, ErrorData *edata)
{
	TimestampTz next;

	run->retries++;
	if (run->max_retries >= 0 && run->retries > run->max_retries)
	{
		edata->detail = psprintf("%s%sIt failed %d times in a row, and the pipeline's max_retries is %d.",
								 edata->detail ? edata->detail : "", edata->detail ? " " : "",
								 run->retries, run->max_retries);
		batch_log_failure(run, batch_id, edata,
						  psprintf("%d times in a row, past max_retries: the pipeline fails", run->retries));
		return false;
	}
	if (run->attempts == 0)
		run->attempts = run->retries;	/* the plan failed: its tries */
	run->retry_ms = Min(1000L << Min(run->retries - 1, 20), sluice_max_retry_delay * 1000L);
	next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), run->retry_ms);
	batch_log_failure(run, batch_id, edata,
					  psprintf("attempt %d, tried again in %ld ms", run->attempts, run->retry_ms));
	/* a catalog pg_restore is loading gets nothing written: its rows are on their way */
	if (edata->sqlerrcode != ERRCODE_SLUICE_CATALOG_INCOMPLETE)
		batch_record_error(run, batch_id, edata, false);
	stats_set_retry(run->id, run->attempts, next);
	return true;
}

/*
 * Run one batch.  A batch that fails on a bad row, in a source that sets
 * bad rows aside, is read again row by row; a transient failure is left
 * for a retry; any other failure is recorded and fails the pipeline.
 */
BatchOutcome
batch_run(PipelineRun *run)
{
	bool		careful = false;

	for (;;)
	{
		ErrorData  *edata = NULL;
		int64		batch_id;
		BatchOutcome outcome = batch_try(run, careful, &batch_id, &edata);

		if (outcome != BATCH_FAILED)
		{
			if (run->retries > 0 && outcome == BATCH_COMMITTED)
			{
				run->retries = 0;
				stats_set_retry(run->id, 0, 0);
			}
			return outcome;
		}
		if (!careful && run->isolate_rows && batch_id > 0 &&
			rejects_is_row_error(edata->sqlerrcode))
		{
			batch_log_failure(run, batch_id, edata, "a bad row: reading it again row by row");
			careful = true;
			FreeErrorData(edata);
			continue;
		}
		if (edata->sqlerrcode == ERRCODE_SLUICE_OUT_OF_TURN)
		{
			ereport(DEBUG1, (errmsg_internal("sluice pipeline \"%s\": %s", run->name, edata->message)));
			/* the earlier batch no worker held is this worker's next plan */
			run->retry_ms = 0;
			FreeErrorData(edata);
			return BATCH_RETRY;
		}
		if (is_transient(edata->sqlerrcode) && batch_retry_later(run, batch_id, edata))
		{
			FreeErrorData(edata);
			return BATCH_RETRY;
		}
		if (!is_transient(edata->sqlerrcode))
			batch_log_failure(run, batch_id, edata, "the pipeline fails");
		batch_record_error(run, batch_id, edata, true);
		FreeErrorData(edata);
		return BATCH_FAILED;
	}
}

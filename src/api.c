/*
 * api.c
 *		SQL-callable functions that need C: run_once(), the live worker
 *		status behind sluice.pipelines, and waking the launcher.
 *		The rest of the SQL interface is in sql/sluice--*.sql.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "postmaster/bgworker.h"
#include "utils/builtins.h"

#include "sluice.h"

PG_FUNCTION_INFO_V1(sluice_wake);
Datum
sluice_wake(PG_FUNCTION_ARGS)
{
	sluice_wake_launcher();
	PG_RETURN_VOID();
}

/*
 * sluice._workers() returns setof (pipeline_id int, pid int, batches bigint,
 *		current_batch bigint, files_pending int)
 */
PG_FUNCTION_INFO_V1(sluice_workers);
Datum
sluice_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, false};

		if (slot->pipeline_id == 0 || slot->worker_pid == 0)
			continue;
		values[0] = Int32GetDatum(slot->pipeline_id);
		values[1] = Int32GetDatum(slot->worker_pid);
		values[2] = Int64GetDatum(slot->batches_committed);
		values[3] = Int64GetDatum(slot->current_batch);
		nulls[3] = slot->current_batch == 0;
		values[4] = Int32GetDatum(slot->files_pending);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(sluice_shared->lock);
	return (Datum) 0;
}

/*
 * sluice.run_once(name text) returns bigint
 *
 * Spark's availableNow: a worker drains what the source holds now, batch by
 * batch, through the same code path as a running pipeline, while we wait.
 * Returns the number of batches committed; a failure is raised here with the
 * worker's error, after the worker recorded it like any other.
 */
PG_FUNCTION_INFO_V1(sluice_run_once);
Datum
sluice_run_once(PG_FUNCTION_ARGS)
{
	text	   *name = PG_GETARG_TEXT_PP(0);
	Oid			type = TEXTOID;
	Datum		value = PointerGetDatum(name);
	int32		id;
	Oid			owner;
	char	   *state;
	SluiceWorkerArgs args;
	int			slotno;
	uint64		generation;
	BackgroundWorkerHandle *handle;
	SluiceSlot *slot;
	SluiceSlot	result;

	if (strcmp(get_database_name(MyDatabaseId), sluice_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sluice pipelines run only in database \"%s\"", sluice_database),
				 errhint("Set sluice.database in postgresql.conf and restart the server.")));

	SPI_connect();
	if (SPI_execute_with_args("SELECT id, owner, state FROM sluice.pipeline WHERE name = $1",
							  1, &type, &value, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read sluice.pipeline");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("pipeline \"%s\" does not exist", text_to_cstring(name))));
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool) {0}));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &(bool) {0}));
	state = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3));
	SPI_finish();

	if (strcmp(state, "running") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pipeline \"%s\" is running", text_to_cstring(name)),
				 errhint("Stop it with sluice.stop() first; its worker already processes what arrives.")));

	slotno = slot_reserve(id, MyProcPid, &generation);
	if (slotno < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg(slot_pipeline_busy(id) ? "pipeline \"%s\" is being run by another worker"
						: "no free sluice worker slot to run pipeline \"%s\"", text_to_cstring(name)),
				 errhint("Wait for the other run to end, or raise sluice.max_workers.")));

	memset(&args, 0, sizeof(args));
	args.database = MyDatabaseId;
	args.owner = owner;
	args.pipeline_id = id;
	args.generation = generation;
	args.run_once = true;
	handle = sluice_start_worker(slotno, &args, MyProcPid);
	if (handle == NULL)
	{
		slot_release(slotno, generation);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a worker for pipeline \"%s\"", text_to_cstring(name)),
				 errhint("Raise max_worker_processes.")));
	}

	slot = &sluice_shared->slots[slotno];
	PG_TRY();
	{
		(void) WaitForBackgroundWorkerShutdown(handle);
	}
	PG_CATCH();
	{
		/* cancelled: stop the worker; its batch rolls back */
		TerminateBackgroundWorker(handle);
		LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
		if (slot->generation == generation)
		{
			slot->waiter_pid = 0;
			if (slot->worker_done || slot->worker_pid == 0)
				slot->pipeline_id = 0;
		}
		LWLockRelease(sluice_shared->lock);
		PG_RE_THROW();
	}
	PG_END_TRY();

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	memcpy(&result, slot, sizeof(SluiceSlot));
	slot->pipeline_id = 0;
	LWLockRelease(sluice_shared->lock);

	if (result.failed)
		ereport(ERROR,
				(errcode(result.sqlerrcode),
				 errmsg_internal("%s", result.message),
				 result.detail[0] ? errdetail_internal("%s", result.detail) : 0,
				 result.hint[0] ? errhint("%s", result.hint) : 0,
				 result.context[0] ? errcontext("%s", result.context) : 0));
	if (!result.finished)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the worker of pipeline \"%s\" exited before it finished", text_to_cstring(name)),
				 errhint("See the server log.")));
	PG_RETURN_INT64(result.batches_committed);
}

/*
 * A transform must be exactly one SELECT: it is spliced into the batch's
 * statements, so anything else could run statements of its own.
 */
void
check_single_select(const char *query)
{
	List	   *parsed = raw_parser(query, RAW_PARSE_DEFAULT);

	if (list_length(parsed) != 1 || !IsA(((RawStmt *) linitial(parsed))->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a transform must be a single SELECT query")));
}

/* sluice._check_query(query text) */
PG_FUNCTION_INFO_V1(sluice_check_query);
Datum
sluice_check_query(PG_FUNCTION_ARGS)
{
	check_single_select(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

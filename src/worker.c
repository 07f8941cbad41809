/*
 * worker.c
 *		A pipeline worker: one dynamic background worker that runs the
 *		micro-batches of one pipeline.
 *
 * The worker connects as the pipeline's owner, so every read and write of
 * a batch is checked against the owner's privileges.  It runs one batch
 * per trigger interval and sleeps on its latch in between; in
 * available-now mode (sluice.run_once(), or trigger 'available_now') it
 * runs batches until there is nothing left and exits.  SIGTERM (stop(),
 * server shutdown) ends it at once: a batch in flight rolls back and is
 * replayed later.  A failed batch is recorded and ends the worker; the
 * pipeline stays 'failed' until start() or run_once() retries it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "sluice.h"

static int	my_slotno = -1;
static uint64 my_generation = 0;

static void
worker_detach(int code, Datum arg)
{
	SluiceSlot *slot = &sluice_shared->slots[my_slotno];

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (slot->generation == my_generation)
	{
		slot->worker_pid = 0;
		slot->latch = NULL;
		slot->worker_done = true;
		if (slot->waiter_pid == 0)
			slot->pipeline_id = 0;
	}
	/* the launcher that started us may be gone: tell the current one */
	if (sluice_shared->launcher_latch)
		SetLatch(sluice_shared->launcher_latch);
	LWLockRelease(sluice_shared->lock);
}

/* Whether the launcher asked us to go: it scales the pipeline down. */
static bool
worker_retiring(SluiceSlot *slot)
{
	bool		retire;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	retire = slot->retire;
	LWLockRelease(sluice_shared->lock);
	return retire;
}

/* Run a statement about this pipeline in a transaction of its own. */
static char *
worker_exec(int32 id, const char *sql, int expected_rc)
{
	char	   *result = NULL;
	Datum		value = Int32GetDatum(id);
	Oid			type = INT4OID;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	catalog_exec(sql, 1, &type, &value, NULL, expected_rc);
	if (SPI_tuptable != NULL && SPI_processed > 0)
		result = MemoryContextStrdup(TopMemoryContext,
									 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

void
sluice_worker_main(Datum arg)
{
	SluiceWorkerArgs args;
	PipelineRun run;
	SluiceSlot *slot;
	bool		drained = false;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	my_slotno = DatumGetInt32(arg);
	my_generation = args.generation;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* attach to the slot reserved for us, unless the reservation was withdrawn */
	slot = &sluice_shared->slots[my_slotno];
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (slot->generation != my_generation || slot->pipeline_id != args.pipeline_id)
	{
		LWLockRelease(sluice_shared->lock);
		proc_exit(0);
	}
	slot->worker_pid = MyProcPid;
	slot->latch = MyLatch;
	LWLockRelease(sluice_shared->lock);
	before_shmem_exit(worker_detach, 0);

	BackgroundWorkerInitializeConnectionByOid(args.database, args.owner, 0);
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	slot->connected = true;
	LWLockRelease(sluice_shared->lock);

	memset(&run, 0, sizeof(run));
	run.id = args.pipeline_id;
	run.run_once = args.run_once;
	run.available_now = args.available_now || args.run_once;
	run.slot = slot;
	run.run_cxt = AllocSetContextCreate(TopMemoryContext, "sluice pipeline", ALLOCSET_DEFAULT_SIZES);
	run.batch_cxt = AllocSetContextCreate(TopMemoryContext, "sluice batch", ALLOCSET_DEFAULT_SIZES);
	run.name = worker_exec(run.id, "SELECT name FROM sluice.pipeline WHERE id = $1", SPI_OK_SELECT);
	if (run.name == NULL)
	{
		/* told to the run_once() caller through the slot */
		LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
		slot->failed = true;
		slot->sqlerrcode = ERRCODE_UNDEFINED_OBJECT;
		snprintf(slot->message, SLUICE_MSG_LEN,
				 "pipeline %d does not exist or is not visible to its worker", run.id);
		strlcpy(slot->hint, "Commit the transaction that created the pipeline before running it.",
				SLUICE_MSG_LEN);
		LWLockRelease(sluice_shared->lock);
		proc_exit(0);
	}
	/* a run of its own, as start() gives one (progress_json's runId) */
	if (run.run_once)
		(void) worker_exec(run.id, "UPDATE sluice.pipeline SET run_id = gen_random_uuid() WHERE id = $1",
						   SPI_OK_UPDATE);
	SetConfigOption("application_name", run.name, PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname(run.name);

	for (;;)
	{
		TimestampTz start = GetCurrentTimestamp();
		TimestampTz next;
		BatchOutcome outcome;

		/* scaled down: go between batches */
		if (worker_retiring(slot))
			break;
		outcome = batch_run(&run);
		if (outcome == BATCH_FAILED || outcome == BATCH_STOP)
			break;
		if (run.available_now && outcome != BATCH_RETRY)
		{
			if (outcome == BATCH_NONE)
			{
				drained = true;
				break;
			}
			continue;
		}

		/*
		 * Like Spark's processing-time trigger: batches start an interval
		 * apart, the next one at once when a batch took longer.  An idle
		 * trigger of zero still sleeps a little; a retry waits its backoff.
		 */
		next = outcome == BATCH_RETRY ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(), run.retry_ms) :
			TimestampTzPlusMilliseconds(start, outcome == BATCH_COMMITTED ? run.trigger_ms : Max(run.trigger_ms, 100));
		for (;;)
		{
			long		wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next);

			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			if (wait_ms <= 0 || worker_retiring(slot))
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}

	if (drained)
	{
		/* a drained available-now pipeline is stopped; a retried failure is over */
		worker_exec(run.id, run.run_once
					? "UPDATE sluice.pipeline SET state = 'stopped' WHERE id = $1 AND state = 'failed'"
					: "UPDATE sluice.pipeline SET state = 'stopped' WHERE id = $1 AND state = 'running'",
					SPI_OK_UPDATE);
		LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
		slot->finished = true;
		LWLockRelease(sluice_shared->lock);
	}
	proc_exit(0);
}

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
 *
 * The worker of a run_once() call that drained stays warm for
 * sluice.run_once_idle_timeout, waiting for the next run_once() of its
 * pipeline to hand it a request through its slot, so that a call finds it
 * connected, its plans and its source open.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_db_role_setting.h"
#include "common/hashfn.h"
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
static int32 my_pipeline = 0;

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
		slot->warm = false;
		if (slot->waiter_pid == 0)
			slot->pipeline_id = 0;
		else
			SetLatch(slot->waiter_latch);
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

/*
 * A hash of the settings that ALTER ROLE ... SET and ALTER DATABASE ... SET
 * give a session of role in this database as it connects: a warm worker
 * serves a run_once() only while they are the ones it connected with.  In
 * a transaction.
 */
uint64
settings_hash(Oid role)
{
	Relation	rel = table_open(DbRoleSettingRelationId, AccessShareLock);
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	HeapTuple	tup;
	uint64		hash = 0;

	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_db_role_setting s = (Form_pg_db_role_setting) GETSTRUCT(tup);
		bool		isnull;
		Datum		config;
		struct varlena *v;

		if ((s->setdatabase != InvalidOid && s->setdatabase != MyDatabaseId) ||
			(s->setrole != InvalidOid && s->setrole != role))
			continue;
		config = heap_getattr(tup, Anum_pg_db_role_setting_setconfig, RelationGetDescr(rel), &isnull);
		if (isnull)
			continue;
		v = pg_detoast_datum_packed((struct varlena *) DatumGetPointer(config));
		/* a sum: the order of the rows does not matter */
		hash += hash_bytes_extended((unsigned char *) VARDATA_ANY(v), VARSIZE_ANY_EXHDR(v),
									((uint64) s->setdatabase << 32) | s->setrole);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return hash;
}

/* How long a warm worker may still wait, by sluice.run_once_idle_timeout as it is now. */
static long
idle_left_ms(TimestampTz served_at)
{
	return TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
										   TimestampTzPlusMilliseconds(served_at, sluice_run_once_idle_timeout));
}

/*
 * A run_once() request is served: tell its caller, then, unless told to go,
 * wait warm for the next one.  Returns true when one came; false to exit.
 */
static bool
worker_next_request(SluiceSlot *slot)
{
	TimestampTz served_at;
	bool		warm;

	/*
	 * Every batch the call committed is on disk before the caller hears of
	 * it (those planned ahead committed without waiting).  And as a session
	 * does when it goes idle, the statistics are reported before it looks.
	 */
	XLogFlush(XactLastCommitEnd);
	pgstat_report_stat(true);
	served_at = GetCurrentTimestamp();
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	slot->finished = true;
	slot->served = slot->request;
	warm = sluice_run_once_idle_timeout > 0 && !slot->retire;
	slot->warm = warm;
	slot->leaving = !warm;
	if (slot->waiter_latch)
		SetLatch(slot->waiter_latch);
	LWLockRelease(sluice_shared->lock);

	while (warm)
	{
		long		wait_ms = idle_left_ms(served_at);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
		if (slot->generation != my_generation || slot->pipeline_id != my_pipeline)
		{
			/* the slot was reserved anew: it is no longer ours */
			LWLockRelease(sluice_shared->lock);
			proc_exit(0);
		}
		if (slot->request != slot->served)
		{
			slot->taken = slot->request;
			LWLockRelease(sluice_shared->lock);
			return true;
		}
		if (slot->retire || idle_left_ms(served_at) <= 0)
		{
			warm = slot->warm = false;
			slot->leaving = true;
		}
		LWLockRelease(sluice_shared->lock);
	}
	return false;
}

/*
 * Run a statement about this pipeline in a transaction of its own, whose
 * commit waits for the disk if durable.
 */
static char *
worker_exec(int32 id, const char *sql, int expected_rc, bool durable)
{
	char	   *result = NULL;
	Datum		value = Int32GetDatum(id);
	Oid			type = INT4OID;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (!durable)
		xact_no_wait();
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

/*
 * Run batches until the pipeline stops, fails or is scaled down (false), or
 * in available-now mode until nothing is left (true).
 */
static bool
worker_loop(PipelineRun *run)
{
	for (;;)
	{
		TimestampTz start = GetCurrentTimestamp();
		TimestampTz next;
		BatchOutcome outcome;

		/* scaled down: go between batches */
		if (worker_retiring(run->slot))
			return false;
		outcome = batch_run(run);
		if (outcome == BATCH_FAILED || outcome == BATCH_STOP)
			return false;
		if (run->available_now && outcome != BATCH_RETRY)
		{
			if (outcome == BATCH_NONE)
				return true;
			continue;
		}

		/*
		 * Like Spark's processing-time trigger: batches start an interval
		 * apart, the next one at once when a batch took longer.  An idle
		 * trigger of zero still sleeps a little; a retry waits its backoff.
		 */
		next = outcome == BATCH_RETRY ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(), run->retry_ms) :
			TimestampTzPlusMilliseconds(start, outcome == BATCH_COMMITTED ? run->trigger_ms : Max(run->trigger_ms, 100));
		for (;;)
		{
			long		wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next);

			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending)
			{
				ConfigReloadPending = false;
				ProcessConfigFile(PGC_SIGHUP);
			}
			if (wait_ms <= 0 || worker_retiring(run->slot))
				break;
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 wait_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
		}
	}
}

void
sluice_worker_main(Datum arg)
{
	SluiceWorkerArgs args;
	PipelineRun run;
	SluiceSlot *slot;
	uint64		hash = 0;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	my_slotno = DatumGetInt32(arg);
	my_generation = args.generation;
	my_pipeline = args.pipeline_id;

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
	if (args.run_once)
	{
		StartTransactionCommand();
		hash = settings_hash(args.owner);
		CommitTransactionCommand();
	}
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	slot->connected = true;
	slot->settings_hash = hash;
	LWLockRelease(sluice_shared->lock);

	memset(&run, 0, sizeof(run));
	run.id = args.pipeline_id;
	run.run_once = args.run_once;
	run.available_now = args.available_now || args.run_once;
	run.slot = slot;
	run.run_cxt = AllocSetContextCreate(TopMemoryContext, "sluice pipeline", ALLOCSET_DEFAULT_SIZES);
	run.batch_cxt = AllocSetContextCreate(TopMemoryContext, "sluice batch", ALLOCSET_DEFAULT_SIZES);
	run.name = worker_exec(run.id, "SELECT name FROM sluice.pipeline WHERE id = $1", SPI_OK_SELECT, true);
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
	SetConfigOption("application_name", run.name, PGC_USERSET, PGC_S_SESSION);
	pgstat_report_appname(run.name);

	for (;;)
	{
		/*
		 * A run of its own, as start() gives one (progress_json's runId).
		 * Its commit need not wait for the disk: a batch of the run commits
		 * after it and flushes it, and without one nothing showed the id.
		 */
		if (run.run_once)
			(void) worker_exec(run.id, "UPDATE sluice.pipeline SET run_id = gen_random_uuid() WHERE id = $1",
							   SPI_OK_UPDATE, false);
		if (!worker_loop(&run))
			break;

		/* a drained available-now pipeline is stopped; a retried failure is over */
		worker_exec(run.id, run.run_once
					? "UPDATE sluice.pipeline SET state = 'stopped' WHERE id = $1 AND state = 'failed'"
					: "UPDATE sluice.pipeline SET state = 'stopped' WHERE id = $1 AND state = 'running'",
					SPI_OK_UPDATE, true);
		if (!run.run_once)
		{
			LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
			slot->finished = true;
			LWLockRelease(sluice_shared->lock);
			break;
		}
		if (!worker_next_request(slot))
			break;
		if (run.retries > 0)
			stats_set_retry(run.id, 0, 0);
		run.retries = 0;
	}
	proc_exit(0);
}

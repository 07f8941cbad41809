/*
 * launcher.c
 *		The sluice launcher: one static background worker per cluster that
 *		keeps a worker alive for every pipeline whose state is 'running'.
 *
 * The launcher sleeps on its latch.  It is woken by start(), stop() and
 * drop_pipeline() after they commit, and by the
 * postmaster when one of its workers exits (bgw_notify_pid).  Each wake-up
 * reads the catalog once and reconciles: workers of pipelines that are no
 * longer running are terminated, running pipelines without a worker get
 * one, at most once per sluice.restart_delay so a worker that keeps dying
 * does not spin.  The worker slots in shared memory, not the launcher's own
 * memory, say which workers exist, so a restarted launcher keeps control of
 * the workers its predecessor started; every worker sets the current
 * launcher's latch when it exits.  After a crash restart the launcher starts again with the
 * server and brings every running pipeline back.
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "sluice.h"

typedef struct LaunchedWorker
{
	int32		pipeline_id;
	int			slotno;
	uint64		generation;
	BackgroundWorkerHandle *handle; /* NULL once it exited */
	TimestampTz started_at;
	bool		seen;			/* still running in the catalog */
} LaunchedWorker;

typedef struct RunningPipeline
{
	int32		id;
	Oid			owner;
	bool		available_now;
} RunningPipeline;

static List *launched = NIL;	/* of LaunchedWorker, in TopMemoryContext */

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (sluice_shared->launcher_latch == MyLatch)
		sluice_shared->launcher_latch = NULL;
	LWLockRelease(sluice_shared->lock);
}

/* The pipelines that should have a worker, read in a short transaction. */
static List *
launcher_running_pipelines(void)
{
	List	   *result = NIL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "reading sluice.pipeline");

	if (OidIsValid(get_extension_oid("sluice", true)))
	{
		SPI_connect();
		if (SPI_execute("SELECT id, owner, trigger = 'available_now' FROM sluice.pipeline WHERE state = 'running'",
						true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read sluice.pipeline");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			RunningPipeline *p;
			bool		isnull;
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			p = palloc(sizeof(RunningPipeline));
			result = lappend(result, p);
			MemoryContextSwitchTo(old);
			p->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			p->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
			p->available_now = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		}
		SPI_finish();
	}

	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return result;
}

static LaunchedWorker *
launched_find(int32 pipeline_id)
{
	ListCell   *lc;

	foreach(lc, launched)
	{
		LaunchedWorker *lw = lfirst(lc);

		if (lw->pipeline_id == pipeline_id)
			return lw;
	}
	return NULL;
}

/*
 * Reconcile workers with the catalog.  Returns how long to sleep at most
 * before the next look, in milliseconds.
 */
static long
launcher_reconcile(void)
{
	List	   *running = launcher_running_pipelines();
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	long		sleep_ms = sluice_launcher_naptime * 1000L;

	foreach(lc, launched)
		((LaunchedWorker *) lfirst(lc))->seen = false;

	foreach(lc, running)
	{
		RunningPipeline *p = lfirst(lc);
		LaunchedWorker *lw = launched_find(p->id);
		SluiceWorkerArgs args;
		int			slotno;
		uint64		generation;
		BackgroundWorkerHandle *handle;

		if (lw == NULL)
		{
			lw = MemoryContextAllocZero(TopMemoryContext, sizeof(LaunchedWorker));
			lw->pipeline_id = p->id;
			launched = lappend(launched, lw);
		}
		lw->seen = true;

		if (lw->handle != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(lw->handle, &pid) != BGWH_STOPPED)
				continue;
			/* it exited; free its slot if it never got to do so itself */
			slot_release(lw->slotno, lw->generation);
			pfree(lw->handle);
			lw->handle = NULL;
		}

		/* back off after a recent start */
		if (lw->started_at != 0 &&
			!TimestampDifferenceExceeds(lw->started_at, now, sluice_restart_delay * 1000))
		{
			long		wait = sluice_restart_delay * 1000L -
				TimestampDifferenceMilliseconds(lw->started_at, now);

			sleep_ms = Min(sleep_ms, Max(wait, 10));
			continue;
		}

		slotno = slot_reserve(p->id, 0, &generation);
		if (slotno < 0)
		{
			/* held by a run_once() call, or all slots are taken */
			if (!slot_pipeline_busy(p->id))
				ereport(LOG,
						(errmsg("sluice: no free worker slot for pipeline %d", p->id),
						 errhint("Increase sluice.max_workers.")));
			continue;
		}

		memset(&args, 0, sizeof(args));
		args.database = MyDatabaseId;
		args.owner = p->owner;
		args.pipeline_id = p->id;
		args.generation = generation;
		args.available_now = p->available_now;
		handle = sluice_start_worker(slotno, &args, MyProcPid);
		lw->started_at = now;
		if (handle == NULL)
		{
			slot_release(slotno, generation);
			ereport(LOG,
					(errmsg("sluice: could not start a worker for pipeline %d", p->id),
					 errhint("Increase max_worker_processes.")));
			sleep_ms = Min(sleep_ms, sluice_restart_delay * 1000L);
			continue;
		}
		lw->handle = handle;
		lw->slotno = slotno;
		lw->generation = generation;
	}

	/*
	 * Stop the workers of pipelines that are no longer running.  This goes by
	 * the slots, not by our handles, so that it also reaches workers that an
	 * earlier launcher started.  A slot's worker_pid is cleared before that
	 * worker exits, so the pid cannot have been reused.
	 */
	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];
		bool		wanted = false;

		if (slot->pipeline_id == 0 || slot->worker_pid == 0 || slot->waiter_pid != 0)
			continue;			/* free, not started yet, or a run_once() */
		foreach(lc, running)
			if (((RunningPipeline *) lfirst(lc))->id == slot->pipeline_id)
				wanted = true;
		if (!wanted)
			kill(slot->worker_pid, SIGTERM);
	}
	LWLockRelease(sluice_shared->lock);

	/* forget pipelines that are no longer running, once their worker is gone */
	foreach(lc, launched)
	{
		LaunchedWorker *lw = lfirst(lc);

		if (lw->seen)
			continue;
		if (lw->handle != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(lw->handle, &pid) != BGWH_STOPPED)
				continue;
			slot_release(lw->slotno, lw->generation);
			pfree(lw->handle);
		}
		launched = foreach_delete_current(launched, lc);
		pfree(lw);
	}

	list_free_deep(running);
	return sleep_ms;
}

void
sluice_launcher_main(Datum arg)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(sluice_database, NULL, 0);
	/* nothing a user created is resolved in our statements */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	sluice_shared->launcher_latch = MyLatch;
	LWLockRelease(sluice_shared->lock);
	before_shmem_exit(launcher_detach, 0);

	ereport(LOG, (errmsg("sluice launcher started for database \"%s\"", sluice_database)));

	for (;;)
	{
		long		sleep_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		sleep_ms = launcher_reconcile();

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 sleep_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

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
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "nodes/value.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "source.h"
#include "sluice.h"

typedef struct LaunchedWorker
{
	int32		pipeline_id;
	int			slotno;
	uint64		generation;
	BackgroundWorkerHandle *handle; /* NULL once it exited */
	TimestampTz started_at;
	Oid			owner;			/* the role its worker connects as */
	int			failed_starts;	/* workers in a row that could not connect */
	bool		no_slot_reported;	/* since it last had a slot */
	bool		seen;			/* still running in the catalog */
} LaunchedWorker;

typedef struct RunningPipeline
{
	int32		id;
	Oid			owner;
	bool		available_now;
	char		name[NAMEDATALEN];
} RunningPipeline;

/* workers in a row that may fail to connect before their pipeline is failed */
#define MAX_FAILED_STARTS 5

static List *launched = NIL;	/* of LaunchedWorker, in TopMemoryContext */

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (sluice_shared->launcher_latch == MyLatch)
		sluice_shared->launcher_latch = NULL;
	LWLockRelease(sluice_shared->lock);
}

/*
 * Fail a pipeline (or, with fail false, only warn about it) with the reason
 * in sluice.errors, in a transaction of its own.  The launcher runs as a
 * superuser; nothing here comes from a user.
 */
static void
launcher_report(int32 id, bool fail, int sqlerrcode, const char *message, const char *detail,
				const char *hint)
{
	Datum		values[6] = {Int32GetDatum(id), CStringGetTextDatum(unpack_sql_state(sqlerrcode)),
		CStringGetTextDatum(message), CStringGetTextDatum(detail), CStringGetTextDatum(hint)};

	ereport(LOG, (errmsg("sluice: %s", message), errdetail_internal("%s", detail)));
	values[5] = BoolGetDatum(fail);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute_with_args("WITH f AS (UPDATE sluice.pipeline SET state = 'failed'"
							  "  WHERE id = $1 AND state = 'running' AND $6 RETURNING id)"
							  " INSERT INTO sluice.error (pipeline_id, sqlstate, message, detail, hint)"
							  " SELECT id, $2, $3, $4, $5 FROM sluice.pipeline"
							  "  WHERE id = $1 AND (NOT $6 OR id IN (SELECT id FROM f))",
							  6, (Oid[]) {INT4OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID},
							  values, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not fail pipeline %d", id);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * Whether pipelines must wait for ALTER EXTENSION sluice UPDATE: the
 * library is newer than the catalog.  Said once in the log.
 */
static bool
launcher_version_waits(void)
{
	static bool reported = false;
	char	   *version;

	if (extension_version_ok(&version))
	{
		reported = false;
		return false;
	}
	if (!reported)
		ereport(LOG,
				(errmsg("sluice: extension \"sluice\" is at version %s, but its library is %s", version,
						SLUICE_VERSION),
				 errdetail("No pipeline runs until the extension is updated."),
				 errhint("Run ALTER EXTENSION sluice UPDATE in database \"%s\".", sluice_database)));
	reported = true;
	return true;
}

/*
 * The pipelines that should have a worker, read in a short transaction.
 * A worker slot goes only to a pipeline whose owner could create it now:
 * one whose owner can no longer log in or read server files is failed
 * here, with the reason, instead of having its worker fail forever.
 */
static List *
launcher_running_pipelines(void)
{
	List	   *result = NIL;
	List	   *refused = NIL;
	List	   *owners = NIL;
	ListCell   *lc;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "reading sluice.pipeline");

	if (OidIsValid(get_extension_oid("sluice", true)) && !launcher_version_waits())
	{
		SPI_connect();
		if (SPI_execute("SELECT p.id, p.owner, p.trigger = 'available_now',"
						"  CASE WHEN r.oid IS NULL THEN 'its owner no longer exists'"
						"       WHEN NOT r.rolcanlogin THEN format('Role %I cannot log in.', r.rolname)"
						"  END, p.name, r.rolname, p.source->>'type'"
						" FROM sluice.pipeline p LEFT JOIN pg_roles r ON r.oid = p.owner"
						" WHERE p.state = 'running'",
						true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read sluice.pipeline");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			RunningPipeline *p;
			bool		isnull;
			char	   *why = SPI_getvalue(tup, desc, 4);
			const char *hint = "Pipeline workers connect as the pipeline's owner and read server files. "
				"Give the owner back LOGIN and pg_read_server_files, then call sluice.start().";
			MemoryContext old;

			/* what else the owner needs to run it, as its source says */
			if (why == NULL)
				why = source_routine(SPI_getvalue(tup, desc, 7))->owner_refused(
					DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull)), &hint);
			old = MemoryContextSwitchTo(TopMemoryContext);
			if (why)
			{
				/* in our own memory: SPI's goes at SPI_finish() */
				refused = lappend(refused,
								  list_make4(makeInteger(DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull))),
											 makeString(psprintf("the owner of pipeline \"%s\" cannot run it",
																 SPI_getvalue(tup, desc, 5))),
											 makeString(SPI_getvalue(tup, desc, 6) ? pstrdup(why)
														: pstrdup("Its owner no longer exists.")),
											 makeString(pstrdup(hint))));
				MemoryContextSwitchTo(old);
				continue;
			}
			p = palloc(sizeof(RunningPipeline));
			result = lappend(result, p);
			MemoryContextSwitchTo(old);
			p->id = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
			p->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
			p->available_now = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
			strlcpy(p->name, SPI_getvalue(tup, desc, 5), NAMEDATALEN);
		}
		if (SPI_execute("SELECT DISTINCT owner::oid FROM sluice.pipeline", true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read sluice.pipeline");
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		isnull;

			owners = lappend_oid(owners, DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
																		SPI_tuptable->tupdesc, 1, &isnull)));
		}
		owners_set(owners);
		SPI_finish();
	}
	else if (!OidIsValid(get_extension_oid("sluice", true)))
		owners_set(NIL);		/* no extension, no pipelines: any role may go */

	PopActiveSnapshot();
	CommitTransactionCommand();

	foreach(lc, refused)
	{
		List	   *r = lfirst(lc);

		launcher_report(intVal(linitial(r)), true, ERRCODE_INSUFFICIENT_PRIVILEGE,
						strVal(lsecond(r)), strVal(lthird(r)), strVal(lfourth(r)));
	}
	list_free_deep(refused);
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
			{
				/* REASSIGN OWNED gave the pipeline to another role: restart as that one */
				if (lw->owner != p->owner)
					TerminateBackgroundWorker(lw->handle);
				continue;
			}
			/* it exited; free its slot if it never got to do so itself */
			if (slot_never_connected(lw->slotno, lw->generation))
				lw->failed_starts++;
			else
				lw->failed_starts = 0;
			slot_release(lw->slotno, lw->generation);
			pfree(lw->handle);
			lw->handle = NULL;
		}
		if (lw->failed_starts >= MAX_FAILED_STARTS)
		{
			launcher_report(p->id, true, ERRCODE_CONNECTION_FAILURE,
							psprintf("the worker of pipeline \"%s\" could not connect", p->name),
							psprintf("%d workers in a row exited before they connected to the database.",
									 lw->failed_starts),
							"The server log says why (the owner's CONNECT privilege or connection limit, max_connections, the database). "
							"Fix it, then call sluice.start().");
			lw->failed_starts = 0;
			continue;
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

		slotno = slot_reserve(p->id, p->owner, 0, &generation);
		if (slotno < 0)
		{
			/* held by a run_once() call, or all slots are taken: say so once */
			if (!slot_pipeline_busy(p->id) && !lw->no_slot_reported)
				launcher_report(p->id, false, ERRCODE_WARNING,
								psprintf("pipeline \"%s\" waits for a free worker slot", p->name),
								psprintf("All %d sluice worker slots are taken.", sluice_max_workers),
								"Stop another pipeline, or raise sluice.max_workers and restart the server.");
			lw->no_slot_reported = true;
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
			if (!lw->no_slot_reported)
				launcher_report(p->id, false, ERRCODE_WARNING,
								psprintf("pipeline \"%s\" waits for a background worker", p->name),
								"All background worker slots of the server are taken.",
								"Raise max_worker_processes and restart the server.");
			lw->no_slot_reported = true;
			sleep_ms = Min(sleep_ms, sluice_restart_delay * 1000L);
			continue;
		}
		lw->no_slot_reported = false;
		lw->handle = handle;
		lw->owner = p->owner;
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

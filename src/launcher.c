/*
 * launcher.c
 *		The sluice launcher: one static background worker per cluster that
 *		keeps the workers of every pipeline whose state is 'running' alive,
 *		from its min_workers to its max_workers as its backlog asks.
 *
 * The launcher sleeps on its latch.  It is woken by start(), stop(),
 * alter_pipeline() and drop_pipeline() after they commit, and by the
 * postmaster when one of its workers exits (bgw_notify_pid).  Each wake-up
 * reads the catalog once and reconciles: workers of pipelines that are no
 * longer running are terminated; running pipelines get the workers they
 * should have, after a worker died at most once per sluice.restart_delay so
 * a worker that keeps dying does not spin; a pipeline with too many tells
 * the newest to go after its batch.  The worker slots in shared memory, not
 * the launcher's own memory, say which workers exist, so a restarted
 * launcher keeps its predecessor's workers from being doubled; every worker
 * sets the current launcher's latch when it exits.  After a crash restart
 * the launcher starts again with the server and brings every running
 * pipeline back.  launcher_autoscale() says how it sizes a pipeline.
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

/* one worker the launcher started */
typedef struct LaunchedWorker
{
	int			slotno;
	uint64		generation;
	BackgroundWorkerHandle *handle;
	bool		retiring;		/* asked to exit after its batch: scaled down */
} LaunchedWorker;

/* a running pipeline, its workers, and what the autoscaler saw of it */
typedef struct LaunchedPipeline
{
	int32		pipeline_id;
	Oid			owner;			/* the role its workers connect as */
	List	   *workers;		/* of LaunchedWorker */
	TimestampTz started_at;		/* when workers were last started */
	bool		died;			/* a worker exited since, unasked */
	int			failed_starts;	/* workers in a row that could not connect */
	bool		no_slot_reported;	/* since it last had a slot */
	bool		seen;			/* still running in the catalog */
	int			desired;		/* workers the autoscaler wants, within min and max */
	TimestampTz looked_at;		/* the autoscaler's last look */
	int64		batches;		/* the pipeline's counters at that look */
	int64		busy_us;
	int			backlog_looks;	/* looks in a row that saw a backlog while batches ran */
	int			idle_looks;		/* looks in a row that saw no backlog and spare workers */
} LaunchedPipeline;

typedef struct RunningPipeline
{
	int32		id;
	Oid			owner;
	bool		available_now;
	int64		trigger_ms;
	int			min_workers;
	int			max_workers;
	bool		files;			/* a CSV source: its backlog is files, else messages */
	char		name[NAMEDATALEN];
} RunningPipeline;

/* workers in a row that may fail to connect before their pipeline is failed */
#define MAX_FAILED_STARTS 5

static List *launched = NIL;	/* of LaunchedPipeline, in TopMemoryContext */

static void
launcher_detach(int code, Datum arg)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (sluice_shared->launcher_latch == MyLatch)
		sluice_shared->launcher_latch = NULL;
	LWLockRelease(sluice_shared->lock);
}

/*
 * Fail a pipeline (or, with fail false, only warn or tell about it) with
 * the reason in sluice.errors, in a transaction of its own.  The launcher runs as a
 * superuser; nothing here comes from a user.
 */
static void
launcher_report(int32 id, bool fail, int sqlerrcode, const char *message, const char *detail,
				const char *hint)
{
	Datum		values[6] = {Int32GetDatum(id), CStringGetTextDatum(unpack_sql_state(sqlerrcode)),
		CStringGetTextDatum(message), CStringGetTextDatum(detail), hint ? CStringGetTextDatum(hint) : 0};
	char		nulls[6] = {' ', ' ', ' ', ' ', hint ? ' ' : 'n', ' '};

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
							  values, nulls, false, 0) != SPI_OK_INSERT)
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

/* Delete errors older than sluice.errors_retention, once a minute at most.  In SPI. */
static void
launcher_prune_errors(void)
{
	static TimestampTz pruned_at = 0;
	TimestampTz now = GetCurrentTimestamp();
	Datum		minutes = Int32GetDatum(sluice_errors_retention);

	if (sluice_errors_retention < 0 || (pruned_at != 0 && !TimestampDifferenceExceeds(pruned_at, now, 60000)))
		return;
	pruned_at = now;
	if (SPI_execute_with_args("DELETE FROM sluice.error WHERE at < now() - make_interval(mins => $1)",
							  1, (Oid[]) {INT4OID}, &minutes, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "could not prune sluice.error");
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
						"  END, p.name, r.rolname, p.source->>'type',"
						"  CASE WHEN p.trigger = 'available_now' THEN 0"
						"       ELSE (extract(epoch FROM p.trigger::interval) * 1000)::int8 END,"
						"  p.min_workers, p.max_workers"
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
			p->files = strcmp(SPI_getvalue(tup, desc, 7), "csv") == 0;
			p->trigger_ms = DatumGetInt64(SPI_getbinval(tup, desc, 8, &isnull));
			p->min_workers = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
			p->max_workers = DatumGetInt32(SPI_getbinval(tup, desc, 10, &isnull));
		}
		launcher_prune_errors();
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

static LaunchedPipeline *
launched_find(int32 pipeline_id)
{
	ListCell   *lc;

	foreach(lc, launched)
	{
		LaunchedPipeline *lp = lfirst(lc);

		if (lp->pipeline_id == pipeline_id)
			return lp;
	}
	return NULL;
}

/*
 * Forget the workers of a pipeline that exited, freeing their slots if they
 * never got to do so themselves.  With terminate, tell the others to go.
 */
static void
launcher_reap(LaunchedPipeline *lp, bool terminate)
{
	ListCell   *lc;

	foreach(lc, lp->workers)
	{
		LaunchedWorker *lw = lfirst(lc);
		pid_t		pid;

		if (GetBackgroundWorkerPid(lw->handle, &pid) != BGWH_STOPPED)
		{
			if (terminate)
				TerminateBackgroundWorker(lw->handle);
			continue;
		}
		if (slot_never_connected(lw->slotno, lw->generation))
			lp->failed_starts++;
		else
			lp->failed_starts = 0;
		lp->died |= !lw->retiring;
		slot_release(lw->slotno, lw->generation);
		pfree(lw->handle);
		pfree(lw);
		lp->workers = foreach_delete_current(lp->workers, lc);
	}
}

static int
launcher_live_workers(LaunchedPipeline *lp)
{
	ListCell   *lc;
	int			live = 0;

	foreach(lc, lp->workers)
		live += ((LaunchedWorker *) lfirst(lc))->retiring ? 0 : 1;
	return live;
}

/* looks in a row with a backlog before a worker is added, and idle ones before one goes */
#define SCALE_UP_LOOKS 3
#define SCALE_DOWN_LOOKS 5
/* a worker goes only if the others would have been busy at most this share of the time */
#define SCALE_DOWN_BUSY 0.5

/*
 * The autoscaler: a look at a pipeline that may have from min_workers to
 * max_workers workers, once per trigger interval (at least a second).  A
 * look sees a backlog when the last plan left units unclaimed while its
 * batches ran (one committed since the last look, or one is in flight); it
 * is idle when nothing was left and one worker fewer would have been busy
 * at most half of the time.  A worker is added after SCALE_UP_LOOKS looks
 * in a row with a backlog, and one goes after SCALE_DOWN_LOOKS idle ones;
 * each change is told in sluice.errors.  Returns when to look next, in ms.
 */
static long
launcher_autoscale(LaunchedPipeline *lp, RunningPipeline *p, TimestampTz now)
{
	long		look_ms = (long) Max(p->trigger_ms, 1000);
	int			live = launcher_live_workers(lp);
	SluicePipelineStats st;
	double		elapsed_us;
	int64		busy;
	bool		ran;
	int			from = lp->desired;
	char	   *why = NULL;

	if (lp->looked_at != 0 && !TimestampDifferenceExceeds(lp->looked_at, now, (int) look_ms))
		return look_ms - TimestampDifferenceMilliseconds(lp->looked_at, now);
	memset(&st, 0, sizeof(st));
	(void) stats_get(p->id, &st);
	elapsed_us = (double) (now - lp->looked_at);
	busy = st.busy_us - lp->busy_us;
	ran = st.batches > lp->batches || slot_batches_in_flight(p->id) > 0;
	if (lp->looked_at != 0)
	{
		if (st.backlog > 0 && ran)
		{
			lp->backlog_looks++;
			lp->idle_looks = 0;
		}
		else if (st.backlog <= 0 && live > 1 && busy <= SCALE_DOWN_BUSY * (live - 1) * elapsed_us)
		{
			lp->idle_looks++;
			lp->backlog_looks = 0;
		}
		else
			lp->backlog_looks = lp->idle_looks = 0;
	}
	lp->looked_at = now;
	lp->batches = st.batches;
	lp->busy_us = st.busy_us;

	if (lp->backlog_looks >= SCALE_UP_LOOKS && lp->desired < p->max_workers)
	{
		lp->desired++;
		why = psprintf("A backlog of " INT64_FORMAT " %s waited at %d looks in a row, %ld ms apart, while its batches ran.",
					   st.backlog, p->files ? "files" : "messages", lp->backlog_looks, look_ms);
	}
	else if (lp->idle_looks >= SCALE_DOWN_LOOKS && lp->desired > p->min_workers)
	{
		lp->desired--;
		why = psprintf("Nothing waited at %d looks in a row, %ld ms apart, and %d worker%s would have been busy %.0f%% of the time.",
					   lp->idle_looks, look_ms, live - 1, live > 2 ? "s" : "", 100.0 * busy / ((live - 1) * elapsed_us));
	}
	if (why)
	{
		lp->backlog_looks = lp->idle_looks = 0;
		launcher_report(p->id, false, ERRCODE_SUCCESSFUL_COMPLETION,
						psprintf("pipeline \"%s\" scales %s from %d to %d worker%s", p->name,
								 lp->desired > from ? "up" : "down", from, lp->desired, lp->desired > 1 ? "s" : ""),
						why, NULL);
	}
	return look_ms;
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

	int			no_worker = 0;	/* running pipelines that have none yet */
	bool		starved = false;	/* one found no free slot for its first */

	foreach(lc, launched)
		((LaunchedPipeline *) lfirst(lc))->seen = false;
	foreach(lc, running)
	{
		LaunchedPipeline *lp = launched_find(((RunningPipeline *) lfirst(lc))->id);

		if (lp == NULL || lp->workers == NIL)
			no_worker++;
	}

	foreach(lc, running)
	{
		RunningPipeline *p = lfirst(lc);
		LaunchedPipeline *lp = launched_find(p->id);
		int			live;
		int			desired;

		if (lp == NULL)
		{
			lp = MemoryContextAllocZero(TopMemoryContext, sizeof(LaunchedPipeline));
			lp->pipeline_id = p->id;
			lp->owner = p->owner;
			lp->desired = p->available_now ? 1 : p->min_workers;
			launched = lappend(launched, lp);
		}
		lp->seen = true;

		/* REASSIGN OWNED gave the pipeline to another role: restart as that one */
		launcher_reap(lp, lp->owner != p->owner);
		if (lp->workers != NIL && lp->owner != p->owner)
			continue;
		lp->owner = p->owner;

		if (lp->failed_starts >= MAX_FAILED_STARTS)
		{
			launcher_report(p->id, true, ERRCODE_CONNECTION_FAILURE,
							psprintf("the worker of pipeline \"%s\" could not connect", p->name),
							psprintf("%d workers in a row exited before they connected to the database.",
									 lp->failed_starts),
							"The server log says why (the owner's CONNECT privilege or connection limit, max_connections, the database). "
							"Fix it, then call sluice.start().");
			lp->failed_starts = 0;
			continue;
		}

		/*
		 * alter_pipeline() may have moved the bounds.  An available-now
		 * pipeline drains with one worker, which stops it when it is done.
		 */
		desired = p->available_now ? 1 : Max(p->min_workers, Min(p->max_workers, lp->desired));
		if (desired != lp->desired && !p->available_now)
		{
			launcher_report(p->id, false, ERRCODE_SUCCESSFUL_COMPLETION,
							psprintf("pipeline \"%s\" scales %s from %d to %d worker%s", p->name,
									 desired > lp->desired ? "up" : "down", lp->desired, desired, desired > 1 ? "s" : ""),
							psprintf("Its workers now range from %d to %d.", p->min_workers, p->max_workers),
							NULL);
			lp->backlog_looks = lp->idle_looks = 0;
		}
		lp->desired = desired;
		if (p->max_workers > p->min_workers && !p->available_now)
			sleep_ms = Min(sleep_ms, Max(launcher_autoscale(lp, p, now), 10));
		stats_set_desired(p->id, p->owner, lp->desired);

		/* too many: the newest go after their batch in flight */
		live = launcher_live_workers(lp);
		for (int i = list_length(lp->workers) - 1; i >= 0 && live > lp->desired; i--)
		{
			LaunchedWorker *lw = list_nth(lp->workers, i);

			if (lw->retiring)
				continue;
			slot_retire(lw->slotno, lw->generation);
			lw->retiring = true;
			live--;
		}
		if (live >= lp->desired)
			continue;

		/* a worker died: back off after the last start */
		if (lp->died && lp->started_at != 0 &&
			!TimestampDifferenceExceeds(lp->started_at, now, sluice_restart_delay * 1000))
		{
			long		wait = sluice_restart_delay * 1000L -
				TimestampDifferenceMilliseconds(lp->started_at, now);

			sleep_ms = Min(sleep_ms, Max(wait, 10));
			continue;
		}
		lp->started_at = now;
		lp->died = false;

		for (; live < lp->desired; live++)
		{
			SluiceWorkerArgs args;
			LaunchedWorker *lw;
			BackgroundWorkerHandle *handle;
			uint64		generation;
			int			slotno;

			/* every running pipeline gets its first worker before any gets a second */
			if (lp->workers != NIL && slot_count(0, false) <= no_worker)
			{
				if (!lp->no_slot_reported)
					launcher_report(p->id, false, ERRCODE_WARNING,
									psprintf("pipeline \"%s\" runs %d of the %d workers it wants", p->name,
											 live, lp->desired),
									"Other running pipelines need the free sluice worker slots: each gets one before any gets more.",
									"Raise sluice.max_workers and restart the server.");
				lp->no_slot_reported = true;
				break;
			}
			slotno = slot_reserve(p->id, p->owner, 0, lp->desired, &generation);

			if (slotno < 0)
			{
				starved |= live == 0 && slot_count(p->id, false) == 0;
				/* held by a run_once() call, or all slots are taken: say so once */
				if (slot_count(p->id, false) == 0 && !lp->no_slot_reported)
					launcher_report(p->id, false, ERRCODE_WARNING,
									psprintf("pipeline \"%s\" waits for a free worker slot", p->name),
									psprintf("All %d sluice worker slots are taken.", sluice_max_workers),
									"Stop another pipeline, or raise sluice.max_workers and restart the server.");
				else if (live > 0 && !lp->no_slot_reported)
					launcher_report(p->id, false, ERRCODE_WARNING,
									psprintf("pipeline \"%s\" runs %d of the %d workers it wants", p->name,
											 live, lp->desired),
									psprintf("All %d sluice worker slots are taken.", sluice_max_workers),
									"Stop another pipeline, or raise sluice.max_workers and restart the server.");
				lp->no_slot_reported = true;
				break;
			}

			memset(&args, 0, sizeof(args));
			args.database = MyDatabaseId;
			args.owner = p->owner;
			args.pipeline_id = p->id;
			args.generation = generation;
			args.available_now = p->available_now;
			handle = sluice_start_worker(slotno, &args, MyProcPid);
			if (handle == NULL)
			{
				slot_release(slotno, generation);
				if (!lp->no_slot_reported)
					launcher_report(p->id, false, ERRCODE_WARNING,
									psprintf("pipeline \"%s\" waits for a background worker", p->name),
									"All background worker slots of the server are taken.",
									"Raise max_worker_processes and restart the server.");
				lp->no_slot_reported = true;
				sleep_ms = Min(sleep_ms, sluice_restart_delay * 1000L);
				break;
			}
			lp->no_slot_reported = false;
			lw = MemoryContextAllocZero(TopMemoryContext, sizeof(LaunchedWorker));
			lw->slotno = slotno;
			lw->generation = generation;
			lw->handle = handle;
			if (lp->workers == NIL)
				no_worker--;
			lp->workers = lappend(lp->workers, lw);
		}
	}

	/*
	 * A pipeline found no slot for its first worker while another has
	 * several: that one's newest goes after its batch (unless a worker is
	 * going already), and the slot it frees goes to the first, as the
	 * others wait while one has none.
	 */
	foreach(lc, launched)
	{
		LaunchedPipeline *lp = lfirst(lc);

		/* a slot is on its way already */
		if (launcher_live_workers(lp) < list_length(lp->workers))
			starved = false;
	}
	if (starved)
		foreach(lc, launched)
		{
			LaunchedPipeline *lp = lfirst(lc);

			if (lp->seen && launcher_live_workers(lp) > 1)
			{
				for (int i = list_length(lp->workers) - 1; i >= 0; i--)
				{
					LaunchedWorker *lw = list_nth(lp->workers, i);

					if (!lw->retiring)
					{
						slot_retire(lw->slotno, lw->generation);
						lw->retiring = true;
						break;
					}
				}
				sleep_ms = Min(sleep_ms, 1000);
				break;
			}
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

		if (slot->pipeline_id == 0 || slot->worker_pid == 0 || slot->waiter_pid != 0 || slot->warm)
			continue;			/* free, not started yet, or a run_once()'s */
		foreach(lc, running)
			if (((RunningPipeline *) lfirst(lc))->id == slot->pipeline_id)
				wanted = true;
		if (!wanted)
			kill(slot->worker_pid, SIGTERM);
	}
	LWLockRelease(sluice_shared->lock);

	/* forget pipelines that are no longer running, once their workers are gone */
	foreach(lc, launched)
	{
		LaunchedPipeline *lp = lfirst(lc);

		if (lp->seen)
			continue;
		launcher_reap(lp, false);
		if (lp->workers != NIL)
			continue;
		launched = foreach_delete_current(launched, lc);
		pfree(lp);
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

/*
 * sluice.c
 *		Module entry point: settings, shared memory hooks and the
 *		registration of the launcher.  Everything here runs in the
 *		postmaster while shared_preload_libraries is processed.
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "sluice.h"

PG_MODULE_MAGIC;

char	   *sluice_database = NULL;
int			sluice_max_workers = 4;
int			sluice_run_once_idle_timeout = 60000;
int			sluice_launcher_naptime = 10;
int			sluice_restart_delay = 5;
int			sluice_rescan_interval = 300;
int			sluice_max_replica_lag = -1;
double		sluice_wal_pressure = 0.8;
char	   *sluice_crash_at = NULL;
int			sluice_max_retry_delay = 60;
int			sluice_errors_retention = 7 * 24 * 60;
bool		sluice_notify_details = false;
int			sluice_window_memory = 256 * 1024;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static Size
sluice_shmem_size(void)
{
	return add_size(offsetof(SluiceShared, slots),
					mul_size(sluice_max_workers, sizeof(SluiceSlot)));
}

static void
sluice_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sluice_shmem_size());
	RequestNamedLWLockTranche("sluice", 1);
}

static void
sluice_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	sluice_shared = ShmemInitStruct("sluice", sluice_shmem_size(), &found);
	if (!found)
	{
		memset(sluice_shared, 0, sluice_shmem_size());
		sluice_shared->lock = &(GetNamedLWLockTranche("sluice"))->lock;
		ConditionVariableInit(&sluice_shared->batch_committed);
	}
	LWLockRelease(AddinShmemInitLock);
}

static bool
check_crash_at(char **newval, void **extra, GucSource source)
{
	static const char *const stages[] = {
		"", "after_plan", "after_read", "after_sink", "before_commit", "after_commit"
	};

	for (int i = 0; i < lengthof(stages); i++)
		if (strcmp(*newval, stages[i]) == 0)
			return true;
	GUC_check_errdetail("Valid stages are after_plan, after_read, after_sink, before_commit and after_commit.");
	return false;
}

void		_PG_init(void);

void
_PG_init(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sluice must be loaded via shared_preload_libraries"),
				 errhint("Add sluice to shared_preload_libraries in postgresql.conf and restart the server.")));

	DefineCustomStringVariable("sluice.database",
							   "Database whose pipelines the sluice launcher runs.",
							   NULL, &sluice_database, "postgres",
							   PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.max_workers",
							"Maximum number of sluice pipeline workers running at once.",
							"Each worker of a running pipeline and each sluice.run_once() call uses one; "
							"they also count against max_worker_processes.",
							&sluice_max_workers, 4, 1, 1024,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.launcher_naptime",
							"Longest time the launcher sleeps between two looks at the catalog.",
							"The launcher is woken at once by start, stop and worker exits; this is a safety net.",
							&sluice_launcher_naptime, 10, 1, 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.restart_delay",
							"Least time between two starts of a pipeline's worker after it died.",
							NULL, &sluice_restart_delay, 5, 0, 3600,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.rescan_interval",
							"Time between two full listings of a CSV source's directory.",
							"In between, an inotify watch names the files that appeared or changed.",
							&sluice_rescan_interval, 300, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.max_replica_lag",
							"Replication lag past which running pipelines slow down.",
							"The most WAL a replica of pg_stat_replication may have left to replay; -1 for no limit.",
							&sluice_max_replica_lag, -1, -1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomRealVariable("sluice.wal_pressure",
							 "Fraction of max_wal_size past which running pipelines slow down.",
							 "The WAL written since the last checkpoint began, over max_wal_size; 0 for never.",
							 &sluice_wal_pressure, 0.8, 0.0, 1.0,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.max_retry_delay",
							"Longest wait before a batch that failed for a while is tried again.",
							"Transient failures are retried after 1 s, then twice as long each time, up to this.",
							&sluice_max_retry_delay, 60, 1, 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.errors_retention",
							"How long sluice.errors keeps an error; -1 for ever.",
							"The launcher deletes older errors, once a minute.",
							&sluice_errors_retention, 7 * 24 * 60, -1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN, NULL, NULL, NULL);
	DefineCustomBoolVariable("sluice.notify_details",
							 "Whether sluice_progress notifications carry a batch's numbers and a failure's SQLSTATE.",
							 "Any role may LISTEN to any channel: off, they name the pipeline, the batch and its status only.",
							 &sluice_notify_details, false,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.window_memory",
							"Memory a window sink's batch may hold partial aggregates in.",
							"A batch whose partials outgrow it is folded in parts, each merged into the state table.",
							&sluice_window_memory, 256 * 1024, 64, MAX_KILOBYTES,
							PGC_SUSET, GUC_UNIT_KB, NULL, NULL, NULL);
	DefineCustomIntVariable("sluice.run_once_idle_timeout",
							"How long the worker of a sluice.run_once() call waits for the next call before it exits.",
							"The next sluice.run_once() of the pipeline finds it connected; 0 for exiting at once. "
							"While it waits it holds a connection, a background worker and a sluice worker slot, which it gives up when another worker needs one.",
							&sluice_run_once_idle_timeout, 60000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomStringVariable("sluice.crash_at",
							   "Testing only: a worker kills itself with SIGKILL at this stage of the first attempt of each batch.",
							   "One of after_plan, after_read, after_sink, before_commit, after_commit; empty for never.",
							   &sluice_crash_at, "",
							   PGC_SUSET, GUC_NOT_IN_SAMPLE, check_crash_at, NULL, NULL);
	MarkGUCPrefixReserved("sluice");

	if (IsBinaryUpgrade)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = sluice_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = sluice_shmem_startup;
	roles_install_hook();

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "sluice");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "sluice_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "sluice launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "sluice launcher");
	RegisterBackgroundWorker(&worker);
}

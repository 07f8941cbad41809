/*
 * shmem.c
 *		The worker slot array in shared memory, and waking the launcher.
 *
 * All slot fields are read and written under sluice_shared->lock.  Shared
 * memory is reset by a crash restart, so a slot never outlives the
 * processes that use it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/timestamp.h"

#include "sluice.h"

SluiceShared *sluice_shared = NULL;

static bool wake_at_commit = false;
static bool xact_callback_registered = false;

/*
 * A slot that a reservation may take: a free one, or one without a waiter
 * whose worker idles warm (it is woken to see that it lost it) or exits.
 */
static bool
slot_takeable(SluiceSlot *slot)
{
	return slot->pipeline_id == 0 || ((slot->warm || slot->leaving) && slot->waiter_pid == 0);
}

/* in which order slot_reserve() takes takeable slots */
static int
slot_rank(SluiceSlot *slot, int32 pipeline_id)
{
	return slot->pipeline_id == pipeline_id ? 0 : slot->pipeline_id == 0 ? 1 : 2;
}

/*
 * Reserve a slot for a pipeline, which may hold max_per_pipeline slots at
 * most.  Returns -1 when it holds that many already (its workers run it,
 * or are about to), when a run_once() call holds one, or when no slot is
 * free; the caller tells which by slot_count().  The pipeline's own warm
 * slot is taken first, so that it has one warm worker at most, then a free
 * one, then another pipeline's warm one.
 */
int
slot_reserve(int32 pipeline_id, Oid owner, pid_t waiter, int max_per_pipeline, uint64 *generation)
{
	int			found = -1;
	int			held = 0;
	bool		run_once = false;

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];

		if (slot->pipeline_id == pipeline_id && !slot_takeable(slot))
		{
			held++;
			run_once |= slot->waiter_pid != 0;
		}
		if (slot_takeable(slot) && (found < 0 || slot_rank(slot, pipeline_id) <
									slot_rank(&sluice_shared->slots[found], pipeline_id)))
			found = i;
	}
	if (held >= max_per_pipeline || run_once)
		found = -1;
	if (found >= 0)
	{
		SluiceSlot *slot = &sluice_shared->slots[found];

		if (slot->latch)
			SetLatch(slot->latch);	/* a warm worker: go */
		memset(slot, 0, sizeof(SluiceSlot));
		slot->pipeline_id = pipeline_id;
		slot->owner = owner;
		slot->waiter_pid = waiter;
		slot->waiter_latch = waiter ? MyLatch : NULL;
		slot->request = waiter ? 1 : 0;
		/* unique while the server runs: a warm worker must never see its own come back */
		slot->generation = ++sluice_shared->next_generation;
		*generation = slot->generation;
	}
	LWLockRelease(sluice_shared->lock);
	return found;
}

/*
 * Hand a run_once() request to the pipeline's warm worker, if it has one
 * that connected as owner with the settings that the role and database have
 * now (ALTER ROLE ... SET applies at connection); returns its slot, or -1.
 * The worker's batches of this request are counted from zero.
 */
int
slot_claim_warm(int32 pipeline_id, Oid owner, uint64 settings_hash, uint64 *generation, uint64 *request)
{
	int			found = -1;

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];

		if (slot->pipeline_id != pipeline_id)
			continue;
		if (slot->waiter_pid != 0)
		{
			found = -1;			/* another run_once() runs it */
			break;
		}
		if (slot->warm && slot->owner == owner && slot->settings_hash == settings_hash && !slot->retire)
			found = i;
	}
	if (found >= 0)
	{
		SluiceSlot *slot = &sluice_shared->slots[found];

		slot->warm = false;
		slot->waiter_pid = MyProcPid;
		slot->waiter_latch = MyLatch;
		slot->finished = false;
		slot->failed = false;
		slot->batches_committed = 0;
		*generation = slot->generation;
		*request = ++slot->request;
		SetLatch(slot->latch);
	}
	LWLockRelease(sluice_shared->lock);
	return found;
}

/* Ask the worker of a slot to exit once its batch in flight is done. */
void
slot_retire(int slotno, uint64 generation)
{
	SluiceSlot *slot = &sluice_shared->slots[slotno];

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (slot->generation == generation)
	{
		slot->retire = true;
		if (slot->latch)
			SetLatch(slot->latch);
	}
	LWLockRelease(sluice_shared->lock);
}

/* Tell the warm run_once() worker of a pipeline, if it has one, to exit. */
void
slot_retire_warm(int32 pipeline_id)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];

		if (slot->pipeline_id == pipeline_id && slot->warm && slot->waiter_pid == 0)
		{
			slot->retire = true;
			SetLatch(slot->latch);
		}
	}
	LWLockRelease(sluice_shared->lock);
}

/*
 * The batches the live workers of a pipeline hold, but for mine (NULL:
 * none), into elems if not NULL; returns how many.
 */
static int
slot_held_batches(int32 pipeline_id, SluiceSlot *mine, Datum *elems)
{
	int			n = 0;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];

		if (slot != mine && slot->pipeline_id == pipeline_id && slot->worker_pid != 0 &&
			slot->current_batch > 0)
		{
			if (elems)
				elems[n] = Int64GetDatum(slot->current_batch);
			n++;
		}
	}
	LWLockRelease(sluice_shared->lock);
	return n;
}

/*
 * How many slots a pipeline holds (pipeline_id 0: how many may be
 * reserved); with live, only those whose worker runs.  A warm worker
 * without a waiter holds its slot only until someone needs it.
 */
int
slot_count(int32 pipeline_id, bool live)
{
	int			n = 0;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &sluice_shared->slots[i];

		if (pipeline_id == 0 ? slot_takeable(slot)
			: slot->pipeline_id == pipeline_id && !slot_takeable(slot) && (!live || slot->worker_pid != 0))
			n++;
	}
	LWLockRelease(sluice_shared->lock);
	return n;
}

/* How many workers of a pipeline hold a batch now. */
int
slot_batches_in_flight(int32 pipeline_id)
{
	return slot_held_batches(pipeline_id, NULL, NULL);
}

/*
 * The batches that the other live workers of a pipeline hold, as an int8[]:
 * a planner does not take them again, and a batch waiting for its turn to
 * commit waits for them.
 */
Datum
slot_leases(int32 pipeline_id, SluiceSlot *mine)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(sluice_max_workers, 1));
	int			n = slot_held_batches(pipeline_id, mine, elems);

	return PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/* Free a slot, unless it was reserved again meanwhile. */
void
slot_release(int slotno, uint64 generation)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	if (sluice_shared->slots[slotno].generation == generation)
		sluice_shared->slots[slotno].pipeline_id = 0;
	LWLockRelease(sluice_shared->lock);
}

/*
 * Whether the worker started for this reservation exited before it could
 * connect (the owner cannot log in, the database is gone, too many
 * connections).  False when the slot was reserved again since: we cannot
 * tell, and a pipeline is only failed on evidence.
 */
bool
slot_never_connected(int slotno, uint64 generation)
{
	bool		never;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	never = sluice_shared->slots[slotno].generation == generation &&
		!sluice_shared->slots[slotno].connected;
	LWLockRelease(sluice_shared->lock);
	return never;
}

/*
 * A pipeline's live values, under the lock held exclusively; owner is who
 * may see them (its workers connect as the owner).  When the table is
 * full, the pipeline looked at longest ago makes room.
 */
static SluicePipelineStats *
stats_entry(int32 pipeline_id, Oid owner)
{
	SluicePipelineStats *entry = NULL;

	for (int i = 0; i < SLUICE_MAX_PIPELINE_STATS; i++)
	{
		SluicePipelineStats *s = &sluice_shared->stats[i];

		if (s->pipeline_id == pipeline_id)
		{
			entry = s;
			break;
		}
		if (entry == NULL || (entry->pipeline_id != 0 &&
							  (s->pipeline_id == 0 || s->updated_at < entry->updated_at)))
			entry = s;
	}
	if (entry->pipeline_id != pipeline_id)
	{
		memset(entry, 0, sizeof(*entry));
		entry->pipeline_id = pipeline_id;
	}
	entry->owner = owner;
	entry->updated_at = GetCurrentTimestamp();
	return entry;
}

void
stats_set_backlog(int32 pipeline_id, int64 backlog)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	stats_entry(pipeline_id, GetSessionUserId())->backlog = backlog;
	LWLockRelease(sluice_shared->lock);
}

void
stats_set_throttled(int32 pipeline_id, const char *why)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	strlcpy(stats_entry(pipeline_id, GetSessionUserId())->throttled_by, why ? why : "",
			sizeof(((SluicePipelineStats *) 0)->throttled_by));
	LWLockRelease(sluice_shared->lock);
}

/* A worker committed a batch that took busy_us, its plan included. */
void
stats_add_batch(int32 pipeline_id, int64 busy_us)
{
	SluicePipelineStats *s;

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	s = stats_entry(pipeline_id, GetSessionUserId());
	s->batches++;
	s->busy_us += busy_us;
	LWLockRelease(sluice_shared->lock);
}

/* The autoscaler's choice (the launcher). */
void
stats_set_desired(int32 pipeline_id, Oid owner, int desired)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	stats_entry(pipeline_id, owner)->desired_workers = desired;
	LWLockRelease(sluice_shared->lock);
}

/* A batch failed for a while and is tried again at next_retry_at (0, 0: it committed). */
void
stats_set_retry(int32 pipeline_id, int attempts, TimestampTz next_retry_at)
{
	SluicePipelineStats *s;

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	s = stats_entry(pipeline_id, GetSessionUserId());
	s->attempts = attempts;
	s->next_retry_at = next_retry_at;
	LWLockRelease(sluice_shared->lock);
}

/* A copy of a pipeline's live values; false if nothing looked at it yet. */
bool
stats_get(int32 pipeline_id, SluicePipelineStats *stats)
{
	bool		found = false;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	for (int i = 0; i < SLUICE_MAX_PIPELINE_STATS && !found; i++)
		if (sluice_shared->stats[i].pipeline_id == pipeline_id)
		{
			*stats = sluice_shared->stats[i];
			found = true;
		}
	LWLockRelease(sluice_shared->lock);
	return found;
}

/*
 * The owners of pipelines, for DROP ROLE in other databases than the
 * pipelines'.  The launcher sets them from the catalog at every look;
 * create_pipeline() adds its owner at once, before it commits.
 */
void
owners_set(List *owners)
{
	ListCell   *lc;

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	sluice_shared->owners_known = true;
	sluice_shared->n_owners = 0;
	sluice_shared->owners_overflow = list_length(owners) > SLUICE_MAX_OWNERS;
	foreach(lc, owners)
		if (sluice_shared->n_owners < SLUICE_MAX_OWNERS)
			sluice_shared->owners[sluice_shared->n_owners++] = lfirst_oid(lc);
	LWLockRelease(sluice_shared->lock);
}

void
owners_add(Oid owner)
{
	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < sluice_shared->n_owners; i++)
		if (sluice_shared->owners[i] == owner)
			owner = InvalidOid;
	if (OidIsValid(owner))
	{
		if (sluice_shared->n_owners < SLUICE_MAX_OWNERS)
			sluice_shared->owners[sluice_shared->n_owners++] = owner;
		else
			sluice_shared->owners_overflow = true;
	}
	LWLockRelease(sluice_shared->lock);
}

/* whether the launcher has read the owners since the server started */
bool
owners_known(void)
{
	bool		known;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	known = sluice_shared->owners_known;
	LWLockRelease(sluice_shared->lock);
	return known;
}

bool
owners_contains(Oid owner)
{
	bool		found;

	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	found = sluice_shared->owners_overflow;
	for (int i = 0; i < sluice_shared->n_owners && !found; i++)
		found = sluice_shared->owners[i] == owner;
	LWLockRelease(sluice_shared->lock);
	return found;
}

static void
wake_launcher_now(void)
{
	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	if (sluice_shared->launcher_latch)
		SetLatch(sluice_shared->launcher_latch);
	LWLockRelease(sluice_shared->lock);
}

static void
wake_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && wake_at_commit)
		wake_launcher_now();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PARALLEL_COMMIT || event == XACT_EVENT_PARALLEL_ABORT)
		wake_at_commit = false;
}

/*
 * Wake the launcher when the current transaction commits, so that it sees
 * what start(), stop() and friends changed, and a rolled-back call starts
 * or stops nothing.
 */
void
sluice_wake_launcher(void)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(wake_xact_callback, NULL);
		xact_callback_registered = true;
	}
	wake_at_commit = true;
}

/*
 * Register a pipeline worker for a reserved slot.  Returns NULL when no
 * background worker slot is free.
 */
BackgroundWorkerHandle *
sluice_start_worker(int slotno, SluiceWorkerArgs *args, pid_t notify_pid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "sluice");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "sluice_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "sluice worker for pipeline %d", args->pipeline_id);
	snprintf(worker.bgw_type, BGW_MAXLEN, "sluice worker");
	worker.bgw_main_arg = Int32GetDatum(slotno);
	worker.bgw_notify_pid = notify_pid;
	StaticAssertStmt(sizeof(SluiceWorkerArgs) <= BGW_EXTRALEN, "worker arguments too long");
	memcpy(worker.bgw_extra, args, sizeof(SluiceWorkerArgs));

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		return NULL;
	return handle;
}

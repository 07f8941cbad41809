/*
 * sluice.h
 *		Shared declarations of the sluice extension: settings, the shared
 *		memory slot array, the background worker entry points and the
 *		micro-batch machinery.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include "postgres.h"

#include "commands/copy.h"
#include "executor/tuptable.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "storage/itemptr.h"
#include "storage/condition_variable.h"
#include "storage/lwlock.h"
#include "storage/latch.h"
#include "utils/timestamp.h"

/* settings (sluice.c) */
extern char *sluice_database;
extern int	sluice_max_workers;
extern int	sluice_launcher_naptime;
extern int	sluice_restart_delay;
extern int	sluice_rescan_interval;
extern int	sluice_max_replica_lag;
extern double sluice_wal_pressure;
extern char *sluice_crash_at;
extern int	sluice_max_retry_delay;
extern int	sluice_errors_retention;
extern bool sluice_notify_details;
extern int	sluice_window_memory;
extern int	sluice_run_once_idle_timeout;

/* sluice's own SQLSTATEs (class SL), all transient */
#define ERRCODE_SLUICE_FILE_CHANGED MAKE_SQLSTATE('S', 'L', '0', '0', '1')
#define ERRCODE_SLUICE_CATALOG_INCOMPLETE MAKE_SQLSTATE('S', 'L', '0', '0', '2')
#define ERRCODE_SLUICE_OUT_OF_TURN MAKE_SQLSTATE('S', 'L', '0', '0', '3')

#define SLUICE_MSG_LEN 1024

/*
 * One slot per worker that runs or may run a pipeline.  A slot is reserved
 * for a pipeline by whoever starts its worker (the launcher, or a backend
 * running sluice.run_once()), which makes "one worker per pipeline" a single
 * check under the lock.  The worker fills in its results; the slot is freed
 * by the last of the worker and the waiting backend to let go of it.
 *
 * The worker of a run_once() call stays warm for a while after it drained
 * (sluice.run_once_idle_timeout): the next run_once() of the pipeline hands
 * it a request (request > served) rather than starting a worker.  A warm
 * or leaving slot without a waiter counts as free: whoever needs it
 * reserves it anew, and its worker, woken, sees the new generation and
 * exits, touching it no more.
 */
typedef struct SluiceSlot
{
	int32		pipeline_id;	/* 0 when the slot is free */
	Oid			owner;			/* the pipeline's owner, as the worker connects */
	uint64		generation;		/* changes on every reservation */
	pid_t		worker_pid;		/* 0 until the worker attached, and after */
	pid_t		waiter_pid;		/* run_once caller, 0 if none */
	Latch	   *waiter_latch;	/* its latch, set when its request is served */
	uint64		request;		/* run_once requests handed to the worker */
	uint64		taken;			/* ... the last it began */
	uint64		served;			/* ... and the last it finished */
	bool		warm;			/* the worker idles, waiting for a request */
	bool		leaving;		/* the worker served its last request and exits */
	uint64		settings_hash;	/* of the role and database settings it connected with */
	bool		worker_done;	/* the worker attached and has exited */
	bool		connected;		/* the worker connected to its database */
	bool		finished;		/* ... and it ended its loop normally */
	int64		batches_committed;
	int64		current_batch;	/* the batch it holds (its lease), from its plan on; 0 for none */
	bool		retire;			/* the launcher scales down: exit after the batch in flight */
	Latch	   *latch;			/* the worker's, to tell it so */
	bool		failed;
	int			sqlerrcode;
	char		message[SLUICE_MSG_LEN];
	char		detail[SLUICE_MSG_LEN];
	char		hint[SLUICE_MSG_LEN];
	char		context[SLUICE_MSG_LEN];
} SluiceSlot;

/*
 * What shared memory remembers of a pipeline beyond its worker's life, for
 * sluice.pipelines: the backlog its source saw at its last plan.
 */
#define SLUICE_MAX_PIPELINE_STATS 1024

typedef struct SluicePipelineStats
{
	int32		pipeline_id;	/* 0 when unused */
	Oid			owner;			/* who may see it (and pg_read_all_stats) */
	int64		backlog;
	char		throttled_by[128];	/* why backpressure holds it back, "" if nothing */
	int64		batches;		/* committed by its workers since the server started */
	int64		busy_us;		/* time its workers spent in batches, planning included */
	int			desired_workers;	/* the launcher's autoscaler's choice, 0 before it chose */
	int			attempts;		/* of the batch that failed for a while, 0 once one commits */
	TimestampTz next_retry_at;	/* when it is tried again, 0 if it is not waiting */
	TimestampTz updated_at;
} SluicePipelineStats;

/* distinct pipeline owners that shared memory remembers, for DROP ROLE */
#define SLUICE_MAX_OWNERS 1024

typedef struct SluiceShared
{
	LWLock	   *lock;
	uint64		next_generation;	/* of slot reservations */
	ConditionVariable batch_committed;	/* broadcast after every batch's commit */
	Latch	   *launcher_latch;
	bool		owners_known;	/* the launcher has read them since startup */
	int			n_owners;
	bool		owners_overflow;	/* more owners than fit: assume any role owns some */
	Oid			owners[SLUICE_MAX_OWNERS];
	SluicePipelineStats stats[SLUICE_MAX_PIPELINE_STATS];
	SluiceSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} SluiceShared;

extern SluiceShared *sluice_shared;

/* what a worker is told at launch, through bgw_extra */
typedef struct SluiceWorkerArgs
{
	Oid			database;
	Oid			owner;
	int32		pipeline_id;
	uint64		generation;
	bool		available_now;	/* drain what is there, then exit */
	bool		run_once;		/* started by sluice.run_once() */
} SluiceWorkerArgs;

/* shmem.c */
extern void sluice_shmem_init(void);
extern int	slot_reserve(int32 pipeline_id, Oid owner, pid_t waiter, int max_per_pipeline,
						 uint64 *generation);
extern int	slot_claim_warm(int32 pipeline_id, Oid owner, uint64 settings_hash, uint64 *generation,
							uint64 *request);
extern void slot_retire(int slotno, uint64 generation);
extern void slot_retire_warm(int32 pipeline_id);
extern Datum slot_leases(int32 pipeline_id, SluiceSlot *mine);
extern int	slot_batches_in_flight(int32 pipeline_id);
extern int	slot_count(int32 pipeline_id, bool live);
extern void slot_release(int slotno, uint64 generation);
extern bool slot_never_connected(int slotno, uint64 generation);
extern void stats_set_backlog(int32 pipeline_id, int64 backlog);
extern void stats_set_throttled(int32 pipeline_id, const char *why);
extern void stats_add_batch(int32 pipeline_id, int64 busy_us);
extern void stats_set_desired(int32 pipeline_id, Oid owner, int desired);
extern void stats_set_retry(int32 pipeline_id, int attempts, TimestampTz next_retry_at);
extern bool stats_get(int32 pipeline_id, SluicePipelineStats *stats);
extern void owners_set(List *owners);
extern void owners_add(Oid owner);
extern bool owners_contains(Oid owner);
extern bool owners_known(void);
extern void sluice_wake_launcher(void);
extern struct BackgroundWorkerHandle *sluice_start_worker(int slotno, SluiceWorkerArgs *args,
														  pid_t notify_pid);

/* catalog.c */
extern bool extension_version_ok(char **version);
extern void check_extension_version(void);
extern uint64 catalog_exec(const char *sql, int nargs, Oid *types, Datum *values,
						   const char *nulls, int expected_rc);
extern uint64 pinned_exec(const char *sql, int nargs, Oid *types, Datum *values,
						  const char *nulls, int expected_rc);
extern char *spi_text(int row, int col);
extern int64 spi_int64(int row, int col);
extern Datum spi_datum(int row, int col, bool *isnull);

/* row versions found as a relation was scanned, for "WHERE ctid = ANY ($n)" */
typedef struct TidList
{
	ItemPointerData *tids;
	int64		n;
	int64		max;
	MemoryContext cxt;			/* where the list grows; the current context if NULL */
} TidList;

extern void tid_list_push(TidList *l, ItemPointer tid);
extern Datum tid_array(const ItemPointerData *tids, int64 n);
extern char *jsonb_get_text(Jsonb *j, const char *key);
extern int64 jsonb_get_int64(Jsonb *j, const char *key, int64 missing);
extern bool jsonb_get_bool(Jsonb *j, const char *key, bool missing);
extern List *jsonb_get_text_list(Jsonb *j, const char *key);

/* xact.c */
extern void xact_begin(const char *activity);
extern void xact_end(void);
extern void xact_no_wait(void);
extern ErrorData *xact_catch(MemoryContext cxt);

/* api.c */
extern void check_single_select(const char *query);

/* roles.c */
extern void roles_install_hook(void);

/* launcher.c, worker.c */
extern uint64 settings_hash(Oid role);
extern PGDLLEXPORT void sluice_launcher_main(Datum arg);
extern PGDLLEXPORT void sluice_worker_main(Datum arg);

/* batch.c */
typedef enum BatchOutcome
{
	BATCH_NONE,					/* nothing to read */
	BATCH_COMMITTED,			/* a batch committed */
	BATCH_FAILED,				/* a batch failed; the failure is recorded */
	BATCH_RETRY,				/* a batch failed for a while; try it again later */
	BATCH_STOP					/* the pipeline is gone or no longer running */
} BatchOutcome;

/* a column the source delivers, its type parsed by PostgreSQL's parser */
typedef struct SourceColumn
{
	char	   *name;
	Oid			typid;
	int32		typmod;
} SourceColumn;

struct SourceRoutine;
struct SinkRoutine;

/*
 * One row of sluice.pipeline, read at the start of each transaction of a
 * batch, in the batch's memory.
 */
typedef struct Pipeline
{
	int32		id;
	char	   *name;
	char	   *state;
	int64		trigger_ms;		/* 0 for available_now */
	Jsonb	   *source;			/* the source's options */
	Jsonb	   *sink;			/* the sink's options, as sluice._sink() gives them */
	Oid			target;			/* the sink's table, if it has one */
	char	   *transform;
	List	   *columns;		/* of SourceColumn */
	bool		isolate_rows;	/* on_error is 'reject' or 'skip' */
	bool		keep_rejects;	/* on_error is 'reject' */
	bool		backpressure;	/* batches sized from the last ones' speed (flow.c) */
	int			max_retries;	/* transient failures in a row before it fails; -1: no end */
	bool		dedupe;			/* rows whose key was seen are dropped before the sink (dedupe.c) */
	const struct SourceRoutine *source_routine;
	const struct SinkRoutine *sink_routine;
} Pipeline;

/* the batch in flight */
typedef struct Batch
{
	int64		id;
	int			attempts;
	/* counted by the source as it reads */
	uint64		rows;
	int64		bytes;
	int32		units;			/* files, partitions */
	const char *unit;			/* what is being read, for the error context */
	int64		size;			/* in the source's measure (flow.c), set by its read */
	bool		observed;		/* its speed went to flow.c before it committed */
	/* a sink that folds rows as they are parsed takes them here, not in a relation */
	struct _DestReceiver *dest;
	void	   *sink_state;		/* what that sink folded, for its write */
	/* what deduplication saw of the batch's event times, before it dropped rows */
	struct EventTimes *seen;
} Batch;

/* the event times of a batch's rows, and the rows late for its watermark */
typedef struct EventTimes
{
	int64		n;				/* rows with an event time */
	TimestampTz min;
	TimestampTz max;
	int128		sum;			/* microseconds since 2000 */
	int64		late;			/* rows dropped by the watermark (or with no event time) */
} EventTimes;

typedef struct PipelineRun
{
	int32		id;
	char	   *name;
	bool		run_once;
	bool		available_now;
	int64		trigger_ms;
	bool		isolate_rows;	/* on_error is 'reject' or 'skip' */
	SluiceSlot *slot;
	MemoryContext run_cxt;		/* lives as long as the worker: source state */
	MemoryContext batch_cxt;	/* reset after every batch and every retry */
	void	   *source_state;
	int64		backlog;		/* the source's backlog once the batch in flight commits */
	bool		catalog_whole;	/* checked before the first batch (pg_restore) */
	bool		backpressure;
	int64		size_limit;		/* the next batch's, in the source's measure; 0 until known */
	bool		throttled;		/* the database's pressure held the last plan back */
	int			max_retries;	/* as the catalog said at the last plan */
	int			retries;		/* transient failures in a row */
	int			attempts;		/* of the batch in flight */
	long		retry_ms;		/* how long to wait before the next try */
	/* the source's routine, once it is open (kept: after a commit the catalog is gone) */
	const struct SourceRoutine *source;
	/* run_once(): the next batch, planned in the transaction of the one before */
	int64		next_batch;
	int			next_attempts;
	double		next_plan_ms;
} PipelineRun;

extern BatchOutcome batch_run(PipelineRun *run);

/* watermark.c */
extern bool event_time_get(TupleTableSlot *row, int att, bool is_tz, TimestampTz *et);
extern void event_times_add(EventTimes *e, TimestampTz et);
extern TimestampTz event_times_avg(EventTimes *e);
extern TimestampTz watermark_next(TimestampTz w, bool *has_w, EventTimes *e, Datum delay, bool has_delay);

/* dedupe.c */
extern void dedupe_batch(Pipeline *p, Batch *b, Oid input);

/* flow.c */
extern int64 flow_limit(PipelineRun *run, char **throttled_by);
extern void flow_observe(PipelineRun *run, int64 size, double ms, int64 backlog);
extern void crash_point(const char *stage, int attempts);
extern Oid	temp_relid(const char *name);
extern Oid	create_stage(List *columns);
extern List *source_columns(Jsonb *source);

/* rejects.c */
typedef struct StagedRow
{
	ItemPointerData tid;
	int			fileno;
	int64		line;
} StagedRow;

typedef struct RejectedRow
{
	char	   *file;
	int64		line;
	char	   *position;		/* where in a stream, as JSON, instead of file and line */
	char	   *raw;
	char	   *sqlstate;
	char	   *message;
} RejectedRow;

typedef struct Rejects
{
	bool		keep;			/* 'reject' keeps the rows, 'skip' counts them */
	int64		count;
	List	   *rows;			/* of RejectedRow, when kept */
	List	   *files;			/* paths, by file number */
	StagedRow  *staged;			/* rows in the staging table, by tid */
	int			nstaged;
	int			maxstaged;
	MemoryContext cxt;			/* where the rejected rows are kept */
	/* a stream's source: where line n of what it fed COPY came from, as JSON */
	char	   *(*locate) (void *arg, int64 line);
	void	   *locate_arg;
} Rejects;

extern bool rejects_is_row_error(int sqlerrcode);
extern uint64 rejects_copy_file(Rejects *rj, Oid stage, List *attnames, List *options,
								const char *path, copy_data_source_cb data_source);
extern void rejects_set_aside(Rejects *rj, const char *position, const char *raw, ErrorData *edata);
extern int64 rejects_write(Rejects *rj, const char *all_sql, const char *row_sql, Oid input,
						   Oid stage, int64 batch_id, bool backwards);
extern void rejects_save(Rejects *rj, int32 pipeline_id, int64 batch_id);

#endif							/* SLUICE_H */

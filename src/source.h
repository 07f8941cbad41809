/*
 * source.h
 *		The interface between the micro-batch (batch.c) and a source.
 *
 * A source is a SourceRoutine, as a table access method is an
 * IndexAmRoutine: batch.c calls it at fixed points of a batch and knows
 * nothing of files or streams.  A new source is a new file in src/sources/
 * and a line in source_routine().
 *
 *	open		once per worker: the source's state from its catalog options,
 *				allocated in the worker's long-lived memory (cxt), which
 *				lives until the worker exits; "waits" tells that the worker
 *				waits for new data until stopped, so the source may set up a
 *				way to hear of it (not for run_once, which drains and exits)
 *	plan		in the plan transaction, under the pipeline's plan lock: claim
 *				the next slice for batch_id within the source's limits and
 *				within *limit (backpressure's, in the source's measure of
 *				size, see initial_size; 0 for none, and at least one file or
 *				message whatever it is; the source may raise it, and leaves
 *				there what it applied), and record it (write-ahead), as the
 *				extension's owner; returns
 *				how many units (files, messages) it claimed, 0 when idle, and
 *				sets *backlog to what it has not read yet, the slice just
 *				claimed included; a source that keeps its slice in the
 *				batch's row (sluice.batch.slice, {"start": ..., "end": ...}
 *				as Spark shows offsets) sets *slice.  An idle plan must
 *				write nothing (but for the first sight of a stream's
 *				partitions, whose starting offsets it records).
 *	read		in the batch transaction, as the pipeline's owner: read the
 *				slice of the batch into the relation "into", columns in
 *				source order, setting b->size; with rj, set bad rows aside
 *				instead of failing; with b->dest, hand each row to it instead
 *				("into" then only gives the rows' shape: copy_to_receiver())
 *	commit		in the batch transaction, after the sink: advance the offsets
 *	after_commit	after the batch transaction committed, outside any
 *				transaction (may be NULL)
 *	describe	the offsets of one batch as jsonb, for sluice.progress()
 *	offsets_missing	whether offsets the source keeps outside the file and
 *				batch logs are missing although batches committed, as while
 *				pg_restore loads a dump (may be NULL)
 *	owner_refused	why the owner may no longer run the source (NULL if
 *				it may), with a hint; asked by the launcher before it starts
 *				a worker
 *	plan_ahead	whether the next batch may be planned in the transaction
 *				of the one before it, before that one commits (may be NULL:
 *				never): its plan must not act on what that commit makes
 *				final
 *	initial_size	the limit of a worker's first batch under backpressure,
 *				in the source's measure of a batch's size (bytes of files,
 *				Kafka offsets), which plan's limit and b->size use too
 */
#ifndef SLUICE_SOURCE_H
#define SLUICE_SOURCE_H

#include "tcop/dest.h"
#include "utils/jsonb.h"
#include "utils/rel.h"

#include "sluice.h"

typedef struct SourceRoutine
{
	const char *type;
	void	   *(*open) (Pipeline *p, MemoryContext cxt, bool waits);
	int64		(*plan) (void *state, Pipeline *p, int64 batch_id, int64 *limit, int64 *backlog,
						 Jsonb **slice);
	void		(*read) (void *state, Pipeline *p, Batch *b, Oid into, Rejects *rj);
	void		(*commit) (void *state, Pipeline *p, Batch *b);
	void		(*after_commit) (void *state, Batch *b);
	Jsonb	   *(*describe) (int32 pipeline_id, int64 batch_id);
	bool		(*offsets_missing) (int32 pipeline_id);
	char	   *(*owner_refused) (Oid owner, const char **hint);
	bool		(*plan_ahead) (void *state);
	int64		initial_size;
} SourceRoutine;

extern const SourceRoutine *source_routine(const char *type);
extern uint64 copy_to_receiver(CopyFromState cstate, Relation rel, DestReceiver *dest);

/* src/sources/csv.c */
extern const SourceRoutine csv_source_routine;

/* src/sources/kafka.c */
extern const SourceRoutine kafka_source_routine;

#endif							/* SLUICE_SOURCE_H */

/*
 * sink.h
 *		The interface between the micro-batch (batch.c) and a sink.
 *
 * A sink is a SinkRoutine.  batch.c knows no sink by name: a new sink is a
 * new file in src/sinks/ and a line in sink_routine().
 *
 *	direct		whether the source may COPY straight into the sink's target
 *				when there is no transform (an append sink: the batch then
 *				costs what COPY costs); otherwise the rows are staged in the
 *				temporary table "batch" first
 *	receiver	a sink that folds rows as they are parsed (may be NULL): the
 *				receiver the source hands each row to when there is no
 *				transform, instead of staging it (rows shaped like stage,
 *				the staging table, which the sink may keep some in).  The
 *				batch waits its turn before it reads, so that the sink sees
 *				the catalog as the batch before it left it.  The sink keeps
 *				what it folded in b->sink_state for write.
 *	write		in the batch transaction, as the pipeline's owner: take the
 *				rows of the relation "input" (the staging table, or the
 *				transform's result) with statements built here, in C, from
 *				the catalog; with rj, set aside the rows the target refuses.
 *				Returns the rows written, or -1 when the sink cannot tell.
 *	late		rows of input (by tid) that deduplication drops as late, at
 *				or before the watermark w the batch started with, before the
 *				sink sees them: kept as the sink keeps its own late rows (may
 *				be NULL: the sink keeps none)
 */
#ifndef SLUICE_SINK_H
#define SLUICE_SINK_H

#include "tcop/dest.h"

#include "sluice.h"

typedef struct SinkRoutine
{
	const char *type;
	bool		direct;
	DestReceiver *(*receiver) (Pipeline *p, Batch *b, Oid stage);
	int64		(*write) (Pipeline *p, Batch *b, Oid input, Oid stage, Rejects *rj);
	void		(*late) (Pipeline *p, Batch *b, Oid input, const TidList *tids, TimestampTz w, bool has_w);
} SinkRoutine;

extern const SinkRoutine *sink_routine(const char *type);

/* src/sinks/ */
extern const SinkRoutine append_sink_routine;
extern const SinkRoutine merge_sink_routine;
extern const SinkRoutine function_sink_routine;
extern const SinkRoutine window_sink_routine;

/* src/sinks/append.c: what append and merge share */
extern List *sink_columns(Oid relid);
extern char *sink_column_list(Oid relid, const char *prefix);
extern char *sink_relation_name(Oid relid);

#endif							/* SLUICE_SINK_H */

/*
 * window.c
 *		The window sink: event-time windows with a watermark, aggregated in C.
 *
 * Rows reach the sink one at a time: as the source parses them when there
 * is no transform (no staging table holds them), or from a scan of the
 * transform's result.  Each row is folded, window by window, into a hash
 * table (simplehash) of partial aggregates keyed by (window start, group),
 * in the batch's memory, with the types' own equality, hash, comparison and
 * addition functions.  An entry of the table is 16 bytes: its hash and where
 * its key and partials are, carved from large blocks with no allocator
 * header each; a partial takes only the fields its aggregate needs.  The
 * batch then writes the table of partials with a few statements over
 * sluice._window_partials(), which returns it: the
 * windows its watermark closes go straight to the target (merged with what
 * the state table kept of them), the others to the state table.
 *
 * The partials' memory (their keys and values, not the hash table's
 * buckets) is bounded by sluice.window_memory.  A batch whose
 * partials outgrow it is split: what it holds is merged into the state
 * table, and folding goes on with an empty table; the windows are then
 * written from the state table.  Counting the same window in two parts is
 * exact, since every partial merges exactly.
 *
 * Session windows (a session_gap instead of a size) key the table by the
 * group alone: each entry holds the group's sessions, in start order, none
 * touching another.  A row at t spans [t, t + gap) and joins (or bridges)
 * the sessions its span overlaps or touches.  Before the batch writes, the
 * sessions of the state table that touch the batch's are taken out of it
 * and folded in too, so that a session grows over many batches.
 *
 * The batch folds under the pipeline's row lock, taken before it reads:
 * the watermark it starts with is then known, so late rows are dropped as
 * they are read.  The new watermark and the state metrics go to the
 * catalog here.
 */
#include "postgres.h"

#include <math.h>

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "common/int.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/float.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"

#include "sink.h"

typedef enum WinFn
{
	WIN_COUNT_STAR,
	WIN_COUNT,
	WIN_SUM,
	WIN_AVG,
	WIN_MIN,
	WIN_MAX
} WinFn;

/* how a sum adds: the state keeps numeric, as sum(x)::numeric would */
typedef enum SumKind
{
	SUM_INT,					/* smallint, integer, bigint: in int64, moved to numeric on overflow */
	SUM_FLOAT4,					/* as sum(real) adds, in real */
	SUM_FLOAT8,
	SUM_NUMERIC
} SumKind;

typedef struct WinAgg
{
	WinFn		fn;
	int			att;			/* index of its column in the rows received; -1 for count(*) */
	SumKind		kind;
	int16		typlen;
	bool		typbyval;
	FmgrInfo	cmp;			/* min, max: the type's btree comparison */
	Oid			collation;
	int			off;			/* where its partial is among an entry's */
} WinAgg;

/*
 * One aggregate of one (window, group).  Only the fields its aggregate
 * needs are kept (see partial_size): 8 bytes for a count, 16 for a min,
 * a max or a numeric sum, 24 for an integer or float sum.
 */
typedef struct Partial
{
	int64		n;				/* values folded (count(*): rows) */
	Datum		v;				/* min, max (once n > 0); a numeric sum, (Datum) 0 until there is one */
	union
	{
		int64		i;			/* SUM_INT: what is not yet in v */
		double		f;			/* SUM_FLOAT4, SUM_FLOAT8 */
	}			acc;
} Partial;

/* a session window of one group: [start, end), the group's key, then its partials */
typedef struct Session
{
	TimestampTz start;
	TimestampTz end;
	const char *key;
	char		parts[FLEXIBLE_ARRAY_MEMBER];
} Session;

/* the sessions of one group, in start order, none touching another */
typedef struct SessionList
{
	int			n;
	int			max;
	Session   **s;
} SessionList;

/*
 * The key of an entry: the window's start (0 for sessions), the groups,
 * then whether each is null.  The groups' values passed by reference are
 * copies in the table's memory.  The entry's partials (or its SessionList)
 * follow the key.
 */
typedef struct FoldKey
{
	TimestampTz ws;
	Datum		g[FLEXIBLE_ARRAY_MEMBER];
} FoldKey;

/* an entry of the table of partials */
typedef struct FoldEntry
{
	char	   *data;			/* its FoldKey, then its partials */
	uint32		hash;
	char		status;
} FoldEntry;

struct WindowFold;
static uint32 fold_probe_hash(struct WindowFold *f);
static bool fold_key_equal(struct WindowFold *f, const char *data);

/* a key of NULL stands for the probe: the key being looked up, kept in the WindowFold */
#define SH_PREFIX foldhash
#define SH_ELEMENT_TYPE FoldEntry
#define SH_KEY_TYPE char *
#define SH_KEY data
#define SH_HASH_KEY(tb, key) fold_probe_hash((struct WindowFold *) (tb)->private_data)
#define SH_EQUAL(tb, a, b) fold_key_equal((struct WindowFold *) (tb)->private_data, a)
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a) ((a)->hash)
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

typedef struct WindowFold
{
	MemoryContext cxt;			/* the batch's: all of this */
	MemoryContext tablecxt;		/* the partials, reset when a batch is split */
	MemoryContext rowcxt;		/* per row */

	/* the pipeline */
	int32		pipeline_id;
	int64		batch_id;
	Oid			state_table;
	Oid			target;
	Oid			late_table;
	char	   *mode;
	int64		size_us;
	int64		slide_us;
	int64		gap_us;			/* session windows: the gap (size_us, slide_us 0) */
	int			nwindows;		/* windows a row falls in at most */
	Datum		delay;			/* watermark_delay (interval), if any */
	bool		has_delay;
	TimestampTz w;				/* the watermark the batch started with */
	bool		has_w;
	bool		drop_late;		/* not in complete mode, and w is known */

	/* the rows received */
	int			et_att;
	bool		et_is_tz;
	int			ngroups;
	int		   *group_att;
	int			naggs;
	WinAgg	   *aggs;
	int			npartcols;		/* columns of partials in the state table */
	Oid		   *coltypes;		/* of the state table's columns (but sluice_batch), in order */
	char	   *name;			/* the pipeline's */

	/* the table of partials */
	foldhash_hash *hash;
	FmgrInfo   *g_eq;			/* the groups' equality and hash functions */
	FmgrInfo   *g_hash;
	Oid		   *g_coll;
	bool	   *g_byval;
	int16	   *g_len;
	Size		keysize;		/* of an entry's FoldKey */
	Size		partsize;		/* of a window's (or session's) partials */
	Size		payload;		/* of what follows an entry's key: its partials, or a SessionList */
	TimestampTz probe_ws;		/* the key looked up: ws, and the groups at probe_values[probe_atts[g]] */
	Datum	   *probe_values;
	bool	   *probe_isnull;
	const int  *probe_atts;
	uint32		probe_ghash;	/* the hash of its groups */
	uint32		probe_hash;
	int64		entries;		/* windows (or sessions) in the table now */
	int64		folded;			/* windows made in the batch, over all parts; sessions written */
	char	   *arena;			/* where the next entry's partials go */
	Size		arena_left;
	int64		check_at;		/* entries at which the memory is looked at next (every 64) */
	int64		upserted;		/* state rows the parts inserted or updated */
	int			parts;			/* times the table was merged into the state table */
	Size		peak;			/* the most memory the worker used, as far as seen */
	Size		table_peak;		/* and the batch's (the table of partials, its buckets, its order) */

	/* late rows: inserted into late_into (the staging table) or found by tid */
	Relation	late_into;
	TidList		late;

	/* metrics */
	int64		dropped;		/* late (row, window) pairs */
	EventTimes	et;				/* of the rows received (or what deduplication saw) */
	TimestampTz new_w;
	bool		has_new_w;
	struct WindowSql *sql;		/* the statements' pieces, once needed */
} WindowFold;

typedef struct WindowReceiver
{
	DestReceiver pub;
	WindowFold *fold;
} WindowReceiver;

/* the batch's, while it folds and writes: what sluice._window_partials() returns */
static WindowFold *current_fold = NULL;

#define EPOCH_OFFSET_US ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY)

static int64
floor_div(int64 a, int64 b)
{
	int64		q = a / b;

	return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int
column_index(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped && strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0)
			return i;
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("column \"%s\" of the window sink is not among the columns it receives", name)));
	return -1;					/* keep the compiler quiet */
}

/*
 * Rows of the state table (desc, with sluice_batch last when with_batch) or
 * the row type asked of sluice._window_partials() must have the columns the
 * fold reads and writes, of the types it made them with: the owner may have
 * altered her state table, and a datum taken for another type's would
 * crash the worker.
 */
static void
window_check_columns(WindowFold *f, TupleDesc desc, bool with_batch, const char *what)
{
	int			n = 2 + f->ngroups + f->npartcols;
	bool		ok = desc->natts == n + (with_batch ? 1 : 0);

	for (int i = 0; ok && i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped && att->atttypid == (i < n ? f->coltypes[i] : INT8OID);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s of the window sink of pipeline \"%s\" does not have the columns the sink made", what,
						f->name),
				 errdetail("It needs window_start and window_end, the group_by columns, the partial aggregates and sluice_batch, of the types they were created with, and no other column."),
				 errhint("The state table was altered: drop the pipeline and create it again.")));
}

/* The batch's memory is going: sluice._window_partials() has nothing to return. */
static void
window_fold_gone(void *arg)
{
	if (current_fold == arg)
		current_fold = NULL;
}

/* The bytes of an entry's partial for a: the leading fields of Partial it uses. */
static Size
partial_size(WinAgg *a)
{
	if (a->fn == WIN_COUNT_STAR || a->fn == WIN_COUNT)
		return offsetof(Partial, v);
	if (a->fn == WIN_MIN || a->fn == WIN_MAX || a->kind == SUM_NUMERIC)
		return offsetof(Partial, acc);
	return sizeof(Partial);
}

static inline Partial *
agg_partial(WinAgg *a, char *parts)
{
	return (Partial *) (parts + a->off);
}

/*
 * The fold of one batch: the pipeline's settings, read under its row lock,
 * and an empty table of partials for rows shaped like desc.
 */
static WindowFold *
window_fold_begin(Pipeline *p, Batch *b, TupleDesc desc)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "sluice window fold",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContextCallback *gone = MemoryContextAlloc(cxt, sizeof(MemoryContextCallback));
	WindowFold *f = MemoryContextAllocZero(cxt, sizeof(WindowFold));
	Datum		value = Int32GetDatum(p->id);
	Jsonb	   *sk;
	bool		isnull;
	char	   *event_time;
	List	   *groups;
	ListCell   *lc;
	Oid		   *eqops;
	Oid		   *eqfuncs;
	Relation	state;
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

	/* the batch's memory goes at its end, or with its transaction */
	f->cxt = cxt;
	f->late.cxt = cxt;
	gone->func = window_fold_gone;
	gone->arg = f;
	MemoryContextRegisterResetCallback(cxt, gone);
	f->pipeline_id = p->id;
	f->name = pstrdup(p->name);
	f->batch_id = b->id;
	catalog_exec("SELECT s, p.state_table, p.event_time, p.watermark_delay, p.watermark,"
				 "  ((s->>'size_s')::numeric * 1000000)::int8, ((s->>'slide_s')::numeric * 1000000)::int8,"
				 "  s->>'output_mode', (s->>'relid')::oid, (s->>'late_relid')::oid,"
				 "  ((s->>'gap_s')::numeric * 1000000)::int8"
				 " FROM sluice.pipeline AS p, sluice._sink(p) AS s WHERE p.id = $1 FOR UPDATE OF p",
				 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "pipeline %d is gone", p->id);
	sk = DatumGetJsonbPCopy(spi_datum(0, 1, &isnull));
	f->state_table = DatumGetObjectId(spi_datum(0, 2, &isnull));
	event_time = spi_text(0, 3);
	f->delay = spi_datum(0, 4, &isnull);
	f->has_delay = !isnull;
	if (f->has_delay)
		f->delay = datumCopy(f->delay, false, sizeof(Interval));
	f->w = DatumGetTimestampTz(spi_datum(0, 5, &isnull));
	f->has_w = !isnull;
	f->size_us = spi_int64(0, 6);
	f->slide_us = spi_int64(0, 7);
	f->mode = spi_text(0, 8);
	f->target = DatumGetObjectId(spi_datum(0, 9, &isnull));
	f->late_table = DatumGetObjectId(spi_datum(0, 10, &isnull));
	if (isnull)
		f->late_table = InvalidOid;
	f->gap_us = spi_int64(0, 11);
	f->drop_late = f->has_w && strcmp(f->mode, "complete") != 0;
	f->nwindows = f->gap_us > 0 ? 1 : (int) ((f->size_us + f->slide_us - 1) / f->slide_us);

	f->et_att = column_index(desc, event_time);
	f->et_is_tz = TupleDescAttr(desc, f->et_att)->atttypid == TIMESTAMPTZOID;

	/* the aggregates, in order */
	catalog_exec("SELECT a->>'fn', a->>'arg' FROM jsonb_array_elements($1->'aggregates') WITH ORDINALITY AS x(a, o)"
				 " ORDER BY o", 1, (Oid[]) {JSONBOID}, (Datum[]) {JsonbPGetDatum(sk)}, NULL, SPI_OK_SELECT);
	f->naggs = (int) SPI_processed;
	f->aggs = palloc0(sizeof(WinAgg) * f->naggs);
	for (int i = 0; i < f->naggs; i++)
	{
		WinAgg	   *a = &f->aggs[i];
		char	   *fn = spi_text(i, 1);
		char	   *arg = spi_text(i, 2);
		Form_pg_attribute att;

		a->att = arg ? column_index(desc, arg) : -1;
		if (strcmp(fn, "count") == 0)
			a->fn = arg ? WIN_COUNT : WIN_COUNT_STAR;
		else if (strcmp(fn, "sum") == 0)
			a->fn = WIN_SUM;
		else if (strcmp(fn, "avg") == 0)
			a->fn = WIN_AVG;
		else if (strcmp(fn, "min") == 0)
			a->fn = WIN_MIN;
		else
			a->fn = WIN_MAX;
		f->npartcols += a->fn == WIN_AVG ? 2 : 1;
		if (a->att < 0)
			continue;
		att = TupleDescAttr(desc, a->att);
		a->typlen = att->attlen;
		a->typbyval = att->attbyval;
		a->collation = att->attcollation;
		if (a->fn == WIN_SUM || a->fn == WIN_AVG)
		{
			switch (att->atttypid)
			{
				case INT2OID:
				case INT4OID:
				case INT8OID:
					a->kind = SUM_INT;
					break;
				case FLOAT4OID:
					a->kind = SUM_FLOAT4;
					break;
				case FLOAT8OID:
					a->kind = SUM_FLOAT8;
					break;
				case NUMERICOID:
					a->kind = SUM_NUMERIC;
					break;
				default:
					ereport(ERROR,
							(errcode(ERRCODE_DATATYPE_MISMATCH),
							 errmsg("%s(%s) needs a number", fn, arg)));
			}
		}
		else if (a->fn == WIN_MIN || a->fn == WIN_MAX)
		{
			TypeCacheEntry *tc = lookup_type_cache(att->atttypid, TYPECACHE_CMP_PROC_FINFO);

			if (!OidIsValid(tc->cmp_proc))
				ereport(ERROR,
						(errcode(ERRCODE_UNDEFINED_FUNCTION),
						 errmsg("could not identify a comparison function for type %s",
								format_type_be(att->atttypid))));
			fmgr_info_copy(&a->cmp, &tc->cmp_proc_finfo, f->cxt);
		}
	}

	/* the key: window_start and the groups, with their types' hash and equality */
	groups = jsonb_get_text_list(sk, "group_by");
	f->ngroups = list_length(groups);
	f->group_att = palloc(sizeof(int) * (f->ngroups + 1));
	eqops = palloc(sizeof(Oid) * (f->ngroups + 1));
	f->g_coll = palloc(sizeof(Oid) * (f->ngroups + 1));
	f->g_byval = palloc(sizeof(bool) * (f->ngroups + 1));
	f->g_len = palloc(sizeof(int16) * (f->ngroups + 1));
	f->g_eq = palloc(sizeof(FmgrInfo) * (f->ngroups + 1));
	foreach(lc, groups)
	{
		int			i = foreach_current_index(lc);
		Form_pg_attribute att;
		TypeCacheEntry *tc;

		f->group_att[i] = column_index(desc, lfirst(lc));
		att = TupleDescAttr(desc, f->group_att[i]);
		tc = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR | TYPECACHE_HASH_PROC);
		if (!OidIsValid(tc->eq_opr) || !OidIsValid(tc->hash_proc))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot group windows by column \"%s\" of type %s", (char *) lfirst(lc),
							format_type_be(att->atttypid)),
					 errdetail("Window sinks group rows in a hash table, and the type has no hash function.")));
		eqops[i] = tc->eq_opr;
		f->g_coll[i] = att->attcollation;
		f->g_byval[i] = att->attbyval;
		f->g_len[i] = att->attlen;
	}
	execTuplesHashPrepare(f->ngroups, eqops, &eqfuncs, &f->g_hash);
	for (int g = 0; g < f->ngroups; g++)
		fmgr_info(eqfuncs[g], &f->g_eq[g]);
	f->keysize = MAXALIGN(offsetof(FoldKey, g) + (sizeof(Datum) + sizeof(bool)) * f->ngroups);
	for (int i = 0; i < f->naggs; i++)
	{
		f->aggs[i].off = (int) f->partsize;
		f->partsize += partial_size(&f->aggs[i]);
	}
	f->payload = f->gap_us > 0 ? sizeof(SessionList) : f->partsize;
	f->tablecxt = AllocSetContextCreate(f->cxt, "sluice window partials", ALLOCSET_DEFAULT_SIZES);
	f->rowcxt = AllocSetContextCreate(f->cxt, "sluice window row", ALLOCSET_DEFAULT_SIZES);
	f->hash = foldhash_create(f->cxt, 1024, f);

	/* the state table's columns, as sluice._window_create_state() made them */
	f->coltypes = palloc(sizeof(Oid) * (2 + f->ngroups + f->npartcols));
	f->coltypes[0] = f->coltypes[1] = TIMESTAMPTZOID;
	for (int g = 0; g < f->ngroups; g++)
		f->coltypes[2 + g] = TupleDescAttr(desc, f->group_att[g])->atttypid;
	for (int i = 0, c = 2 + f->ngroups; i < f->naggs; i++)
	{
		WinAgg	   *a = &f->aggs[i];

		if (a->fn == WIN_SUM || a->fn == WIN_AVG)
			f->coltypes[c++] = NUMERICOID;
		if (a->fn == WIN_MIN || a->fn == WIN_MAX)
			f->coltypes[c++] = TupleDescAttr(desc, a->att)->atttypid;
		if (a->fn != WIN_SUM && a->fn != WIN_MIN && a->fn != WIN_MAX)
			f->coltypes[c++] = INT8OID;
	}
	state = table_open(f->state_table, RowExclusiveLock);
	window_check_columns(f, RelationGetDescr(state), true, "the state table");
	table_close(state, NoLock);
	MemoryContextSwitchTo(oldcxt);
	current_fold = f;
	return f;
}

/* Zeroed memory for the table, carved from large blocks: no allocator header each. */
static void *
fold_alloc(WindowFold *f, Size size)
{
	void	   *p;

	size = MAXALIGN(size);
	if (f->arena_left < size)
	{
		f->arena_left = Max(8 * 1024, size);
		f->arena = MemoryContextAlloc(f->tablecxt, f->arena_left);
	}
	p = memset(f->arena, 0, size);
	f->arena += size;
	f->arena_left -= size;
	return p;
}

/*
 * value, kept in the table's memory: in the place of old (a value kept
 * before, or (Datum) 0) when it fits there.  A varlena goes with a short
 * header when it can, as in a tuple.
 */
static Datum
fold_keep(WindowFold *f, Datum old, Datum value, bool byval, int16 typlen)
{
	bool		make_short = false;
	Size		size;
	char	   *p;

	if (byval)
		return value;
	if (typlen == -1)
	{
		value = PointerGetDatum(PG_DETOAST_DATUM_PACKED(value));
		make_short = VARATT_IS_4B_U(DatumGetPointer(value)) && VARATT_CAN_MAKE_SHORT(DatumGetPointer(value));
	}
	size = make_short ? VARATT_CONVERTED_SHORT_SIZE(DatumGetPointer(value)) : datumGetSize(value, false, typlen);
	p = (old != (Datum) 0 && MAXALIGN(size) <= MAXALIGN(datumGetSize(old, false, typlen))) ?
		DatumGetPointer(old) : fold_alloc(f, size);
	if (make_short)
	{
		SET_VARSIZE_SHORT(p, size);
		memcpy(p + VARHDRSZ_SHORT, VARDATA(DatumGetPointer(value)), size - VARHDRSZ_SHORT);
	}
	else
		memmove(p, DatumGetPointer(value), size);
	return PointerGetDatum(p);
}

/* Add a numeric to the numeric part of a sum. */
static void
partial_add_numeric(WindowFold *f, Partial *part, Datum value)
{
	MemoryContext oldcxt;

	if (part->v != (Datum) 0)
	{
		/* added in the row's memory */
		oldcxt = MemoryContextSwitchTo(f->rowcxt);
		value = NumericGetDatum(numeric_add_opt_error(DatumGetNumeric(part->v), DatumGetNumeric(value), NULL));
		MemoryContextSwitchTo(oldcxt);
	}
	part->v = fold_keep(f, part->v, value, false, -1);
}

/* Keep value as the min or max of a partial (its first, or a better one). */
static void
partial_keep_extreme(WindowFold *f, WinAgg *a, Partial *part, Datum value)
{
	if (part->n > 0)
	{
		int			c = DatumGetInt32(FunctionCall2Coll(&a->cmp, a->collation, value, part->v));

		if (a->fn == WIN_MIN ? c >= 0 : c <= 0)
			return;
	}
	part->v = fold_keep(f, part->n > 0 ? part->v : (Datum) 0, value, a->typbyval, a->typlen);
}

/* Add to the int64 part of a sum, moving it into the numeric part when it is full. */
static void
partial_add_int(WindowFold *f, Partial *part, int64 x)
{
	int64		r;

	if (!pg_add_s64_overflow(part->acc.i, x, &r))
	{
		part->acc.i = r;
		return;
	}
	partial_add_numeric(f, part, NumericGetDatum(int64_to_numeric(part->acc.i)));
	part->acc.i = x;
}

/* Add to a real sum, in real, as sum(real) adds. */
static void
partial_add_float4(Partial *part, float4 x)
{
	float4		r = (float4) part->acc.f + x;

	if (unlikely(isinf(r)) && !isinf(part->acc.f) && !isinf(x))
		float_overflow_error();
	part->acc.f = r;
}

/* Add one value to a partial. */
static void
partial_add(WindowFold *f, WinAgg *a, Partial *part, Datum value)
{
	switch (a->fn)
	{
		case WIN_COUNT_STAR:
		case WIN_COUNT:
			break;
		case WIN_SUM:
		case WIN_AVG:
			switch (a->kind)
			{
				case SUM_INT:
					partial_add_int(f, part, a->typlen == 2 ? DatumGetInt16(value) :
									a->typlen == 4 ? DatumGetInt32(value) : DatumGetInt64(value));
					break;
				case SUM_FLOAT4:
					partial_add_float4(part, DatumGetFloat4(value));
					break;
				case SUM_FLOAT8:
					part->acc.f = float8_pl(part->acc.f, DatumGetFloat8(value));
					break;
				case SUM_NUMERIC:
					partial_add_numeric(f, part, value);
					break;
			}
			break;
		case WIN_MIN:
		case WIN_MAX:
			partial_keep_extreme(f, a, part, value);
			break;
	}
	part->n++;
}

/*
 * Merge partial "from" into "into" (sessions that come to touch, or one the
 * state table kept: its sums are numeric, in v).
 */
static void
partial_merge(WindowFold *f, WinAgg *a, Partial *into, const Partial *from)
{
	if (from->n == 0)
		return;
	switch (a->fn)
	{
		case WIN_COUNT_STAR:
		case WIN_COUNT:
			break;
		case WIN_SUM:
		case WIN_AVG:
			if (a->kind == SUM_INT)
				partial_add_int(f, into, from->acc.i);
			else if (a->kind == SUM_FLOAT4)
				partial_add_float4(into, (float4) from->acc.f);
			else if (a->kind == SUM_FLOAT8)
				into->acc.f = float8_pl(into->acc.f, from->acc.f);
			if (from->v != (Datum) 0)
				partial_add_numeric(f, into, from->v);
			break;
		case WIN_MIN:
		case WIN_MAX:
			partial_keep_extreme(f, a, into, from->v);
			break;
	}
	into->n += from->n;
}

/* Merge the table of partials into the state table, and empty it. */
static void window_merge_into_state(WindowFold *f, const char *which);
static void session_absorb(WindowFold *f);

/* The hash of the key looked up (for simplehash, which asks only when it was not given one). */
static uint32
fold_probe_hash(WindowFold *f)
{
	return f->probe_hash;
}

/* Whether the key of an entry (data) is the one looked up: a null group equals a null. */
static bool
fold_key_equal(WindowFold *f, const char *data)
{
	const FoldKey *k = (const FoldKey *) data;
	const bool *nulls = (const bool *) &k->g[f->ngroups];

	if (k->ws != f->probe_ws)
		return false;
	for (int g = 0; g < f->ngroups; g++)
	{
		int			att = f->probe_atts[g];

		if (nulls[g] != f->probe_isnull[att])
			return false;
		if (!nulls[g] &&
			!DatumGetBool(FunctionCall2Coll(&f->g_eq[g], f->g_coll[g], k->g[g], f->probe_values[att])))
			return false;
	}
	return true;
}

/*
 * The groups of the keys looked up next: values[atts[g]], hashed once for
 * every window of a row.
 */
static void
fold_probe(WindowFold *f, Datum *values, bool *isnull, const int *atts)
{
	uint32		h = 0;

	for (int g = 0; g < f->ngroups; g++)
		h = hash_combine(h, isnull[atts[g]] ? 0 :
						 DatumGetUInt32(FunctionCall1Coll(&f->g_hash[g], f->g_coll[g], values[atts[g]])));
	f->probe_values = values;
	f->probe_isnull = isnull;
	f->probe_atts = atts;
	f->probe_ghash = h;
}

/*
 * The entry of (ws, the groups of fold_probe()) in the table, made if new
 * (NULL if isnew is and there is none).  Returns its data: the key, then
 * f->payload bytes, zeroed when new.
 */
static char *
fold_entry(WindowFold *f, TimestampTz ws, bool *isnew)
{
	uint32		h = hash_combine(f->probe_ghash, murmurhash32((uint32) ((uint64) ws ^ ((uint64) ws >> 32))));
	FoldEntry  *e;
	bool		found;
	FoldKey    *k;
	bool	   *nulls;

	f->probe_ws = ws;
	f->probe_hash = h = murmurhash32(h);
	if (isnew == NULL)
	{
		e = foldhash_lookup_hash(f->hash, NULL, h);
		return e ? e->data : NULL;
	}
	e = foldhash_insert_hash(f->hash, NULL, h, &found);
	*isnew = !found;
	if (found)
		return e->data;

	/* a new key: the groups passed by reference are copied */
	e->data = fold_alloc(f, f->keysize + f->payload);
	k = (FoldKey *) e->data;
	nulls = (bool *) &k->g[f->ngroups];
	k->ws = ws;
	for (int g = 0; g < f->ngroups; g++)
	{
		int			att = f->probe_atts[g];

		nulls[g] = f->probe_isnull[att];
		if (!nulls[g])
			k->g[g] = fold_keep(f, (Datum) 0, f->probe_values[att], f->g_byval[g], f->g_len[g]);
	}
	return e->data;
}

/* Fold the aggregated columns of a row into partials. */
static void
fold_values(WindowFold *f, char *parts, TupleTableSlot *row)
{
	for (int i = 0; i < f->naggs; i++)
	{
		WinAgg	   *a = &f->aggs[i];

		if (a->att >= 0 && row->tts_isnull[a->att])
			continue;
		partial_add(f, a, agg_partial(a, parts), a->att >= 0 ? row->tts_values[a->att] : (Datum) 0);
	}
}

/* Fold one (row, window) pair, the row's groups probed. */
static void
window_fold_pair(WindowFold *f, TupleTableSlot *row, TimestampTz ws)
{
	bool		isnew;
	char	   *data = fold_entry(f, ws, &isnew);

	if (isnew)
	{
		f->entries++;
		f->folded++;
	}
	fold_values(f, data + f->keysize, row);
}

/* The first of a group's sessions that starts after t (l->n if none does). */
static int
session_after(SessionList *l, TimestampTz t)
{
	int			lo = 0;
	int			hi = l->n;

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (l->s[mid]->start <= t)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * The session of a group that [start, end) joins: one it overlaps or
 * touches, grown to hold it and merged with the next ones it then touches,
 * or a new one.
 */
static Session *
session_place(WindowFold *f, const char *key, TimestampTz start, TimestampTz end)
{
	SessionList *l = (SessionList *) (key + f->keysize);
	int			lo = session_after(l, start);
	int			k;
	Session    *s;

	if (lo > 0 && start <= l->s[lo - 1]->end)
		k = lo - 1;
	else if (lo < l->n && end >= l->s[lo]->start)
		k = lo;
	else
	{
		if (l->n == l->max)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(f->tablecxt);

			l->max = Max(4, l->max * 2);
			l->s = l->s ? repalloc_huge(l->s, sizeof(Session *) * l->max) : palloc(sizeof(Session *) * l->max);
			MemoryContextSwitchTo(oldcxt);
		}
		memmove(&l->s[lo + 1], &l->s[lo], sizeof(Session *) * (l->n - lo));
		l->s[lo] = s = fold_alloc(f, offsetof(Session, parts) + f->partsize);
		l->n++;
		s->start = start;
		s->end = end;
		s->key = key;
		f->entries++;
		return s;
	}
	s = l->s[k];
	s->start = Min(s->start, start);
	s->end = Max(s->end, end);
	while (k + 1 < l->n && l->s[k + 1]->start <= s->end)
	{
		Session    *next = l->s[k + 1];

		for (int i = 0; i < f->naggs; i++)
			partial_merge(f, &f->aggs[i], agg_partial(&f->aggs[i], s->parts), agg_partial(&f->aggs[i], next->parts));
		s->end = Max(s->end, next->end);
		memmove(&l->s[k + 1], &l->s[k + 2], sizeof(Session *) * (l->n - k - 2));
		l->n--;
		f->entries--;
	}
	return s;
}

/* The key of a group's sessions (values[atts[g]]), made if new; its SessionList follows it. */
static const char *
session_key(WindowFold *f, Datum *values, bool *isnull, const int *atts)
{
	bool		isnew;

	fold_probe(f, values, isnull, atts);
	return fold_entry(f, 0, &isnew);
}

/* Keep a late row, for the late_rows table. */
static void
window_keep_late(WindowFold *f, TupleTableSlot *row)
{
	if (!OidIsValid(f->late_table))
		return;
	if (f->late_into)
		table_tuple_insert(f->late_into, row, GetCurrentCommandId(true), 0, NULL);
	tid_list_push(&f->late, &row->tts_tid);
}

/* The end of a window (or session) from start that lasts us, which must be a timestamptz. */
static TimestampTz
window_end(TimestampTz start, int64 us)
{
	TimestampTz end;

	if (pg_add_s64_overflow(start, us, &end) || !IS_VALID_TIMESTAMP(end))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("a window of a row of the batch ends past the range of timestamptz"),
				 errdetail("The window starts at %s.", timestamptz_to_str(start))));
	return end;
}

/* Fold a row at et into every window it falls in that is not late; whether one was. */
static bool
window_fold_windows(WindowFold *f, TupleTableSlot *row, TimestampTz et)
{
	/* windows start on multiples of the slide since 1970, as to_timestamp() counts */
	int64		us = et + EPOCH_OFFSET_US;
	int64		first = floor_div(us, f->slide_us) * f->slide_us;
	bool		late = false;

	fold_probe(f, row->tts_values, row->tts_isnull, f->group_att);
	for (int k = 0; k < f->nwindows; k++)
	{
		int64		ws = first - k * f->slide_us;

		if (ws + f->size_us <= us)
			break;
		(void) window_end(ws - EPOCH_OFFSET_US, f->size_us);
		if (f->drop_late && ws - EPOCH_OFFSET_US + f->size_us <= f->w)
		{
			f->dropped++;
			late = true;
			continue;
		}
		window_fold_pair(f, row, ws - EPOCH_OFFSET_US);
	}
	return late;
}

/* Fold one row into every window (or the session) it falls in that is not late. */
static void
window_fold_row(WindowFold *f, TupleTableSlot *row)
{
	MemoryContext oldcxt;
	TimestampTz et;
	bool		late = false;

	slot_getallattrs(row);
	if (!event_time_get(row, f->et_att, f->et_is_tz, &et))
	{
		/* in no window at all */
		f->dropped++;
		window_keep_late(f, row);
		return;
	}
	event_times_add(&f->et, et);

	oldcxt = MemoryContextSwitchTo(f->rowcxt);
	if (f->gap_us == 0)
		late = window_fold_windows(f, row, et);
	else if (f->drop_late && et <= f->w)
	{
		/* a session row is late when its own time is */
		f->dropped++;
		late = true;
	}
	else
		fold_values(f, session_place(f, session_key(f, row->tts_values, row->tts_isnull, f->group_att),
									 et, window_end(et, f->gap_us))->parts, row);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(f->rowcxt);
	if (late)
		window_keep_late(f, row);

	/* bounded memory: past the limit, the batch goes on in another part */
	if (f->entries >= f->check_at)
	{
		Size		used = MemoryContextMemAllocated(f->tablecxt, true);

		f->check_at = f->entries + 64;
		if (used > (Size) sluice_window_memory * 1024)
		{
			window_merge_into_state(f, "all");
			f->parts++;
		}
	}
}

static bool
window_receive(TupleTableSlot *slot, DestReceiver *self)
{
	window_fold_row(((WindowReceiver *) self)->fold, slot);
	return true;
}

static void
window_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
}

static void
window_shutdown(DestReceiver *self)
{
}

static void
window_destroy(DestReceiver *self)
{
}

/*
 * The receiver the source hands each row to, as it parses it (rows shaped
 * like the staging table stage, which takes the late ones).  The batch
 * waited its turn: the pipeline's row lock is taken here.
 */
static DestReceiver *
window_receiver(Pipeline *p, Batch *b, Oid stage)
{
	WindowReceiver *r = palloc0(sizeof(WindowReceiver));
	Relation	rel = table_open(stage, RowExclusiveLock);

	r->pub.receiveSlot = window_receive;
	r->pub.rStartup = window_startup;
	r->pub.rShutdown = window_shutdown;
	r->pub.rDestroy = window_destroy;
	r->pub.mydest = DestNone;
	r->fold = window_fold_begin(p, b, RelationGetDescr(rel));
	r->fold->late_into = rel;
	b->sink_state = r->fold;
	return &r->pub;
}

/* Fold the rows of a relation (the transform's result, or the staging table). */
static void
window_fold_relation(WindowFold *f, Oid input)
{
	Relation	rel = table_open(input, AccessShareLock);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	Snapshot	snapshot;
	TableScanDesc scan;

	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
		window_fold_row(f, slot);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);
}

/*
 * Note the memory the worker and the batch use now: the table only grows
 * while it folds, so it peaks when it is written.
 */
static void
fold_note_memory(WindowFold *f)
{
	f->peak = Max(f->peak, MemoryContextMemAllocated(TopMemoryContext, true));
	f->table_peak = Max(f->table_peak, MemoryContextMemAllocated(f->cxt, true));
}

/* a window (or session) of the table, to be returned in window order */
typedef struct SortedEntry
{
	TimestampTz ws;
	char	   *item;			/* the entry's data (a window's), or a Session */
} SortedEntry;

static int
sorted_entry_cmp(const void *a, const void *b)
{
	TimestampTz x = ((const SortedEntry *) a)->ws;
	TimestampTz y = ((const SortedEntry *) b)->ws;

	return x < y ? -1 : x > y ? 1 : 0;
}

/* Put the columns of a partial aggregate from values[c] on, as the state table has them; the next c. */
static int
partial_values(WindowFold *f, WinAgg *a, Partial *part, Datum *values, bool *nulls, int c)
{
	if (a->fn == WIN_SUM || a->fn == WIN_AVG)
	{
		Datum		sum = (Datum) 0;

		nulls[c] = part->n == 0;
		if (part->n > 0)
		{
			if (a->kind == SUM_INT)
				sum = NumericGetDatum(int64_to_numeric(part->acc.i));
			else if (a->kind == SUM_FLOAT4)
				sum = DirectFunctionCall1(float4_numeric, Float4GetDatum((float4) part->acc.f));
			else if (a->kind == SUM_FLOAT8)
				sum = DirectFunctionCall1(float8_numeric, Float8GetDatum(part->acc.f));
			if (part->v != (Datum) 0)
				sum = sum == (Datum) 0 ? part->v :
					NumericGetDatum(numeric_add_opt_error(DatumGetNumeric(part->v), DatumGetNumeric(sum), NULL));
		}
		values[c++] = sum;
		if (a->fn == WIN_AVG)
		{
			nulls[c] = false;
			values[c++] = Int64GetDatum(part->n);
		}
	}
	else if (a->fn == WIN_MIN || a->fn == WIN_MAX)
	{
		nulls[c] = part->n == 0;
		values[c++] = part->v;
	}
	else
	{
		nulls[c] = false;
		values[c++] = Int64GetDatum(part->n);
	}
	return c;
}

/*
 * sluice._window_partials(which text): the batch's table of partials, as
 * rows of its state table (window_start, window_end, the groups, the
 * partials): "all", or only the windows the new watermark closes
 * ("closed") or leaves open ("open").  Only for the batch in flight of the
 * worker calling it.
 */
PG_FUNCTION_INFO_V1(sluice_window_partials);
Datum
sluice_window_partials(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WindowFold *f = current_fold;
	char	   *which = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int			natts = 0;
	Datum	   *values;
	bool	   *nulls;
	foldhash_iterator it;
	FoldEntry  *entry;
	SortedEntry *sorted;
	int64		nsorted = 0;
	bool		want_closed = strcmp(which, "closed") == 0;
	bool		want_open = strcmp(which, "open") == 0;

	if (f == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sluice._window_partials() is only for the batch of a window sink")));
	natts = 2 + f->ngroups + f->npartcols;
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	window_check_columns(f, rsinfo->setDesc, false, "the row type asked of sluice._window_partials()");
	values = palloc(sizeof(Datum) * natts);
	nulls = palloc(sizeof(bool) * natts);

	/*
	 * In window order: the target's and the state's indexes lead with the
	 * window, and rows inserted in its order touch few of their pages.
	 */
	sorted = MemoryContextAllocHuge(f->cxt, sizeof(SortedEntry) * Max(f->entries, 1));
	foldhash_start_iterate(f->hash, &it);
	while ((entry = foldhash_iterate(f->hash, &it)) != NULL)
	{
		SessionList *l = (SessionList *) (entry->data + f->keysize);
		int			n = f->gap_us > 0 ? l->n : 1;

		for (int k = 0; k < n; k++)
		{
			SortedEntry *e = &sorted[nsorted];
			TimestampTz we;
			bool		closed;

			if (f->gap_us > 0)
			{
				e->item = (char *) l->s[k];
				e->ws = l->s[k]->start;
				we = l->s[k]->end;
			}
			else
			{
				e->item = entry->data;
				e->ws = ((FoldKey *) entry->data)->ws;
				we = e->ws + f->size_us;
			}
			closed = f->has_new_w && we <= f->new_w;
			if ((want_closed && !closed) || (want_open && closed))
				continue;
			nsorted++;
		}
	}
	qsort(sorted, nsorted, sizeof(SortedEntry), sorted_entry_cmp);
	fold_note_memory(f);

	for (int64 e = 0; e < nsorted; e++)
	{
		int			c = 2 + f->ngroups;
		Session    *ses = (Session *) sorted[e].item;
		const FoldKey *k = (const FoldKey *) (f->gap_us > 0 ? ses->key : sorted[e].item);
		const bool *knulls = (const bool *) &k->g[f->ngroups];
		char	   *parts = f->gap_us > 0 ? ses->parts : sorted[e].item + f->keysize;

		values[0] = TimestampTzGetDatum(sorted[e].ws);
		values[1] = TimestampTzGetDatum(f->gap_us > 0 ? ses->end : sorted[e].ws + f->size_us);
		nulls[0] = nulls[1] = false;
		for (int g = 0; g < f->ngroups; g++)
		{
			values[2 + g] = k->g[g];
			nulls[2 + g] = knulls[g];
		}
		for (int i = 0; i < f->naggs; i++)
			c = partial_values(f, &f->aggs[i], agg_partial(&f->aggs[i], parts), values, nulls, c);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(sorted);
	return (Datum) 0;
}

/*
 * The statements' pieces, from sluice._window_aggs() and the sink's
 * options: the columns, and how partials merge, combine and finish.
 */
struct WindowSql
{
	char	   *state;			/* the state table, qualified */
	char	   *target;
	char	   *partials;		/* sluice._window_partials($2) AS p(column definitions) */
	char	   *gsel;			/* "g1, g2, " */
	char	   *gkeys;			/* ", g1, g2" */
	char	   *gjoin;			/* " AND t.g1 IS NOT DISTINCT FROM s.g1 ..." */
	char	   *gvalues;		/* "s.g1, s.g2, " */
	char	   *part_names;
	char	   *merges;
	char	   *combines;
	char	   *finals;
	char	   *names;
	char	   *sets;			/* "n = s.n, ..." */
	char	   *values;			/* "s.n, ..." */
};
typedef struct WindowSql WindowSql;

static WindowSql *
window_sql(WindowFold *f)
{
	WindowSql  *s = palloc0(sizeof(WindowSql));
	Datum		value = Int32GetDatum(f->pipeline_id);
	StringInfoData defs;
	Relation	rel;
	TupleDesc	desc;

	catalog_exec("SELECT a.part_names, a.merges, a.combines, a.finals, a.names,"
				 "  (SELECT coalesce(string_agg(quote_ident(g) || ', ', '' ORDER BY o), '')"
				 "     FROM jsonb_array_elements_text(s->'group_by') WITH ORDINALITY AS y(g, o)),"
				 "  (SELECT coalesce(string_agg(', ' || quote_ident(g), '' ORDER BY o), '')"
				 "     FROM jsonb_array_elements_text(s->'group_by') WITH ORDINALITY AS y(g, o)),"
				 "  (SELECT coalesce(string_agg(format(' AND t.%1$I IS NOT DISTINCT FROM s.%1$I', g), '' ORDER BY o), '')"
				 "     FROM jsonb_array_elements_text(s->'group_by') WITH ORDINALITY AS y(g, o)),"
				 "  (SELECT coalesce(string_agg(format('s.%I, ', g), '' ORDER BY o), '')"
				 "     FROM jsonb_array_elements_text(s->'group_by') WITH ORDINALITY AS y(g, o)),"
				 "  (SELECT string_agg(format('%1$I = s.%1$I', x->>'alias'), ', ' ORDER BY o)"
				 "     FROM jsonb_array_elements(s->'aggregates') WITH ORDINALITY AS y(x, o)),"
				 "  (SELECT string_agg(format('s.%I', x->>'alias'), ', ' ORDER BY o)"
				 "     FROM jsonb_array_elements(s->'aggregates') WITH ORDINALITY AS y(x, o))"
				 " FROM sluice.pipeline AS p, sluice._sink(p) AS s, sluice._window_aggs(s, NULL) AS a"
				 " WHERE p.id = $1",
				 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT);
	s->part_names = spi_text(0, 1);
	s->merges = spi_text(0, 2);
	s->combines = spi_text(0, 3);
	s->finals = spi_text(0, 4);
	s->names = spi_text(0, 5);
	s->gsel = spi_text(0, 6);
	s->gkeys = spi_text(0, 7);
	s->gjoin = spi_text(0, 8);
	s->gvalues = spi_text(0, 9);
	s->sets = spi_text(0, 10);
	s->values = spi_text(0, 11);
	s->state = sink_relation_name(f->state_table);
	s->target = sink_relation_name(f->target);

	/* the state table's columns but sluice_batch, as sluice._window_partials() returns them */
	initStringInfo(&defs);
	rel = table_open(f->state_table, AccessShareLock);
	desc = RelationGetDescr(rel);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped || strcmp(NameStr(att->attname), "sluice_batch") == 0)
			continue;
		appendStringInfo(&defs, "%s%s %s", defs.len > 0 ? ", " : "", quote_identifier(NameStr(att->attname)),
						 format_type_with_typemod(att->atttypid, att->atttypmod));
	}
	table_close(rel, NoLock);
	s->partials = psprintf("sluice._window_partials($2) AS p(%s)", defs.data);
	return s;
}

/*
 * Run one statement over the user's tables, as the owner: $1 the batch, $2
 * which partials, $3 the new watermark.  Returns the rows it processed.
 */
static uint64
window_exec(WindowFold *f, const char *sql, const char *which, int expected_rc)
{
	Datum		args[3] = {Int64GetDatum(f->batch_id), CStringGetTextDatum(which),
		TimestampTzGetDatum(f->new_w)};

	return pinned_exec(sql, 3, (Oid[]) {INT8OID, TEXTOID, TIMESTAMPTZOID}, args,
					   f->has_new_w ? NULL : "  n", expected_rc);
}

/*
 * Merge the table of partials ("all", or the windows left "open") into the
 * state table; after "all" the table is empty, and the batch goes on in
 * another part.
 */
static void
window_merge_into_state(WindowFold *f, const char *which)
{
	WindowSql  *s;

	if (f->gap_us > 0 && strcmp(which, "all") == 0)
		session_absorb(f);
	if (f->entries == 0)
		return;
	if (f->sql == NULL)
		f->sql = window_sql(f);
	s = f->sql;
	f->upserted += window_exec(f, psprintf("INSERT INTO %s AS s (window_start, window_end, %s%s, sluice_batch)"
										   " SELECT window_start, window_end, %s%s, $1 FROM %s"
										   " ON CONFLICT (window_start, window_end%s) DO UPDATE SET %s,"
										   "  sluice_batch = excluded.sluice_batch",
										   s->state, s->gsel, s->part_names, s->gsel, s->part_names,
										   s->partials, s->gkeys, s->merges),
							   which, SPI_OK_INSERT);
	if (strcmp(which, "all") == 0)
	{
		foldhash_reset(f->hash);
		MemoryContextReset(f->tablecxt);
		f->arena = NULL;
		f->arena_left = 0;
		f->entries = 0;
		f->check_at = 0;
	}
}

/*
 * Sessions: take the sessions of the state table that touch the batch's out
 * of it, and fold them into the batch's (in update mode their rows of the
 * target go too: the batch writes what they became).  The state table's
 * sessions of a group never touch one another, so one pass finds them all.
 */
static void
session_absorb(WindowFold *f)
{
	Relation	rel;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	TableScanDesc scan;
	TidList		gone = {.cxt = f->cxt};
	int		   *atts;
	MemoryContext oldcxt;

	if (f->entries == 0)
		return;
	atts = palloc(sizeof(int) * Max(f->ngroups, 1));
	for (int g = 0; g < f->ngroups; g++)
		atts[g] = 2 + g;
	rel = table_open(f->state_table, RowExclusiveLock);
	window_check_columns(f, RelationGetDescr(rel), true, "the state table");
	slot = table_slot_create(rel, NULL);
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		const char *key;
		SessionList *l;
		TimestampTz ws;
		TimestampTz we;
		int			lo;
		Session    *s;
		int			c = 2 + f->ngroups;

		slot_getallattrs(slot);
		fold_probe(f, slot->tts_values, slot->tts_isnull, atts);
		key = fold_entry(f, 0, NULL);
		if (key == NULL)
			continue;
		l = (SessionList *) (key + f->keysize);
		ws = DatumGetTimestampTz(slot->tts_values[0]);
		we = DatumGetTimestampTz(slot->tts_values[1]);

		/* does it touch the last of the batch's sessions that start by its end? */
		lo = session_after(l, we);
		if (lo == 0 || ws > l->s[lo - 1]->end)
			continue;

		oldcxt = MemoryContextSwitchTo(f->rowcxt);
		s = session_place(f, key, ws, we);
		for (int i = 0; i < f->naggs; i++)
		{
			WinAgg	   *a = &f->aggs[i];
			Partial		from = {0};

			if (a->fn == WIN_COUNT_STAR || a->fn == WIN_COUNT)
				from.n = DatumGetInt64(slot->tts_values[c]);
			else if (!slot->tts_isnull[c])
			{
				from.n = 1;
				from.v = slot->tts_values[c];
				if (TupleDescAttr(slot->tts_tupleDescriptor, c)->attlen == -1)
					from.v = PointerGetDatum(PG_DETOAST_DATUM_PACKED(from.v));
			}
			c++;
			if (a->fn == WIN_AVG)
				from.n = DatumGetInt64(slot->tts_values[c++]);
			partial_merge(f, a, agg_partial(a, s->parts), &from);
		}
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(f->rowcxt);
		tid_list_push(&gone, &slot->tts_tid);
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	ExecDropSingleTupleTableSlot(slot);
	table_close(rel, NoLock);

	if (gone.n > 0)
	{
		WindowSql  *sql = f->sql ? f->sql : (f->sql = window_sql(f));
		Datum		tids = tid_array(gone.tids, gone.n);

		pinned_exec(strcmp(f->mode, "update") != 0 ?
					psprintf("DELETE FROM %s WHERE ctid = ANY ($1)", sql->state) :
					psprintf("WITH old AS (DELETE FROM %s WHERE ctid = ANY ($1) RETURNING *)"
							 " DELETE FROM %s AS t USING old AS s"
							 " WHERE t.window_start = s.window_start AND t.window_end = s.window_end%s",
							 sql->state, sql->target, sql->gjoin),
					1, (Oid[]) {TIDARRAYOID}, &tids, NULL, SPI_OK_DELETE);
		pfree(gone.tids);
	}
	f->folded += f->entries;	/* the batch's sessions, as the state now has them */
}

/*
 * Rows of input (by tid) into the late_rows table late_table, with the
 * batch and the watermark w they were late for.
 */
static void
late_rows_insert(Oid late_table, int64 batch_id, TimestampTz w, bool has_w, Oid input, const TidList *late)
{
	Datum		values[4];
	char		nulls[4] = "    ";
	char	   *cols;

	values[0] = ObjectIdGetDatum(late_table);
	values[1] = ObjectIdGetDatum(input);
	catalog_exec("SELECT coalesce(string_agg(', ' || quote_ident(l.attname), '' ORDER BY l.attnum), '')"
				 " FROM pg_catalog.pg_attribute AS l"
				 " WHERE l.attrelid = $1 AND l.attnum > 0 AND NOT l.attisdropped"
				 "  AND l.attname NOT IN ('batch_id', 'watermark')"
				 "  AND l.attname IN (SELECT attname FROM pg_catalog.pg_attribute"
				 "                     WHERE attrelid = $2 AND attnum > 0 AND NOT attisdropped)",
				 2, (Oid[]) {OIDOID, OIDOID}, values, NULL, SPI_OK_SELECT);
	cols = spi_text(0, 1);
	values[0] = Int64GetDatum(batch_id);
	values[1] = TimestampTzGetDatum(w);
	nulls[1] = has_w ? ' ' : 'n';
	values[2] = tid_array(late->tids, late->n);
	pinned_exec(psprintf("INSERT INTO %s (batch_id, watermark%s) SELECT $1, $2%s FROM %s WHERE ctid = ANY ($3)",
						 sink_relation_name(late_table), cols, cols,
						 quote_qualified_identifier("pg_temp", get_rel_name(input))),
				3, (Oid[]) {INT8OID, TIMESTAMPTZOID, TIDARRAYOID}, values, nulls, SPI_OK_INSERT);
}

/* The late rows of the batch, from the relation they were received in, into late_rows. */
static void
window_write_late(WindowFold *f, Oid input)
{
	if (OidIsValid(f->late_table) && f->late.n > 0)
		late_rows_insert(f->late_table, f->batch_id, f->w, f->has_w, input, &f->late);
}

/* Rows deduplication drops as late before the sink sees them go to late_rows too. */
static void
window_late(Pipeline *p, Batch *b, Oid input, const TidList *tids, TimestampTz w, bool has_w)
{
	char	   *late_relid = jsonb_get_text(p->sink, "late_relid");

	if (late_relid != NULL && tids->n > 0)
		late_rows_insert(DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(late_relid))), b->id, w,
						 has_w, input, tids);
}

/*
 * Write the batch: fold its rows first if the source did not hand them
 * over as it parsed them (a transform, or a careful read), then write the
 * output mode's windows, keep the rest in the state table, and store the
 * new watermark and the state metrics in the catalog.  Windows are written
 * as a whole: no row-by-row isolation (rj).
 */
static int64
window_write(Pipeline *p, Batch *b, Oid input, Oid stage, Rejects *rj)
{
	WindowFold *f = b->sink_state;
	WindowSql  *s;
	Datum		values[11];
	char		nulls[11];
	int64		written = 0;
	int64		removed = 0;
	int64		total;

	if (f == NULL)
	{
		Relation	rel = table_open(input, AccessShareLock);

		f = window_fold_begin(p, b, RelationGetDescr(rel));
		table_close(rel, NoLock);
		window_fold_relation(f, input);
	}
	else if (f->late_into)
	{
		table_close(f->late_into, NoLock);
		f->late_into = NULL;
	}
	fold_note_memory(f);

	/* the watermark the batch leaves: append mode writes the windows it closes straight to the target */
	if (b->seen)
	{
		/* deduplication saw the batch's rows first, and dropped the late ones */
		f->et = *b->seen;
		f->dropped += b->seen->late;
	}
	f->has_new_w = f->has_w;
	f->new_w = watermark_next(f->w, &f->has_new_w, &f->et, f->delay, f->has_delay);
	if (f->sql == NULL)
		f->sql = window_sql(f);
	s = f->sql;
	window_write_late(f, input);

	if (strcmp(f->mode, "append") == 0)
	{
		/* a batch in parts has its windows in the state table: write them from there */
		if (f->parts > 0)
			window_merge_into_state(f, "all");
		else if (f->gap_us > 0)
			session_absorb(f);
		if (f->gap_us > 0)
		{
			/* what the state kept and what the batch folded are sessions apart */
			if (f->has_new_w)
				written = window_exec(f, psprintf("WITH old AS (DELETE FROM %1$s WHERE window_end <= $3"
												  "   RETURNING window_start, window_end, %2$s%3$s)"
												  " INSERT INTO %4$s (window_start, window_end, %2$s%5$s)"
												  " SELECT window_start, window_end, %2$s%6$s FROM"
												  "  (SELECT * FROM old UNION ALL"
												  "   SELECT window_start, window_end, %2$s%3$s FROM %7$s) AS u",
												  s->state, s->gsel, s->part_names, s->target, s->names,
												  s->finals, s->partials),
									  "closed", SPI_OK_INSERT);
		}
		else if (f->has_new_w &&
			window_exec(f, psprintf("SELECT 1 FROM %s WHERE window_end <= $3 LIMIT 1", s->state), "closed",
						SPI_OK_SELECT) > 0)
			written = window_exec(f, psprintf("WITH old AS (DELETE FROM %1$s WHERE window_end <= $3"
											  "   RETURNING window_start, window_end, %2$s%3$s),"
											  " closing (window_start, window_end, %2$s%3$s) AS"
											  "  (SELECT window_start, window_end, %2$s%4$s FROM"
											  "    (SELECT window_start, window_end, %2$s%3$s FROM %5$s"
											  "     UNION ALL SELECT * FROM old) AS u"
											  "   GROUP BY window_start, window_end%6$s)"
											  " INSERT INTO %7$s (window_start, window_end, %2$s%8$s)"
											  " SELECT window_start, window_end, %2$s%9$s FROM closing",
											  s->state, s->gsel, s->part_names, s->combines, s->partials,
											  s->gkeys, s->target, s->names, s->finals),
								  "closed", SPI_OK_INSERT);
		else if (f->has_new_w)
			written = window_exec(f, psprintf("INSERT INTO %s (window_start, window_end, %s%s)"
											  " SELECT window_start, window_end, %s%s FROM %s",
											  s->target, s->gsel, s->names, s->gsel, s->finals, s->partials),
								  "closed", SPI_OK_INSERT);
		window_merge_into_state(f, "open");
		removed = written;
	}
	else
	{
		window_merge_into_state(f, "all");
		if (strcmp(f->mode, "update") == 0)
		{
			written = window_exec(f, psprintf("MERGE INTO %1$s AS t"
											  " USING (SELECT window_start, window_end, %2$s%3$s FROM %4$s"
											  "        WHERE sluice_batch = $1) AS s(window_start, window_end, %2$s%5$s)"
											  " ON t.window_start = s.window_start AND t.window_end = s.window_end%6$s"
											  " WHEN MATCHED THEN UPDATE SET %7$s"
											  " WHEN NOT MATCHED THEN INSERT (window_start, window_end, %2$s%5$s)"
											  "  VALUES (s.window_start, s.window_end, %8$s%9$s)",
											  s->target, s->gsel, s->finals, s->state, s->names, s->gjoin,
											  s->sets, s->gvalues, s->values),
								  "all", SPI_OK_MERGE);
			if (f->has_new_w)
				removed = window_exec(f, psprintf("DELETE FROM %s WHERE window_end <= $3", s->state), "all",
									  SPI_OK_DELETE);
		}
		else
		{
			window_exec(f, psprintf("DELETE FROM %s", s->target), "all", SPI_OK_DELETE);
			written = window_exec(f, psprintf("INSERT INTO %s (window_start, window_end, %s%s)"
											  " SELECT window_start, window_end, %s%s FROM %s",
											  s->target, s->gsel, s->names, s->gsel, s->finals, s->state),
								  "all", SPI_OK_INSERT);
		}
	}
	window_exec(f, psprintf("SELECT count(*) FROM %s", s->state), "all", SPI_OK_SELECT);
	total = spi_int64(0, 1);

	/* the batch's row: watermarks, event time, state */
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int32GetDatum(p->id);
	values[1] = Int64GetDatum(b->id);
	values[2] = TimestampTzGetDatum(f->new_w);
	nulls[2] = f->has_new_w ? ' ' : 'n';
	values[3] = TimestampTzGetDatum(f->w);
	nulls[3] = f->has_w ? ' ' : 'n';
	values[4] = TimestampTzGetDatum(f->et.min);
	values[5] = TimestampTzGetDatum(f->et.max);
	values[10] = TimestampTzGetDatum(event_times_avg(&f->et));
	if (f->et.n == 0)
		nulls[4] = nulls[5] = nulls[10] = 'n';
	values[6] = Int64GetDatum(f->dropped);
	values[7] = Int64GetDatum(total);
	values[8] = Int64GetDatum(strcmp(f->mode, "append") == 0 ? f->folded : f->upserted);
	values[9] = Int64GetDatum(removed);
	catalog_exec("WITH w AS (UPDATE sluice.pipeline SET watermark = $3"
				 "  WHERE id = $1 AND watermark IS DISTINCT FROM $3)"
				 " UPDATE sluice.batch SET watermark = $4, next_watermark = $3, event_time_min = $5,"
				 "  event_time_max = $6, num_rows_dropped_by_watermark = $7, state_rows_total = $8,"
				 "  state_rows_updated = $9, state_rows_removed = $10, event_time_avg = $11"
				 " WHERE pipeline_id = $1 AND batch_id = $2",
				 11, (Oid[]) {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
					 TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, INT8OID, TIMESTAMPTZOID},
				 values, nulls, SPI_OK_UPDATE);
	elog(DEBUG1, "sluice: batch " INT64_FORMAT " of pipeline \"%s\" folded " INT64_FORMAT " partials;"
		 " the worker's memory peaked at %zu bytes, %zu of them the batch's",
		 b->id, p->name, f->folded, f->peak, f->table_peak);
	if (f->parts > 0)
		ereport(LOG,
				(errmsg("batch " INT64_FORMAT " of pipeline \"%s\" was folded in %d parts", b->id, p->name,
						f->parts + 1),
				 errdetail("Its partial aggregates outgrew sluice.window_memory (%d kB); each part was merged into the state table.",
						   sluice_window_memory)));
	b->sink_state = NULL;
	MemoryContextDelete(f->cxt);
	return written;
}

const SinkRoutine window_sink_routine = {
	.type = "window",
	.direct = false,
	.receiver = window_receiver,
	.write = window_write,
	.late = window_late,
};

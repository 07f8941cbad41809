/*
 * dedupe.c
 *		Streaming deduplication within a watermark: create_pipeline(...,
 *		dedupe => '{columns}'), Spark's dropDuplicatesWithinWatermark.
 *
 * Once the batch is read (and transformed), before its sink sees it, its
 * rows are scanned in the order they were read.  A row whose event time is
 * at or before W, the watermark the batch started with, or is NULL, is
 * late; a row whose key a row before it in the batch had is a duplicate,
 * and so is the first row of a key that the pipeline's key table holds, an
 * earlier batch's (looked up in its unique index).  Late rows and
 * duplicates are deleted from the relation the sink then reads (a window
 * sink keeps the late ones in its late_rows table first, as it keeps its
 * own), and the other keys go into the key table.  After the batch W
 * advances, and the keys whose event time it passed are forgotten: the
 * table holds what can still come again.  All of it is in the batch's transaction, so a
 * replayed batch reads the same rows in the same order against the same
 * keys, and drops exactly the same rows.
 *
 * The keys are compared in a TupleHashTable with the types' own equality
 * and hash (NULLs equal, as GROUP BY has them), and in the key table's
 * UNIQUE NULLS NOT DISTINCT index with its btree equality (IS NULL for a
 * NULL).  The number of keys remembered is the batch before's, plus those
 * added, less those forgotten.
 *
 * A window sink after it takes the batch's event times and late rows from
 * here (Batch.seen) and moves the watermark itself; for other sinks the
 * watermark and the event-time metrics go to the catalog here.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/lsyscache.h"
#include "utils/relcache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"

#include "sink.h"

/*
 * The key table must have the batch's key columns' types, then the event
 * time and the batch: the owner may have altered her key table, and a datum
 * taken for another type's would crash the worker.
 */
static void
check_key_columns(TupleDesc desc, TupleDesc keydesc, const char *pipeline)
{
	bool		ok = desc->natts == keydesc->natts + 2;

	for (int i = 0; ok && i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped &&
			att->atttypid == (i < keydesc->natts ? TupleDescAttr(keydesc, i)->atttypid :
							  i == keydesc->natts ? TIMESTAMPTZOID : INT8OID);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the key table of pipeline \"%s\" does not have the columns its dedupe made", pipeline),
				 errdetail("It needs the dedupe columns, of the types the batch has, then sluice_event_time and sluice_batch, and no other column."),
				 errhint("The key table was altered: drop the pipeline and create it again.")));
}

/* The key table's unique index on the keys, open. */
static Relation
key_index_open(Relation keys, int nkeys, const char *pipeline)
{
	List	   *indexes = RelationGetIndexList(keys);
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		bool		ok = idx->rd_index->indisunique && idx->rd_index->indnkeyatts == nkeys &&
			idx->rd_rel->relam == BTREE_AM_OID && idx->rd_indexprs == NIL;

		for (int k = 0; ok && k < nkeys; k++)
			ok = idx->rd_index->indkey.values[k] == k + 1;
		if (ok)
			return idx;
		index_close(idx, AccessShareLock);
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the key table of pipeline \"%s\" has no unique index on its keys", pipeline),
			 errhint("The key table was altered: drop the pipeline and create it again.")));
	return NULL;				/* keep the compiler quiet */
}

static int
input_column(TupleDesc desc, const char *name, const char *pipeline)
{
	for (int i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped && strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0)
			return i;
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("column \"%s\" of the dedupe of pipeline \"%s\" is not among the columns the batch has",
					name, pipeline)));
	return -1;					/* keep the compiler quiet */
}

/*
 * Drop the late rows and the duplicates of the batch from input (a
 * temporary table), remember its new keys, forget the ones the watermark
 * passed.
 */
void
dedupe_batch(Pipeline *p, Batch *b, Oid input)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "sluice dedupe", ALLOCSET_DEFAULT_SIZES);
	MemoryContext tablecxt = AllocSetContextCreate(cxt, "sluice dedupe keys", ALLOCSET_DEFAULT_SIZES);
	MemoryContext tempcxt = AllocSetContextCreate(cxt, "sluice dedupe row", ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	Datum		value = Int32GetDatum(p->id);
	EventTimes *seen = palloc0(sizeof(EventTimes));
	bool		isnull;
	char	   *event_time;
	Datum		delay;
	TimestampTz w;
	bool		has_w;
	TimestampTz new_w;
	bool		has_new_w;
	Oid			keys_table;
	bool		window;
	int			nkeys;
	int		   *key_att;
	int			et_att;
	bool		et_is_tz;
	char	   *key_list;
	Relation	rel;
	Relation	keys_rel;
	TupleDesc	desc;
	TupleDesc	keydesc;
	TupleTableSlot *slot;
	TupleTableSlot *keyslot;
	AttrNumber *keycols;
	Oid		   *eqops;
	Oid		   *eqfuncs;
	FmgrInfo   *hashfuncs;
	Oid		   *collations;
	TupleHashTable hash;
	Snapshot	snapshot;
	TableScanDesc scan;
	TidList		drops = {0};
	TidList		late = {0};
	TidList		fresh = {0};
	int64		dups = 0;
	int64		total;
	int64		pruned = 0;
	Relation	key_index;
	IndexScanDesc probe;
	TupleTableSlot *probe_slot;
	ScanKeyData *skeys;
	FmgrInfo   *eqprocs;
	char	   *keys_name;
	char	   *input_name = quote_qualified_identifier("pg_temp", get_rel_name(input));

	/* the settings, under the pipeline's row lock: the batch is in its turn */
	catalog_exec("SELECT p.event_time, p.watermark_delay, p.watermark, p.dedupe_table, p.sink->>'type' = 'window',"
				 "  (SELECT string_agg(quote_ident(k), ', ' ORDER BY o) FROM unnest(p.dedupe) WITH ORDINALITY AS u(k, o))"
				 " FROM sluice.pipeline AS p WHERE p.id = $1 FOR UPDATE",
				 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT);
	if (SPI_processed != 1)
		elog(ERROR, "pipeline %d is gone", p->id);
	event_time = spi_text(0, 1);
	delay = datumCopy(spi_datum(0, 2, &isnull), false, sizeof(Interval));
	w = DatumGetTimestampTz(spi_datum(0, 3, &isnull));
	has_w = !isnull;
	keys_table = DatumGetObjectId(spi_datum(0, 4, &isnull));
	window = DatumGetBool(spi_datum(0, 5, &isnull));
	key_list = spi_text(0, 6);
	keys_name = sink_relation_name(keys_table);
	catalog_exec("SELECT k FROM sluice.pipeline AS p, unnest(p.dedupe) WITH ORDINALITY AS u(k, o)"
				 " WHERE p.id = $1 ORDER BY o", 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT);
	nkeys = (int) SPI_processed;

	rel = table_open(input, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	et_att = input_column(desc, event_time, p->name);
	et_is_tz = TupleDescAttr(desc, et_att)->atttypid == TIMESTAMPTZOID;
	key_att = palloc(sizeof(int) * nkeys);
	keydesc = CreateTemplateTupleDesc(nkeys);
	keycols = palloc(sizeof(AttrNumber) * nkeys);
	eqops = palloc(sizeof(Oid) * nkeys);
	collations = palloc(sizeof(Oid) * nkeys);
	for (int k = 0; k < nkeys; k++)
	{
		Form_pg_attribute att;
		TypeCacheEntry *tc;

		key_att[k] = input_column(desc, spi_text(k, 1), p->name);
		att = TupleDescAttr(desc, key_att[k]);
		TupleDescCopyEntry(keydesc, k + 1, desc, key_att[k] + 1);
		tc = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR | TYPECACHE_HASH_PROC);
		if (!OidIsValid(tc->eq_opr) || !OidIsValid(tc->hash_proc))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot dedupe by column \"%s\" of type %s", NameStr(att->attname),
							format_type_be(att->atttypid)),
					 errdetail("Dedupe keys are looked up in a hash table, and the type has no hash function.")));
		eqops[k] = tc->eq_opr;
		collations[k] = att->attcollation;
		keycols[k] = k + 1;
	}
	execTuplesHashPrepare(nkeys, eqops, &eqfuncs, &hashfuncs);
	hash = BuildTupleHashTableExt(NULL, keydesc, nkeys, keycols, eqfuncs, hashfuncs, collations, 1024, 0,
								  cxt, tablecxt, tempcxt, false);
	slot = table_slot_create(rel, NULL);
	keyslot = MakeSingleTupleTableSlot(keydesc, &TTSOpsVirtual);
	keys_rel = table_open(keys_table, RowExclusiveLock);
	check_key_columns(RelationGetDescr(keys_rel), keydesc, p->name);
	key_index = key_index_open(keys_rel, nkeys, p->name);
	eqprocs = palloc(sizeof(FmgrInfo) * nkeys);
	skeys = palloc(sizeof(ScanKeyData) * nkeys);
	for (int k = 0; k < nkeys; k++)
	{
		Oid			type = key_index->rd_opcintype[k];

		fmgr_info(get_opcode(get_opfamily_member(key_index->rd_opfamily[k], type, type, BTEqualStrategyNumber)),
				  &eqprocs[k]);
	}
	probe_slot = table_slot_create(keys_rel, NULL);

	/* the rows in the order they were read: late ones, and keys seen before in the batch */
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	probe = index_beginscan(keys_rel, key_index, snapshot, nkeys, 0);
	while (table_scan_getnextslot(scan, ForwardScanDirection, slot))
	{
		TimestampTz et;
		bool		isnew;

		slot_getallattrs(slot);
		if (!event_time_get(slot, et_att, et_is_tz, &et))
		{
			seen->late++;
			tid_list_push(&late, &slot->tts_tid);
			continue;
		}
		event_times_add(seen, et);
		if (has_w && et <= w)
		{
			seen->late++;
			tid_list_push(&late, &slot->tts_tid);
			continue;
		}
		ExecClearTuple(keyslot);
		for (int k = 0; k < nkeys; k++)
		{
			keyslot->tts_values[k] = slot->tts_values[key_att[k]];
			keyslot->tts_isnull[k] = slot->tts_isnull[key_att[k]];
		}
		ExecStoreVirtualTuple(keyslot);
		(void) LookupTupleHashEntry(hash, keyslot, &isnew, NULL);
		if (isnew)
		{
			/* first in the batch: is it in the key table, from an earlier one? */
			for (int k = 0; k < nkeys; k++)
			{
				if (keyslot->tts_isnull[k])
					ScanKeyEntryInitialize(&skeys[k], SK_ISNULL | SK_SEARCHNULL, k + 1, InvalidStrategy,
										   InvalidOid, InvalidOid, InvalidOid, (Datum) 0);
				else
					ScanKeyEntryInitializeWithInfo(&skeys[k], 0, k + 1, BTEqualStrategyNumber, InvalidOid,
												   key_index->rd_indcollation[k], &eqprocs[k],
												   keyslot->tts_values[k]);
			}
			index_rescan(probe, skeys, nkeys, NULL, 0);
			isnew = !index_getnext_slot(probe, ForwardScanDirection, probe_slot);
		}
		if (!isnew)
		{
			dups++;
			tid_list_push(&drops, &slot->tts_tid);
			continue;
		}
		tid_list_push(&fresh, &slot->tts_tid);
	}
	index_endscan(probe);
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	ExecDropSingleTupleTableSlot(slot);
	ExecDropSingleTupleTableSlot(probe_slot);
	index_close(key_index, NoLock);
	table_close(keys_rel, NoLock);

	/* the batch's new keys */
	if (fresh.n > 0)
	{
		Datum		args[2] = {Int64GetDatum(b->id), tid_array(fresh.tids, fresh.n)};

		pinned_exec(psprintf("INSERT INTO %s (%s, sluice_event_time, sluice_batch)"
							 " SELECT %s, %s::timestamptz, $1 FROM %s WHERE ctid = ANY ($2)",
							 keys_name, key_list, key_list, quote_identifier(event_time), input_name),
					2, (Oid[]) {INT8OID, TIDARRAYOID}, args, NULL, SPI_OK_INSERT);
	}
	/* the late rows are the sink's to keep, as it keeps its own */
	if (late.n > 0 && p->sink_routine->late)
		p->sink_routine->late(p, b, input, &late, w, has_w);
	for (int64 i = 0; i < late.n; i++)
		tid_list_push(&drops, &late.tids[i]);
	if (drops.n > 0)
	{
		Datum		arg = tid_array(drops.tids, drops.n);

		pinned_exec(psprintf("DELETE FROM %s WHERE ctid = ANY ($1)", input_name),
					1, (Oid[]) {TIDARRAYOID}, &arg, NULL, SPI_OK_DELETE);
	}
	table_close(rel, NoLock);

	/* forget the keys the watermark the batch leaves has passed */
	has_new_w = has_w;
	new_w = watermark_next(w, &has_new_w, seen, delay, true);
	if (has_new_w)
		pruned = pinned_exec(psprintf("DELETE FROM %s WHERE sluice_event_time <= $1", keys_name),
							 1, (Oid[]) {TIMESTAMPTZOID}, (Datum[]) {TimestampTzGetDatum(new_w)}, NULL,
							 SPI_OK_DELETE);

	/* the keys remembered: the batch before's, and what this one added and forgot */
	catalog_exec("SELECT dedupe_state_rows FROM sluice.batch WHERE pipeline_id = $1 AND batch_id < $2"
				 " AND status = 'committed' ORDER BY batch_id DESC LIMIT 1",
				 2, (Oid[]) {INT4OID, INT8OID}, (Datum[]) {value, Int64GetDatum(b->id)}, NULL, SPI_OK_SELECT);
	if (SPI_processed == 1 && (spi_datum(0, 1, &isnull), !isnull))
		total = spi_int64(0, 1) + fresh.n - pruned;
	else
	{
		pinned_exec(psprintf("SELECT count(*) FROM %s", keys_name), 0, NULL, NULL, NULL, SPI_OK_SELECT);
		total = spi_int64(0, 1);
	}

	if (window)
	{
		/* the window sink moves the watermark, from all the batch's event times */
		MemoryContextSwitchTo(oldcxt);
		b->seen = palloc(sizeof(EventTimes));
		*b->seen = *seen;
		catalog_exec("UPDATE sluice.batch SET num_duplicates_dropped = $3, dedupe_state_rows = $4"
					 " WHERE pipeline_id = $1 AND batch_id = $2",
					 4, (Oid[]) {INT4OID, INT8OID, INT8OID, INT8OID},
					 (Datum[]) {value, Int64GetDatum(b->id), Int64GetDatum(dups), Int64GetDatum(total)},
					 NULL, SPI_OK_UPDATE);
	}
	else
	{
		Datum		values[10] = {value, Int64GetDatum(b->id), TimestampTzGetDatum(new_w), TimestampTzGetDatum(w),
			TimestampTzGetDatum(seen->min), TimestampTzGetDatum(seen->max),
			TimestampTzGetDatum(event_times_avg(seen)), Int64GetDatum(seen->late), Int64GetDatum(dups),
		Int64GetDatum(total)};
		char		nulls[10] = "          ";

		nulls[2] = has_new_w ? ' ' : 'n';
		nulls[3] = has_w ? ' ' : 'n';
		if (seen->n == 0)
			nulls[4] = nulls[5] = nulls[6] = 'n';
		catalog_exec("WITH w AS (UPDATE sluice.pipeline SET watermark = $3"
					 "  WHERE id = $1 AND watermark IS DISTINCT FROM $3)"
					 " UPDATE sluice.batch SET watermark = $4, next_watermark = $3, event_time_min = $5,"
					 "  event_time_max = $6, event_time_avg = $7, num_rows_dropped_by_watermark = $8,"
					 "  num_duplicates_dropped = $9, dedupe_state_rows = $10"
					 " WHERE pipeline_id = $1 AND batch_id = $2",
					 10, (Oid[]) {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
						 TIMESTAMPTZOID, TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID},
					 values, nulls, SPI_OK_UPDATE);
		MemoryContextSwitchTo(oldcxt);
	}
	MemoryContextDelete(cxt);
}

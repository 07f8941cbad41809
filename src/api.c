/*
 * api.c
 *		SQL-callable functions that need C: those that change the catalog
 *		(create_pipeline, start, stop, drop_pipeline), run_once(), the live
 *		worker status behind sluice.pipelines, and waking the launcher.
 *		The rest of the SQL interface is in sql/sluice--*.sql.
 *
 * The functions that change the catalog look the pipeline up, and check
 * everything, as their caller: row-level security shows a user only her
 * own pipelines.  Only the write itself is made as the extension's owner
 * (catalog_exec), with the caller recorded as the pipeline's owner.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/dependency.h"
#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "source.h"
#include "sluice.h"

/* how long run_once() waits for the worker of a just-stopped pipeline to exit */
#define RUN_ONCE_WAIT_MS 10000

static bool
role_can_login(Oid role)
{
	HeapTuple	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	bool		can;

	if (!HeapTupleIsValid(tup))
		return false;
	can = ((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin;
	ReleaseSysCache(tup);
	return can;
}

static void
check_database(void)
{
	if (strcmp(get_database_name(MyDatabaseId), sluice_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("sluice pipelines run only in database \"%s\"", sluice_database),
				 errhint("Set sluice.database in postgresql.conf and restart the server.")));
}

/*
 * A window sink's group_by columns and a dedupe's key columns key a hash
 * table: their types need a hash function, checked here rather than at the
 * first batch.  cols: the columns the sink receives.
 */
static void
check_hashable(Datum cols, Datum sink, Datum dedupe)
{
	catalog_exec("SELECT x->>'name', (x->>'type')::regtype::oid, k.what FROM jsonb_array_elements($1) AS x"
				 " JOIN (SELECT unnest($3) AS name, 'dedupe by' AS what"
				 "       UNION ALL SELECT jsonb_array_elements_text(CASE WHEN jsonb_typeof($2->'group_by') = 'array'"
				 "                                                   THEN $2->'group_by' END), 'group windows by') AS k"
				 "   ON k.name = x->>'name'",
				 3, (Oid[]) {JSONBOID, JSONBOID, TEXTARRAYOID}, (Datum[]) {cols, sink, dedupe},
				 dedupe ? NULL : "  n", SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			type = DatumGetObjectId(spi_datum(i, 2, &isnull));
		TypeCacheEntry *tc = lookup_type_cache(type, TYPECACHE_EQ_OPR | TYPECACHE_HASH_PROC);

		if (!OidIsValid(tc->eq_opr) || !OidIsValid(tc->hash_proc))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot %s column \"%s\" of type %s", spi_text(i, 3), spi_text(i, 1),
							format_type_be(type)),
					 errdetail("Its rows are looked up in a hash table, and the type has no hash function.")));
	}
}

/* A pipeline's worker counts: 1 <= min_workers <= max_workers <= sluice.max_workers. */
static void
check_workers(const char *name, bool min_null, int min_workers, bool max_null, int max_workers)
{
	if (min_null || max_null)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("min_workers and max_workers of pipeline \"%s\" must not be null", name)));
	if (min_workers < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("min_workers of pipeline \"%s\" must be at least 1", name)));
	if (max_workers < min_workers)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_workers of pipeline \"%s\" must not be less than min_workers (%d)", name,
						min_workers)));
	if (max_workers > sluice_max_workers)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_workers of pipeline \"%s\" is more than sluice.max_workers (%d)", name,
						sluice_max_workers),
				 errdetail("Every worker of every pipeline takes one of the sluice.max_workers slots."),
				 errhint("Give fewer workers, or raise sluice.max_workers and restart the server.")));
}

/*
 * sluice.create_pipeline(name, source, sink, trigger, transform, event_time,
 *		watermark_delay, backpressure, min_workers, max_workers, max_retries)
 *		returns void
 *
 * sluice._pipeline_row() checks everything as the caller and returns the
 * catalog values; we store them as the extension's owner, with the caller
 * as the owner, and make a window sink's state table as the caller.
 */
PG_FUNCTION_INFO_V1(sluice_create_pipeline);
Datum
sluice_create_pipeline(PG_FUNCTION_ARGS)
{
	Oid			argtypes[7] = {TEXTOID, JSONBOID, JSONBOID, TEXTOID, TEXTOID, TEXTOID, INTERVALOID};
	Datum		args[7];
	char		argnulls[7];
	Oid			rowtypes[15] = {TEXTOID, REGROLEOID, JSONBOID, JSONBOID, REGCLASSOID, REGCLASSOID, TEXTOID,
		TEXTOID, TEXTOID, TEXTOID, INTERVALOID, BOOLOID, INT4OID, INT4OID, INT4OID};
	Datum		row[15];
	char		rownulls[15];
	bool		isnull;
	bool		window;
	Datum		cols;
	Datum		dedupe;
	int32		id;

	check_database();
	/* the SQL function of an older version has fewer arguments */
	if (PG_NARGS() > 7 && PG_ARGISNULL(7))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("backpressure of a pipeline must not be null")));
	for (int i = 0; i < 7; i++)
	{
		args[i] = PG_GETARG_DATUM(i);
		argnulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}

	SPI_connect();
	pinned_exec("SELECT r.new_source, r.new_sink, r.target, r.late_rows, r.sink_function, r.cols,"
				"  r.new_sink->>'type' = 'window'"
				" FROM sluice._pipeline_row($1, $2, $3, $4, $5, $6, $7) AS r",
				7, argtypes, args, argnulls, SPI_OK_SELECT);

	/* name, owner, source, sink, target, late_rows, sink_function, trigger, transform, event_time, delay */
	row[0] = args[0];
	row[1] = ObjectIdGetDatum(GetUserId());
	memset(rownulls, ' ', sizeof(rownulls));
	for (int i = 0; i < 5; i++)
	{
		row[2 + i] = spi_datum(0, 1 + i, &isnull);
		rownulls[2 + i] = isnull ? 'n' : ' ';
	}
	for (int i = 0; i < 4; i++)
	{
		row[7 + i] = args[3 + i];
		rownulls[7 + i] = argnulls[3 + i];
	}
	row[11] = BoolGetDatum(PG_NARGS() > 7 ? PG_GETARG_BOOL(7) : true);
	row[12] = Int32GetDatum(PG_NARGS() > 9 ? PG_GETARG_INT32(8) : 1);
	row[13] = Int32GetDatum(PG_NARGS() > 9 ? PG_GETARG_INT32(9) : 1);
	if (PG_NARGS() > 9)
		check_workers(TextDatumGetCString(args[0]), PG_ARGISNULL(8), DatumGetInt32(row[12]),
					  PG_ARGISNULL(9), DatumGetInt32(row[13]));
	/* max_retries: transient failures in a row before the pipeline fails; NULL for no end */
	row[14] = PG_NARGS() > 10 && !PG_ARGISNULL(10) ? PG_GETARG_DATUM(10) : (Datum) 0;
	rownulls[14] = PG_NARGS() > 10 && !PG_ARGISNULL(10) ? ' ' : 'n';
	if (rownulls[14] == ' ' && DatumGetInt32(row[14]) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_retries of pipeline \"%s\" must not be negative", TextDatumGetCString(args[0])),
				 errhint("NULL retries a batch that fails for a while for ever.")));
	cols = spi_datum(0, 6, &isnull);	/* the columns the sink receives */
	window = DatumGetBool(spi_datum(0, 7, &isnull));
	/* dedupe, or event_time and watermark_delay for a window sink alone */
	dedupe = PG_NARGS() > 11 && !PG_ARGISNULL(11) ? PG_GETARG_DATUM(11) : (Datum) 0;
	pinned_exec("SELECT sluice._check_dedupe($1, $2, $3, $4, $5, $6)", 6,
				(Oid[]) {TEXTOID, JSONBOID, JSONBOID, TEXTOID, INTERVALOID, TEXTARRAYOID},
				(Datum[]) {args[0], args[2], cols, args[5], args[6], dedupe},
				(char[]) {' ', ' ', ' ', argnulls[5], argnulls[6], dedupe ? ' ' : 'n'}, SPI_OK_SELECT);
	check_hashable(cols, args[2], dedupe);

	if (catalog_exec("SELECT 1 FROM sluice.pipeline WHERE name = $1", 1, rowtypes, row, NULL,
					 SPI_OK_SELECT) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("pipeline \"%s\" already exists", TextDatumGetCString(args[0]))));
	catalog_exec("INSERT INTO sluice.pipeline (name, owner, source, sink, target, late_rows, sink_function,"
				 "  trigger, transform, event_time, watermark_delay, backpressure, min_workers, max_workers,"
				 "  max_retries)"
				 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
				 15, rowtypes, row, rownulls, SPI_OK_INSERT_RETURNING);
	id = DatumGetInt32(spi_datum(0, 1, &isnull));
	owners_add(GetUserId());
	sluice_wake_launcher();		/* which keeps the owners from the catalog */

	if (window || dedupe)
	{
		Oid			types[5] = {INT4OID, TEXTOID, JSONBOID, JSONBOID, TEXTARRAYOID};
		Datum		values[5] = {Int32GetDatum(id), args[0], 0, cols, dedupe};
		Datum		sink;

		/* the state tables belong to the owner, whose worker writes them */
		catalog_exec("SELECT sluice._sink(p) FROM sluice.pipeline AS p WHERE id = $1",
					 1, types, values, NULL, SPI_OK_SELECT);
		sink = spi_datum(0, 1, &isnull);
		if (window)
		{
			values[2] = sink;
			pinned_exec("SELECT sluice._window_create_state($1, $2, $3, $4)", 4, types, values, NULL,
						SPI_OK_SELECT);
			catalog_exec("UPDATE sluice.pipeline SET state_table = $2 WHERE id = $1",
						 2, (Oid[]) {INT4OID, REGCLASSOID}, (Datum[]) {values[0], spi_datum(0, 1, &isnull)},
						 NULL, SPI_OK_UPDATE);
		}
		if (dedupe)
		{
			values[2] = sink;
			pinned_exec("SELECT sluice._dedupe_create_state($1, $2, $3, $4, $5)", 5, types, values, NULL,
						SPI_OK_SELECT);
			catalog_exec("UPDATE sluice.pipeline SET dedupe = $3, dedupe_table = $2 WHERE id = $1",
						 3, (Oid[]) {INT4OID, REGCLASSOID, TEXTARRAYOID},
						 (Datum[]) {values[0], spi_datum(0, 1, &isnull), dedupe}, NULL, SPI_OK_UPDATE);
		}
	}
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * sluice.alter_pipeline(name, trigger, transform, backpressure, limits...,
 *		source, sink, event_time, watermark_delay, min_workers, max_workers)
 *		returns void
 *
 * sluice._alter_row() checks the change as the caller, who must own the
 * pipeline, and returns the new values; we store them as the extension's
 * owner.  A running worker takes them at its next plan; the launcher,
 * woken at commit, the worker counts.
 */
PG_FUNCTION_INFO_V1(sluice_alter_pipeline);
Datum
sluice_alter_pipeline(PG_FUNCTION_ARGS)
{
	Oid			argtypes[16] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID, INT4OID, INT8OID, INT8OID, INT4OID,
		INT8OID, INTERVALOID, JSONBOID, JSONBOID, TEXTOID, INTERVALOID, INT4OID, INT4OID};
	Datum		args[16];
	char		argnulls[16];
	Datum		row[7];
	char		rownulls[7];
	bool		isnull;

	check_database();
	for (int i = 0; i < 16; i++)
	{
		args[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		argnulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	SPI_connect();
	pinned_exec("SELECT r.id, r.source, r.trigger, r.transform, r.backpressure, r.min_workers, r.max_workers"
				" FROM sluice._alter_row($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) AS r",
				16, argtypes, args, argnulls, SPI_OK_SELECT);
	for (int i = 0; i < 7; i++)
	{
		row[i] = spi_datum(0, 1 + i, &isnull);
		rownulls[i] = isnull ? 'n' : ' ';
	}
	check_workers(TextDatumGetCString(args[0]), false, DatumGetInt32(row[5]), false, DatumGetInt32(row[6]));
	catalog_exec("UPDATE sluice.pipeline SET source = $2, trigger = $3, transform = $4, backpressure = $5,"
				 "  min_workers = $6, max_workers = $7"
				 " WHERE id = $1",
				 7, (Oid[]) {INT4OID, JSONBOID, TEXTOID, TEXTOID, BOOLOID, INT4OID, INT4OID}, row, rownulls,
				 SPI_OK_UPDATE);
	SPI_finish();
	sluice_wake_launcher();		/* which looks at the worker counts */
	PG_RETURN_VOID();
}

/* Drop a pipeline's state table, as the caller, who must be able to. */
static void
drop_state_table(Oid relid)
{
	ObjectAddress obj;

	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		return;					/* dropped already */
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
	obj.classId = RelationRelationId;
	obj.objectId = relid;
	obj.objectSubId = 0;
	performDeletion(&obj, DROP_RESTRICT, 0);
}

/*
 * sluice._set_state(name text, new_state text) returns void
 *
 * start(), stop() and drop_pipeline() (new_state NULL).  The launcher is
 * woken when the transaction commits.
 */
PG_FUNCTION_INFO_V1(sluice_set_state);
Datum
sluice_set_state(PG_FUNCTION_ARGS)
{
	Datum		values[2];
	bool		isnull;
	Datum		state_table;
	Datum		dedupe_table;
	bool		drop = PG_ARGISNULL(1);

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the name of a pipeline must not be null")));
	if (!drop && strcmp(text_to_cstring(PG_GETARG_TEXT_PP(1)), "running") != 0 &&
		strcmp(text_to_cstring(PG_GETARG_TEXT_PP(1)), "stopped") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid pipeline state \"%s\"", text_to_cstring(PG_GETARG_TEXT_PP(1)))));

	values[0] = PG_GETARG_DATUM(0);
	SPI_connect();
	/* as the caller: row-level security shows her own pipelines only */
	if (pinned_exec("SELECT id, state_table, dedupe_table FROM sluice.pipeline WHERE name = $1",
					1, (Oid[]) {TEXTOID}, values, NULL, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("pipeline \"%s\" does not exist", TextDatumGetCString(values[0]))));
	values[0] = spi_datum(0, 1, &isnull);
	state_table = spi_datum(0, 2, &isnull);
	state_table = isnull ? (Datum) 0 : state_table;
	dedupe_table = spi_datum(0, 3, &isnull);
	dedupe_table = isnull ? (Datum) 0 : dedupe_table;
	if (drop)
	{
		catalog_exec("DELETE FROM sluice.pipeline WHERE id = $1", 1, (Oid[]) {INT4OID}, values, NULL,
					 SPI_OK_DELETE);
		if (state_table)
			drop_state_table(DatumGetObjectId(state_table));
		if (dedupe_table)
			drop_state_table(DatumGetObjectId(dedupe_table));
	}
	else
	{
		/* a new run when it starts (progress_json's runId) */
		values[1] = PG_GETARG_DATUM(1);
		catalog_exec("UPDATE sluice.pipeline SET state = $2,"
					 "  run_id = CASE WHEN $2 = 'running' AND state <> 'running' THEN gen_random_uuid() ELSE run_id END"
					 " WHERE id = $1", 2,
					 (Oid[]) {INT4OID, TEXTOID}, values, NULL, SPI_OK_UPDATE);
	}
	SPI_finish();
	/* a warm run_once() worker of a dropped pipeline has nothing to wait for */
	if (drop)
		slot_retire_warm(DatumGetInt32(values[0]));
	sluice_wake_launcher();
	PG_RETURN_VOID();
}

PG_FUNCTION_INFO_V1(sluice_wake);
Datum
sluice_wake(PG_FUNCTION_ARGS)
{
	sluice_wake_launcher();
	PG_RETURN_VOID();
}

/*
 * Whether the caller may see a pipeline's live values: as pg_stat_activity
 * shows a session's, to its role's members and to pg_read_all_stats.
 */
static bool
may_see_pipeline(Oid owner)
{
	return has_privs_of_role(GetUserId(), owner) ||
		has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
}

/*
 * sluice._workers() returns setof (pipeline_id int, pid int, batches bigint,
 *		current_batch bigint), of the pipelines the caller may see
 */
PG_FUNCTION_INFO_V1(sluice_workers);
Datum
sluice_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SluiceSlot *slots = palloc(sizeof(SluiceSlot) * sluice_max_workers);

	InitMaterializedSRF(fcinfo, 0);
	/* a copy, so that no catalog lookup happens under the lock */
	LWLockAcquire(sluice_shared->lock, LW_SHARED);
	memcpy(slots, sluice_shared->slots, sizeof(SluiceSlot) * sluice_max_workers);
	LWLockRelease(sluice_shared->lock);
	for (int i = 0; i < sluice_max_workers; i++)
	{
		SluiceSlot *slot = &slots[i];
		Datum		values[5];
		bool		nulls[5] = {false, false, false, false, true};	/* 0.1 had a fifth column */

		/* a warm run_once() worker runs nothing until it is called */
		if (slot->pipeline_id == 0 || slot->worker_pid == 0 || slot->warm || slot->leaving ||
			!may_see_pipeline(slot->owner))
			continue;
		values[0] = Int32GetDatum(slot->pipeline_id);
		values[1] = Int32GetDatum(slot->worker_pid);
		values[2] = Int64GetDatum(slot->batches_committed);
		values[3] = Int64GetDatum(slot->current_batch);
		nulls[3] = slot->current_batch == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * sluice._backlog(pipeline_id int) returns bigint
 *
 * What the pipeline's source had left to read at its last plan, from
 * shared memory; NULL when no worker looked since the server started, or
 * when the caller may not see the pipeline.
 */
PG_FUNCTION_INFO_V1(sluice_backlog);
Datum
sluice_backlog(PG_FUNCTION_ARGS)
{
	SluicePipelineStats s;

	if (!stats_get(PG_GETARG_INT32(0), &s) || !may_see_pipeline(s.owner))
		PG_RETURN_NULL();
	PG_RETURN_INT64(s.backlog);
}

/*
 * sluice._live(pipeline_id int) returns (throttled_by text, desired_workers
 *		int, attempts int, next_retry_at timestamptz)
 *
 * From shared memory: why backpressure held the pipeline's batches back at
 * its last plan (the database under pressure), how many workers the
 * launcher's autoscaler wants it to have, and the attempts of a batch that
 * failed for a while and when it is tried again.  Each is NULL when there
 * is nothing to say, or when the caller may not see the pipeline.
 */
PG_FUNCTION_INFO_V1(sluice_live);
Datum
sluice_live(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[4] = {0};
	bool		nulls[4] = {true, true, true, true};
	SluicePipelineStats st;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "sluice._live() must return a record");
	if (stats_get(PG_GETARG_INT32(0), &st) && may_see_pipeline(st.owner))
	{
		if (st.throttled_by[0] != '\0')
			values[0] = CStringGetTextDatum(st.throttled_by);
		nulls[0] = st.throttled_by[0] == '\0';
		values[1] = Int32GetDatum(st.desired_workers);
		nulls[1] = st.desired_workers == 0;
		values[2] = Int32GetDatum(st.attempts);
		nulls[2] = st.attempts == 0;
		values[3] = TimestampTzGetDatum(st.next_retry_at);
		nulls[3] = st.next_retry_at == 0;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}

/*
 * sluice.metrics() returns setof (pipeline, running, failed, the counters,
 *		the gauges): one row per pipeline the caller may see, as
 *		pg_stat_activity shows sessions (its own, or all with
 *		pg_read_all_stats, which pg_monitor has), for postgres_exporter
 *		(contrib/prometheus/sluice.yaml).
 *
 * Numbers only: a source's options (a Kafka password) are never read out.
 * The counters come from the committed batches, so they are exactly-once
 * too; the gauges from the last batch and shared memory.
 */
PG_FUNCTION_INFO_V1(sluice_metrics);
Datum
sluice_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	uint64		n;

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	n = catalog_exec("SELECT p.id, p.name, p.owner::oid, p.state = 'running', p.state = 'failed',"
					 "  coalesce(t.batches, 0), coalesce(t.input_rows, 0), coalesce(t.sink_rows, 0),"
					 "  coalesce(t.rejected, 0), coalesce(t.late, 0),"
					 "  (SELECT count(*) FROM sluice.error AS e WHERE e.pipeline_id = p.id"
					 "    AND e.sqlstate NOT LIKE '01%' AND e.sqlstate <> '00000'),"
					 "  extract(epoch FROM p.watermark)::float8,"
					 "  extract(epoch FROM last.event_time_max - p.watermark)::float8,"
					 "  (last.durations->>'total')::float8 / 1000, last.state_rows_total"
					 " FROM sluice.pipeline AS p"
					 " LEFT JOIN LATERAL (SELECT count(*) AS batches, sum(b.input_rows)::int8 AS input_rows,"
					 "    sum(b.sink_rows)::int8 AS sink_rows, sum(b.rejected_rows)::int8 AS rejected,"
					 "    sum(b.num_rows_dropped_by_watermark)::int8 AS late"
					 "   FROM sluice.batch AS b WHERE b.pipeline_id = p.id AND b.status = 'committed') AS t ON true"
					 " LEFT JOIN LATERAL (SELECT b.durations, b.event_time_max, b.state_rows_total"
					 "   FROM sluice.batch AS b WHERE b.pipeline_id = p.id AND b.status = 'committed'"
					 "   ORDER BY b.batch_id DESC LIMIT 1) AS last ON true"
					 " ORDER BY p.name",
					 0, NULL, NULL, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
	{
		Datum		values[17];
		bool		nulls[17];
		bool		isnull;
		int32		id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		SluicePipelineStats st;
		bool		live;

		if (!may_see_pipeline(DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull))))
			continue;
		live = stats_get(id, &st);
		values[0] = spi_datum(i, 2, &nulls[0]);
		values[1] = Int32GetDatum(DatumGetBool(spi_datum(i, 4, &nulls[1])) ? 1 : 0);
		values[2] = Int32GetDatum(DatumGetBool(spi_datum(i, 5, &nulls[2])) ? 1 : 0);
		for (int c = 3; c < 9; c++)		/* the counters */
			values[c] = spi_datum(i, c + 3, &nulls[c]);
		values[9] = Int64GetDatum(live ? st.backlog : 0);
		nulls[9] = !live;
		for (int c = 10; c < 13; c++)	/* watermark, its lag, the last batch's duration */
			values[c] = spi_datum(i, c + 2, &nulls[c]);
		values[13] = Int32GetDatum(slot_count(id, true));
		nulls[13] = false;
		values[14] = Int32GetDatum(live ? st.desired_workers : 0);
		nulls[14] = !live || st.desired_workers == 0;
		values[15] = spi_datum(i, 15, &nulls[15]);
		values[16] = Int32GetDatum(live ? st.attempts : 0);
		nulls[16] = false;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}

/*
 * Reserve a slot for a run_once() of a pipeline and start its worker; the
 * worker of a pipeline that was just stopped may still be on its way out,
 * so give it a little time.
 */
static int
run_once_start(int32 id, Oid owner, const char *name, uint64 *generation, BackgroundWorkerHandle **handle)
{
	SluiceWorkerArgs args;
	int			slotno;

	for (int waited = 0;; waited += 100)
	{
		slotno = slot_reserve(id, owner, MyProcPid, 1, generation);
		if (slotno >= 0)
			break;
		if (slot_count(id, false) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("no free sluice worker slot to run pipeline \"%s\"", name),
					 errdetail("All %d slots are taken by running pipelines and other run_once() calls.",
							   sluice_max_workers),
					 errhint("Stop a pipeline, or raise sluice.max_workers and restart the server.")));
		if (waited >= RUN_ONCE_WAIT_MS)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("pipeline \"%s\" is being run by another worker", name),
					 errdetail("Another sluice.run_once() call is running it, or its stopped worker did not exit within %d seconds.",
							   RUN_ONCE_WAIT_MS / 1000),
					 errhint("Wait for the other call to return, then try again.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	memset(&args, 0, sizeof(args));
	args.database = MyDatabaseId;
	args.owner = owner;
	args.pipeline_id = id;
	args.generation = *generation;
	args.run_once = true;
	/*
	 * A warm worker whose slot we took exits at once, but its background
	 * worker entry is free only once it is gone: give it a second.
	 */
	for (int tries = 0; (*handle = sluice_start_worker(slotno, &args, MyProcPid)) == NULL && tries < 20; tries++)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 50, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	if (*handle == NULL)
	{
		slot_release(slotno, *generation);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a worker for pipeline \"%s\"", name),
				 errhint("Raise max_worker_processes.")));
	}
	return slotno;
}

/*
 * Wait until the worker of a slot served our request or exited; handle is
 * the worker's if we started it (NULL for a warm one), which tells of a
 * worker that never got to its slot.
 */
static void
run_once_wait(SluiceSlot *slot, uint64 generation, BackgroundWorkerHandle *handle)
{
	for (;;)
	{
		bool		done;
		pid_t		pid;

		LWLockAcquire(sluice_shared->lock, LW_SHARED);
		done = slot->generation != generation || slot->served == slot->request || slot->worker_done;
		LWLockRelease(sluice_shared->lock);
		if (done || (handle && GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED))
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * sluice.run_once(name text) returns bigint
 *
 * Spark's availableNow: a worker drains what the source holds now, batch by
 * batch, through the same code path as a running pipeline, while we wait.
 * Returns the number of batches committed; a failure is raised here with the
 * worker's error, after the worker recorded it like any other.
 */
PG_FUNCTION_INFO_V1(sluice_run_once);
Datum
sluice_run_once(PG_FUNCTION_ARGS)
{
	text	   *name = PG_GETARG_TEXT_PP(0);
	Oid			type = TEXTOID;
	Datum		value = PointerGetDatum(name);
	int32		id;
	Oid			owner;
	char	   *state;
	int			slotno;
	uint64		generation;
	uint64		request = 1;
	uint64		hash;
	BackgroundWorkerHandle *handle;
	SluiceSlot *slot;
	SluiceSlot	result;

	check_extension_version();
	check_database();

	/*
	 * The worker is another session: it would wait for every lock this
	 * transaction holds on what the batch touches, while we wait for it.
	 */
	if (IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("sluice.run_once() cannot run inside a transaction block"),
				 errdetail("The pipeline's worker runs in a session of its own and would wait for this transaction's locks."),
				 errhint("Call it on its own, outside BEGIN ... COMMIT.")));

	SPI_connect();
	/* as the caller: she sees her own pipelines only */
	if (pinned_exec("SELECT id, owner, state FROM sluice.pipeline WHERE name = $1",
					1, &type, &value, NULL, SPI_OK_SELECT) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("pipeline \"%s\" does not exist", text_to_cstring(name))));
	id = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &(bool) {0}));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &(bool) {0}));
	state = pstrdup(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3));
	SPI_finish();

	/* a worker connects as the owner */
	if (!role_can_login(owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the owner of pipeline \"%s\" cannot run it", text_to_cstring(name)),
				 GetUserNameFromId(owner, true)
				 ? errdetail("Role %s cannot log in.", quote_identifier(GetUserNameFromId(owner, true)))
				 : errdetail("Its owner no longer exists."),
				 errhint("Pipeline workers connect as the pipeline's owner: give it back LOGIN.")));
	if (strcmp(state, "running") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("pipeline \"%s\" is running", text_to_cstring(name)),
				 errhint("Stop it with sluice.stop() first; its worker already processes what arrives.")));

	/* its warm worker, if it has one; else a new one */
	hash = settings_hash(owner);
	slotno = slot_claim_warm(id, owner, hash, &generation, &request);
	handle = NULL;
	if (slotno < 0)
		slotno = run_once_start(id, owner, text_to_cstring(name), &generation, &handle);
	slot = &sluice_shared->slots[slotno];

	for (;;)
	{
		bool		done;

		PG_TRY();
		{
			run_once_wait(slot, generation, handle);
		}
		PG_CATCH();
		{
			/* cancelled: stop the worker; its batch rolls back */
			LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
			if (slot->generation == generation)
			{
				if (slot->worker_pid != 0)
					kill(slot->worker_pid, SIGTERM);
				slot->waiter_pid = 0;
				slot->waiter_latch = NULL;
				if (slot->worker_done || slot->worker_pid == 0)
					slot->pipeline_id = 0;
			}
			LWLockRelease(sluice_shared->lock);
			if (handle)
				TerminateBackgroundWorker(handle);
			PG_RE_THROW();
		}
		PG_END_TRY();

		LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
		memcpy(&result, slot, sizeof(SluiceSlot));
		slot->waiter_pid = 0;
		slot->waiter_latch = NULL;
		if (slot->worker_done || slot->worker_pid == 0)
			slot->pipeline_id = 0;
		/* the slot may be taken now: a pipeline may be waiting for one */
		if (sluice_shared->launcher_latch)
			SetLatch(sluice_shared->launcher_latch);
		LWLockRelease(sluice_shared->lock);
		done = result.served == request || result.failed || handle != NULL || result.taken == request;

		/* a warm worker that exited before it took the request: start one */
		if (done)
			break;
		slotno = run_once_start(id, owner, text_to_cstring(name), &generation, &handle);
		slot = &sluice_shared->slots[slotno];
		request = 1;
	}

	if (result.failed)
		ereport(ERROR,
				(errcode(result.sqlerrcode),
				 errmsg_internal("%s", result.message),
				 result.detail[0] ? errdetail_internal("%s", result.detail) : 0,
				 result.hint[0] ? errhint("%s", result.hint) : 0,
				 result.context[0] ? errcontext("%s", result.context) : 0));
	if (!result.finished || result.served != request)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("the worker of pipeline \"%s\" exited before it finished", text_to_cstring(name)),
				 errhint("See the server log.")));
	PG_RETURN_INT64(result.batches_committed);
}

/*
 * A transform must be exactly one SELECT: it is spliced into the batch's
 * statements, so anything else could run statements of its own.
 */
void
check_single_select(const char *query)
{
	List	   *parsed = raw_parser(query, RAW_PARSE_DEFAULT);

	if (list_length(parsed) != 1 || !IsA(((RawStmt *) linitial(parsed))->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a transform must be a single SELECT query")));
}

/* sluice._check_query(query text) */
PG_FUNCTION_INFO_V1(sluice_check_query);
Datum
sluice_check_query(PG_FUNCTION_ARGS)
{
	check_single_select(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * sluice._create_stage(source jsonb) returns regclass
 *
 * The temporary table "batch" with the columns of a source, as the worker
 * makes it: create_pipeline() plans a transform over it.
 */
PG_FUNCTION_INFO_V1(sluice_create_stage);
Datum
sluice_create_stage(PG_FUNCTION_ARGS)
{
	List	   *columns = source_columns(PG_GETARG_JSONB_P(0));
	Oid			relid;

	SPI_connect();
	relid = create_stage(columns);
	SPI_finish();
	PG_RETURN_OID(relid);
}

/*
 * sluice._batch_offsets(pipeline_id int, batch_id bigint) returns jsonb
 *
 * The slice of a batch as its source describes it, for sluice.progress();
 * NULL for a pipeline the caller does not see.
 */
PG_FUNCTION_INFO_V1(sluice_batch_offsets);
Datum
sluice_batch_offsets(PG_FUNCTION_ARGS)
{
	Datum		id = PG_GETARG_DATUM(0);
	Datum		result;

	SPI_connect();
	if (pinned_exec("SELECT source->>'type' FROM sluice.pipeline WHERE id = $1", 1,
					(Oid[]) {INT4OID}, &id, NULL, SPI_OK_SELECT) == 0)
	{
		SPI_finish();
		PG_RETURN_NULL();
	}
	result = JsonbPGetDatum(source_routine(spi_text(0, 1))->describe(DatumGetInt32(id),
																	  PG_GETARG_INT64(1)));
	result = SPI_datumTransfer(result, false, -1);
	SPI_finish();
	PG_RETURN_DATUM(result);
}

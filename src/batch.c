/*
 * batch.c
 *		One micro-batch: plan it, then read, write and commit it.
 *
 * Exactly-once comes from two transactions per batch:
 *
 *	1. plan: find the next slice of the source (the files not yet in
 *	   sluice.file), claim it for batch N and record batch N as 'planned'.
 *	   If a planned batch already exists (a crash, a failure), it is taken
 *	   again instead, with the same id and the same files.
 *	2. process: lock batch N, COPY its files into the sink, mark the files
 *	   and the batch committed, and commit: the sink rows and the offsets
 *	   become durable together through the WAL, or not at all.
 *
 * The batch row is locked first and the final update only succeeds while
 * the batch is still 'planned', so of two workers racing for one batch (a
 * stale worker after a restart) only one commits it: a planner skips a
 * planned batch that another worker holds (SKIP LOCKED), and a worker that
 * already took one up blocks on the row lock, then finds the batch no
 * longer planned and writes nothing.
 *
 * sluice.crash_at makes the worker SIGKILL itself at a named stage of the
 * first attempt of each batch, for the crash tests.
 */
#include "postgres.h"

#include <signal.h>
#include <sys/stat.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "sluice.h"

typedef struct PipelineConfig
{
	char	   *name;
	char	   *state;
	int64		trigger_ms;
	char	   *dir;
	char	   *pattern;
	int			max_files;		/* 0 for no limit */
	List	   *options;
	List	   *attnames;
	Oid			target;
	bool		window;			/* a window sink */
	bool		staged;			/* COPY into "batch" first, then the sink */
	char	   *stage_sql;
	char	   *transform;
	char	   *on_error;
	char	   *after;			/* keep, delete or archive */
	char	   *archive_dir;
	int64		settle_ms;
} PipelineConfig;

/* what the error context callback names */
typedef struct BatchErrorContext
{
	const char *pipeline;
	int64		batch_id;
	const char *file;
	int64		size;			/* of the file before it was read */
	TimestampTz mtime;
} BatchErrorContext;

static void
batch_error_context(void *arg)
{
	BatchErrorContext *c = arg;

	if (c->file)
		errcontext("sluice pipeline \"%s\", batch " INT64_FORMAT ", file \"%s\"",
				   c->pipeline, c->batch_id, c->file);
	else if (c->batch_id > 0)
		errcontext("sluice pipeline \"%s\", batch " INT64_FORMAT, c->pipeline, c->batch_id);
	else
		errcontext("sluice pipeline \"%s\"", c->pipeline);
}

static void
xact_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

static void
xact_end(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

static void
crash_point(const char *stage, int attempts)
{
	if (attempts == 1 && strcmp(sluice_crash_at, stage) == 0)
	{
		ereport(LOG,
				(errmsg("sluice worker kills itself at stage \"%s\" as sluice.crash_at asks", stage)));
		kill(MyProcPid, SIGKILL);
		for (;;)
			pause();
	}
}

/* Read the pipeline's row, in the current transaction; NULL if it is gone. */
static PipelineConfig *
pipeline_load(int32 id)
{
	Oid			types[1] = {INT4OID};
	Datum		values[1] = {Int32GetDatum(id)};
	PipelineConfig *cfg;
	char	   *header;
	char	   *max_files;
	char	   *target;
	bool		isnull;
	Datum		names;
	Datum	   *elems;
	int			nelems;

	if (catalog_exec("SELECT p.name, p.state,"
				"  CASE WHEN p.trigger = 'available_now' THEN 0"
				"       ELSE (extract(epoch FROM p.trigger::interval) * 1000)::int8 END,"
				"  s->>'dir', s->>'pattern', s->>'max_files_per_trigger', s->>'header',"
				"  s->>'delimiter', s->>'quote', s->>'escape', s->>'null', s->>'encoding',"
				"  ARRAY(SELECT c->>'name' FROM jsonb_array_elements(s->'columns') c),"
				"  p.target::oid, p.sink->>'type', p.transform, sluice._stage_sql(s),"
				"  coalesce(s->>'on_error', 'fail'), coalesce(s->>'after', 'keep'), s->>'archive_dir',"
				"  coalesce((s->>'settle_ms')::int8, 0)"
				" FROM sluice.pipeline p, LATERAL (SELECT p.source) AS x(s) WHERE p.id = $1",
				1, types, values, NULL, SPI_OK_SELECT) == 0)
		return NULL;

	cfg = palloc0(sizeof(PipelineConfig));
	cfg->name = spi_text(0, 1);
	cfg->state = spi_text(0, 2);
	cfg->trigger_ms = spi_int64(0, 3);
	cfg->dir = spi_text(0, 4);
	cfg->pattern = spi_text(0, 5);
	max_files = spi_text(0, 6);
	cfg->max_files = max_files ? pg_strtoint32(max_files) : 0;
	header = spi_text(0, 7);
	cfg->options = csv_copy_options(header && strcmp(header, "true") == 0,
									spi_text(0, 8), spi_text(0, 9), spi_text(0, 10),
									spi_text(0, 11), spi_text(0, 12));
	names = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 13, &isnull);
	deconstruct_array(DatumGetArrayTypeP(names), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, NULL, &nelems);
	for (int i = 0; i < nelems; i++)
		cfg->attnames = lappend(cfg->attnames, TextDatumGetCString(elems[i]));
	target = spi_text(0, 14);
	cfg->target = target ? atooid(target) : InvalidOid;
	cfg->transform = spi_text(0, 16);
	cfg->window = strcmp(spi_text(0, 15), "window") == 0;
	cfg->staged = strcmp(spi_text(0, 15), "append") != 0 || cfg->transform != NULL;
	cfg->stage_sql = spi_text(0, 17);
	cfg->on_error = spi_text(0, 18);
	cfg->after = spi_text(0, 19);
	cfg->archive_dir = spi_text(0, 20);
	cfg->settle_ms = spi_int64(0, 21);
	return cfg;
}

static Datum
files_array(List *files, int field)
{
	int			n = list_length(files);
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, files)
	{
		CsvFile    *f = lfirst(lc);

		if (field == 0)
			elems[i++] = CStringGetTextDatum(f->path);
		else if (field == 1)
			elems[i++] = Int64GetDatum(f->size);
		else
			elems[i++] = TimestampTzGetDatum(f->mtime);
	}
	if (field == 0)
		return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	if (field == 1)
		return PointerGetDatum(construct_array(elems, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	return PointerGetDatum(construct_array(elems, n, TIMESTAMPTZOID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Look at the listed files that committed batches read.  One that changed
 * since is reported once, as a warning and in sluice.errors, and never read
 * again.  One that did not is deleted or archived if the source asks so:
 * here, at the next plan rather than right after the commit, so that a
 * crash in between leaves nothing undone.
 */
static void
known_files(PipelineConfig *cfg, int32 id, List *files)
{
	Oid			types[5] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, BOOLOID};
	Datum		values[5] = {Int32GetDatum(id), files_array(files, 0),
		files_array(files, 1), files_array(files, 2),
	BoolGetDatum(strcmp(cfg->after, "keep") != 0)};
	uint64		n;

	n = catalog_exec("WITH c AS (SELECT * FROM unnest($2::text[], $3::int8[], $4::timestamptz[]) AS c(path, size, mtime)),"
				" ch AS (UPDATE sluice.file f SET changed_at = now() FROM c"
				"   WHERE f.pipeline_id = $1 AND f.path = c.path AND f.committed AND f.changed_at IS NULL"
				"     AND (f.size <> c.size OR f.mtime <> c.mtime)"
				"   RETURNING f.path, f.batch_id, f.size AS old_size, c.size AS new_size),"
				" report AS (INSERT INTO sluice.error (pipeline_id, batch_id, sqlstate, message, detail, hint)"
				"   SELECT $1, batch_id, '01000',"
				"     format('file \"%s\" changed after it was processed', path),"
				"     format('It was read by batch %s with %s bytes and now has %s bytes; it will not be read again.',"
				"            batch_id, old_size, new_size),"
				"     'Write new data to a new file, and move files into the directory only once they are complete.'"
				"   FROM ch RETURNING message, detail)"
				" SELECT false, message, detail FROM report"
				" UNION ALL"
				" SELECT true, f.path, NULL FROM sluice.file f JOIN c ON f.pipeline_id = $1 AND f.path = c.path"
				"  WHERE $5 AND f.committed AND f.size = c.size AND f.mtime = c.mtime",
				5, types, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
	{
		if (strcmp(spi_text(i, 1), "t") == 0)
			csv_dispose_file(spi_text(i, 2), cfg->after, cfg->archive_dir);
		else
			ereport(WARNING,
					(errmsg("%s", spi_text(i, 2)), errdetail("%s", spi_text(i, 3))));
	}
}

/*
 * Plan the next batch, or take up a planned one.  Returns its id, 0 when
 * there is nothing to do, -1 when the pipeline should stop.
 */
static int64
batch_plan(PipelineRun *run, int *attempts)
{
	Oid			types[6] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, INT8OID, INT4OID};
	Datum		values[6];
	char		nulls[6] = "      ";
	PipelineConfig *cfg;
	List	   *files;
	int64		batch_id;
	int64		candidates;
	int64		claimed;

	values[0] = Int32GetDatum(run->id);

	cfg = pipeline_load(run->id);
	if (cfg == NULL || (!run->run_once && strcmp(cfg->state, "running") != 0))
		return -1;
	run->trigger_ms = cfg->trigger_ms;
	run->isolate_rows = strcmp(cfg->on_error, "fail") != 0;

	/* a planned batch comes first: replay it, same id, same files */
	if (catalog_exec("UPDATE sluice.batch b SET attempts = attempts + 1 FROM ("
				"  SELECT batch_id FROM sluice.batch WHERE pipeline_id = $1 AND status = 'planned'"
				"  ORDER BY batch_id LIMIT 1 FOR UPDATE SKIP LOCKED) o"
				" WHERE b.pipeline_id = $1 AND b.batch_id = o.batch_id"
				" RETURNING b.batch_id, b.attempts",
				1, types, values, NULL, SPI_OK_UPDATE_RETURNING) > 0)
	{
		*attempts = (int) spi_int64(0, 2);
		return spi_int64(0, 1);
	}

	/*
	 * A new batch: one planner at a time per pipeline.  The pipeline's row
	 * is the lock, which no user can take: users may only read the catalog.
	 */
	catalog_exec("SELECT 1 FROM sluice.pipeline WHERE id = $1 FOR UPDATE", 1, types, values, NULL,
				 SPI_OK_SELECT);

	files = csv_list_files(cfg->dir, cfg->pattern);
	if (cfg->settle_ms > 0)
	{
		TimestampTz settled = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), -cfg->settle_ms);
		ListCell   *lc;

		/* too young: perhaps still being written */
		foreach(lc, files)
			if (((CsvFile *) lfirst(lc))->mtime > settled)
				files = foreach_delete_current(files, lc);
	}
	known_files(cfg, run->id, files);

	catalog_exec("SELECT coalesce(max(batch_id), 0) + 1 FROM sluice.batch WHERE pipeline_id = $1",
			1, types, values, NULL, SPI_OK_SELECT);
	batch_id = spi_int64(0, 1);

	values[1] = files_array(files, 0);
	values[2] = files_array(files, 1);
	values[3] = files_array(files, 2);
	values[4] = Int64GetDatum(batch_id);
	values[5] = Int32GetDatum(cfg->max_files);
	if (cfg->max_files == 0)
		nulls[5] = 'n';
	catalog_exec("WITH c AS ("
							  "  SELECT * FROM unnest($2::text[], $3::int8[], $4::timestamptz[]) AS c(path, size, mtime)"
							  "  WHERE NOT EXISTS (SELECT 1 FROM sluice.file f WHERE f.pipeline_id = $1 AND f.path = c.path)),"
							  " claim AS (INSERT INTO sluice.file (pipeline_id, path, size, mtime, batch_id)"
							  "  SELECT $1, path, size, mtime, $5 FROM c ORDER BY mtime, path LIMIT $6"
							  "  ON CONFLICT DO NOTHING RETURNING 1)"
							  " SELECT (SELECT count(*) FROM c), (SELECT count(*) FROM claim)",
							  6, types, values, nulls, SPI_OK_SELECT);
	candidates = spi_int64(0, 1);
	claimed = spi_int64(0, 2);

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	run->slot->files_pending = (int32) (candidates - claimed);
	LWLockRelease(sluice_shared->lock);

	if (claimed == 0)
		return 0;

	catalog_exec("INSERT INTO sluice.batch (pipeline_id, batch_id, status, attempts, planned_at)"
			" VALUES ($1, $5, 'planned', 1, now())",
			5, types, values, NULL, SPI_OK_INSERT);
	*attempts = 1;
	return batch_id;
}

static Oid
temp_relid(const char *name)
{
	Datum		value = CStringGetTextDatum(psprintf("pg_temp.%s", name));

	pinned_exec("SELECT $1::regclass::oid", 1, (Oid[]) {TEXTOID}, &value, NULL, SPI_OK_SELECT);
	return (Oid) spi_int64(0, 1);
}

/*
 * A window sink.  Under the pipeline's row lock, which serializes the
 * watermark and the windows emitted, sluice._window_write() does the work
 * as the owner; what it returns goes to the catalog.
 */
static int64
batch_write_window(PipelineRun *run, int64 batch_id, Oid input)
{
	Oid			types[10] = {INT4OID, INT8OID, TIMESTAMPTZOID, TIMESTAMPTZOID, TIMESTAMPTZOID,
		TIMESTAMPTZOID, INT8OID, INT8OID, INT8OID, INT8OID};
	Datum		values[10];
	char		nulls[10];
	Datum		args[7];
	char		argnulls[7] = "       ";
	bool		isnull;
	int64		written;

	values[0] = Int32GetDatum(run->id);
	catalog_exec("SELECT sluice._sink(p), p.state_table, p.event_time, p.watermark_delay, p.watermark"
				 " FROM sluice.pipeline AS p WHERE p.id = $1 FOR UPDATE",
				 1, types, values, NULL, SPI_OK_SELECT);
	args[0] = Int64GetDatum(batch_id);
	for (int i = 1; i <= 5; i++)
	{
		args[i] = spi_datum(0, i, &isnull);
		argnulls[i] = isnull ? 'n' : ' ';
	}
	args[6] = ObjectIdGetDatum(input);
	pinned_exec("SELECT * FROM sluice._window_write($1, $2, $3, $4, $5, $6, $7)", 7,
				(Oid[]) {INT8OID, JSONBOID, REGCLASSOID, TEXTOID, INTERVALOID, TIMESTAMPTZOID, REGCLASSOID},
				args, argnulls, SPI_OK_SELECT);

	/* written, new watermark, event time min and max, dropped, total, updated, removed */
	written = spi_int64(0, 1);
	values[1] = Int64GetDatum(batch_id);
	values[2] = spi_datum(0, 2, &isnull);
	nulls[2] = isnull ? 'n' : ' ';
	values[3] = args[5];
	nulls[3] = argnulls[5];
	for (int i = 4; i < 10; i++)
	{
		values[i] = spi_datum(0, i - 1, &isnull);
		nulls[i] = isnull ? 'n' : ' ';
	}
	nulls[0] = nulls[1] = ' ';
	catalog_exec("WITH w AS (UPDATE sluice.pipeline SET watermark = $3"
				 "  WHERE id = $1 AND watermark IS DISTINCT FROM $3)"
				 " UPDATE sluice.batch SET watermark = $4, next_watermark = $3, event_time_min = $5,"
				 "  event_time_max = $6, num_rows_dropped_by_watermark = $7, state_rows_total = $8,"
				 "  state_rows_updated = $9, state_rows_removed = $10"
				 " WHERE pipeline_id = $1 AND batch_id = $2",
				 10, types, values, nulls, SPI_OK_UPDATE);
	return written;
}

/*
 * Write the staging table "batch" to the sink, through the transform if
 * there is one, with the statement that sluice._sink_sql() makes for the
 * sink; when bad rows are being isolated (rj), rows the sink refuses are set
 * aside.  Returns the rows the sink took, or -1 for a function sink.
 */
static int64
batch_write_staged(PipelineRun *run, PipelineConfig *cfg, Oid stage, int64 batch_id, Rejects *rj)
{
	Oid			input = stage;
	Oid			types[2] = {INT4OID, OIDOID};
	Datum		values[3] = {Int32GetDatum(run->id), ObjectIdGetDatum(InvalidOid)};
	char	   *sql;
	char	   *row_sql;
	char	   *sink_type;
	Datum		id = Int64GetDatum(batch_id);

	if (cfg->transform)
	{
		check_single_select(cfg->transform);
		/* the owner's own query, with the owner's search_path */
		if (SPI_execute(psprintf("CREATE TEMP TABLE batch_out ON COMMIT DROP AS SELECT * FROM (%s) AS q",
								 cfg->transform), false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not run the transform");
		input = temp_relid("batch_out");
	}
	/* windows are written as a whole: no row-by-row isolation */
	if (cfg->window)
		return batch_write_window(run, batch_id, input);

	values[1] = ObjectIdGetDatum(input);
	catalog_exec("SELECT sluice._sink_sql(s, $2::regclass), sluice._sink_sql(s, $2::regclass, true),"
				 " s->>'type', s->>'on_match' FROM sluice.pipeline AS p, sluice._sink(p) AS s WHERE p.id = $1",
				 2, types, values, NULL, SPI_OK_SELECT);
	sql = spi_text(0, 1);
	row_sql = spi_text(0, 2);
	sink_type = spi_text(0, 3);
	if (rj && strcmp(sink_type, "function") != 0)
		/* row by row, the last row of a key must win: 'ignore' keeps the first it writes */
		return rejects_write(rj, sql, row_sql, input, stage, batch_id,
							 strcmp(sink_type, "merge") == 0 && strcmp(spi_text(0, 4), "ignore") == 0);
	if (SPI_execute_with_args(sql, 1, (Oid[]) {INT8OID}, &id, NULL, false, 0) < 0)
		elog(ERROR, "could not write batch to the sink");
	return strcmp(sink_type, "function") == 0 ? -1 : (int64) SPI_processed;
}

/*
 * Read, write and commit a planned batch in one transaction.  Returns false
 * if another worker committed it first.
 */
static bool
batch_process(PipelineRun *run, int64 batch_id, int attempts, BatchErrorContext *errctx,
			  double plan_ms, bool careful)
{
	Oid			types[5] = {INT4OID, INT8OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID};
	Datum		values[8];
	PipelineConfig *cfg;
	List	   *files = NIL;
	ListCell   *lc;
	uint64		rows = 0;
	int64		bytes = 0;
	instr_time	start;
	instr_time	elapsed;
	double		write_ms;
	char	   *durations;
	Oid			copy_into;
	int64		sink_rows;
	Rejects		rj;

	INSTR_TIME_SET_CURRENT(start);
	values[0] = Int32GetDatum(run->id);
	values[1] = Int64GetDatum(batch_id);

	cfg = pipeline_load(run->id);
	if (cfg == NULL)
		return false;
	copy_into = cfg->target;
	memset(&rj, 0, sizeof(rj));
	rj.keep = strcmp(cfg->on_error, "reject") == 0;
	if (catalog_exec("SELECT 1 FROM sluice.batch WHERE pipeline_id = $1 AND batch_id = $2"
				" AND status = 'planned' FOR UPDATE",
				2, types, values, NULL, SPI_OK_SELECT) == 0)
		return false;

	catalog_exec("SELECT path FROM sluice.file WHERE pipeline_id = $1 AND batch_id = $2 ORDER BY mtime, path",
			2, types, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		CsvFile    *f = palloc0(sizeof(CsvFile));

		f->path = spi_text(i, 1);
		files = lappend(files, f);
	}

	csv_check_read_privilege();
	if (cfg->staged || careful)
	{
		pinned_exec(cfg->stage_sql, 0, NULL, NULL, NULL, SPI_OK_UTILITY);
		copy_into = temp_relid("batch");
	}
	foreach(lc, files)
	{
		CsvFile    *f = lfirst(lc);
		struct stat st;

		errctx->file = f->path;
		pgstat_report_activity(STATE_RUNNING,
							   psprintf("batch " INT64_FORMAT ": reading %s", batch_id, f->path));
		if (stat(f->path, &st) == 0)
		{
			f->size = st.st_size;
			f->mtime = time_t_to_timestamptz(st.st_mtime);
		}
		errctx->size = f->size;
		errctx->mtime = f->mtime;
		if (careful)
			rows += rejects_copy_file(&rj, copy_into, cfg->attnames, cfg->options, f->path);
		else
			rows += csv_copy_file(copy_into, cfg->attnames, cfg->options, f->path);
		bytes += f->size;
		/* a file still being written is read again later, whole */
		if (stat(f->path, &st) == 0 &&
			(st.st_size != f->size || time_t_to_timestamptz(st.st_mtime) != f->mtime))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("file \"%s\" changed while it was read", f->path),
					 errdetail("The batch will be read again."),
					 errhint("Write files elsewhere and move them into the directory once complete.")));
		if (foreach_current_index(lc) == 0)
			crash_point("after_read", attempts);
	}
	errctx->file = NULL;
	if (cfg->staged || careful)
		sink_rows = batch_write_staged(run, cfg, copy_into, batch_id, careful ? &rj : NULL);
	else
		sink_rows = (int64) rows;
	if (careful)
		rejects_save(&rj, run->id, batch_id);
	crash_point("after_sink", attempts);

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	write_ms = INSTR_TIME_GET_MILLISEC(elapsed);
	durations = psprintf("{\"plan\": %.3f, \"write\": %.3f, \"total\": %.3f}",
						 plan_ms, write_ms, plan_ms + write_ms);

	values[2] = files_array(files, 0);
	values[3] = files_array(files, 1);
	values[4] = files_array(files, 2);
	catalog_exec("UPDATE sluice.file f SET committed = true, size = c.size, mtime = c.mtime"
			" FROM unnest($3::text[], $4::int8[], $5::timestamptz[]) AS c(path, size, mtime)"
			" WHERE f.pipeline_id = $1 AND f.batch_id = $2 AND f.path = c.path",
			5, types, values, NULL, SPI_OK_UPDATE);

	/* the compare-and-set that makes the batch ours */
	values[2] = Int64GetDatum((int64) rows);
	values[3] = Int64GetDatum(bytes);
	values[4] = CStringGetTextDatum(durations);
	values[5] = Int32GetDatum(list_length(files));
	values[6] = Int64GetDatum(sink_rows);
	values[7] = Int64GetDatum(rj.count);
	if (catalog_exec("UPDATE sluice.batch SET status = 'committed', committed_at = now(),"
					 "  input_rows = $3, bytes = $4, durations = $5::text::jsonb, files = $6,"
					 "  sink_rows = $7, rejected_rows = $8"
					 " WHERE pipeline_id = $1 AND batch_id = $2 AND status = 'planned'",
					 8, (Oid[]) {INT4OID, INT8OID, INT8OID, INT8OID, TEXTOID, INT4OID, INT8OID, INT8OID},
					 values, sink_rows < 0 ? "      n " : NULL, SPI_OK_UPDATE) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("batch " INT64_FORMAT " of pipeline \"%s\" was committed by another worker",
						batch_id, run->name)));

	values[0] = CStringGetTextDatum(run->name);
	catalog_exec("SELECT pg_notify('sluice_progress', $1)", 1, (Oid[]) {TEXTOID}, values, NULL, SPI_OK_SELECT);

	crash_point("before_commit", attempts);
	return true;
}

/* Record a failure in a fresh transaction, and in the worker's slot. */
static void
batch_record_failure(PipelineRun *run, int64 batch_id, ErrorData *edata)
{
	Oid			types[7] = {INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		values[7];
	char		nulls[7] = "       ";
	const char *strs[4] = {edata->message, edata->detail, edata->hint, edata->context};

	values[0] = Int32GetDatum(run->id);
	values[1] = Int64GetDatum(batch_id);
	if (batch_id <= 0)
		nulls[1] = 'n';
	values[2] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
	for (int i = 0; i < 4; i++)
	{
		if (strs[i])
			values[3 + i] = CStringGetTextDatum(strs[i]);
		else
			nulls[3 + i] = 'n';
	}

	xact_begin("recording a failure");
	catalog_exec("INSERT INTO sluice.error (pipeline_id, batch_id, sqlstate, message, detail, hint, context)"
				 " SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM sluice.pipeline WHERE id = $1)",
				 7, types, values, nulls, SPI_OK_INSERT);
	catalog_exec("UPDATE sluice.pipeline SET state = 'failed' WHERE id = $1", 1, types, values, NULL, SPI_OK_UPDATE);
	values[0] = CStringGetTextDatum(run->name);
	catalog_exec("SELECT pg_notify('sluice_progress', $1)", 1, (Oid[]) {TEXTOID}, values, NULL, SPI_OK_SELECT);
	xact_end();

	LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
	run->slot->failed = true;
	run->slot->sqlerrcode = edata->sqlerrcode;
	strlcpy(run->slot->message, edata->message ? edata->message : "", SLUICE_MSG_LEN);
	strlcpy(run->slot->detail, edata->detail ? edata->detail : "", SLUICE_MSG_LEN);
	strlcpy(run->slot->hint, edata->hint ? edata->hint : "", SLUICE_MSG_LEN);
	strlcpy(run->slot->context, edata->context ? edata->context : "", SLUICE_MSG_LEN);
	LWLockRelease(sluice_shared->lock);
}

/*
 * One attempt at a batch through both transactions.  On an error the batch
 * is rolled back and the error returned; nothing is recorded yet.
 */
static BatchOutcome
batch_try(PipelineRun *run, bool careful, int64 *batch_id_out, ErrorData **edata_out)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	BatchErrorContext errctx = {run->name, 0, NULL, 0, 0};
	ErrorContextCallback callback;
	volatile BatchOutcome outcome = BATCH_NONE;
	volatile int64 batch_id = 0;

	callback.callback = batch_error_context;
	callback.arg = &errctx;
	callback.previous = error_context_stack;
	error_context_stack = &callback;

	PG_TRY();
	{
		instr_time	start;
		instr_time	elapsed;
		int			attempts = 0;
		bool		ours;

		INSTR_TIME_SET_CURRENT(start);
		xact_begin("planning a batch");
		batch_id = batch_plan(run, &attempts);
		xact_end();
		INSTR_TIME_SET_CURRENT(elapsed);
		INSTR_TIME_SUBTRACT(elapsed, start);

		if (batch_id < 0)
			outcome = BATCH_STOP;
		else if (batch_id > 0)
		{
			errctx.batch_id = batch_id;
			LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
			run->slot->current_batch = batch_id;
			LWLockRelease(sluice_shared->lock);
			crash_point("after_plan", attempts);

			xact_begin(careful ? "processing a batch row by row" : "processing a batch");
			ours = batch_process(run, batch_id, attempts, &errctx, INSTR_TIME_GET_MILLISEC(elapsed),
								 careful);
			xact_end();			/* if not ours, nothing was written */
			if (ours)
				crash_point("after_commit", attempts);
			LWLockAcquire(sluice_shared->lock, LW_EXCLUSIVE);
			if (ours)
				run->slot->batches_committed++;
			run->slot->current_batch = 0;
			LWLockRelease(sluice_shared->lock);
			outcome = BATCH_COMMITTED;
		}
	}
	PG_CATCH();
	{
		struct stat st;
		ErrorData  *edata;
		char	   *file;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		file = errctx.file ? pstrdup(errctx.file) : NULL;	/* it lives in SPI's memory */
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();

		/* a half-written line of a file that grows is no bad row: read it again later */
		if (file && stat(file, &st) == 0 &&
			(st.st_size != errctx.size || time_t_to_timestamptz(st.st_mtime) != errctx.mtime))
		{
			edata->detail = psprintf("Reading it failed: %s", edata->message);
			edata->message = psprintf("file \"%s\" changed while it was read", file);
			edata->sqlerrcode = ERRCODE_OBJECT_IN_USE;
		}
		*edata_out = edata;
		outcome = BATCH_FAILED;
	}
	PG_END_TRY();

	error_context_stack = callback.previous;
	*batch_id_out = batch_id;
	return outcome;
}

/* errors that go away by themselves: the batch is tried again later */
static bool
is_transient(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_OBJECT_IN_USE;
}

/*
 * Run one batch.  A batch that fails on a bad row, in a source that sets
 * bad rows aside, is read again row by row; a transient failure is left
 * for a retry; any other failure is recorded and fails the pipeline.
 */
BatchOutcome
batch_run(PipelineRun *run)
{
	bool		careful = false;

	for (;;)
	{
		ErrorData  *edata = NULL;
		int64		batch_id;
		BatchOutcome outcome = batch_try(run, careful, &batch_id, &edata);

		if (outcome != BATCH_FAILED)
			return outcome;
		if (!careful && run->isolate_rows && batch_id > 0 &&
			rejects_is_row_error(edata->sqlerrcode))
		{
			ereport(LOG,
					(errmsg("sluice pipeline \"%s\": batch " INT64_FORMAT " has bad rows, reading it again row by row",
							run->name, batch_id)));
			careful = true;
			FreeErrorData(edata);
			continue;
		}
		if (is_transient(edata->sqlerrcode))
		{
			ereport(LOG,
					(errmsg("sluice pipeline \"%s\": batch " INT64_FORMAT " will be tried again",
							run->name, batch_id)));
			FreeErrorData(edata);
			return BATCH_RETRY;
		}
		batch_record_failure(run, batch_id, edata);
		FreeErrorData(edata);
		return BATCH_FAILED;
	}
}

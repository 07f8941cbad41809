/*
 * csv.c
 *		The CSV directory source: its SourceRoutine, listing a directory,
 *		the processed-file log (sluice.file), COPY options, reading a file
 *		into a relation with PostgreSQL's own COPY, and deleting or
 *		archiving processed files.
 *
 * Its offsets are the processed-file log: a file belongs to the batch that
 * claimed it (path, size, modification time), and is marked committed in
 * that batch's transaction.  A committed file that changes later is
 * reported once and never read again; one still being written when it is
 * read makes the batch wait and read it again whole.
 *
 * A file is read by DoCopy(), exactly as "COPY target (cols) FROM 'file'"
 * would: the same parser (quotes, escapes, embedded newlines, NULL strings,
 * encodings), the same privilege checks (pg_read_server_files, INSERT on
 * the target, row-level security) made as the current user, which in a
 * worker is the pipeline's owner.  That is why a batch costs what COPY
 * costs.
 */
#include "postgres.h"

#include <fnmatch.h>
#include <sys/inotify.h>
#include <unistd.h>
#include <sys/stat.h>

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "commands/copy.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "parser/parse_node.h"
#include "parser/parse_type.h"
#include "parser/parser.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "executor/spi.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "source.h"
#include "sluice.h"

typedef struct CsvFile
{
	char	   *path;
	int64		size;
	TimestampTz mtime;
} CsvFile;

/* a CSV source's options, and the files of the batch in flight */
typedef struct CsvState
{
	char	   *dir;
	char	   *pattern;
	List	   *options;		/* for COPY */
	List	   *attnames;
	char	   *after;			/* keep, delete or archive */
	char	   *archive_dir;
	int64		settle_ms;
	List	   *batch_files;	/* of CsvFile, in the batch transaction's memory */

	/*
	 * What the worker knows between plans, in its long-lived memory, so that
	 * an idle trigger costs the same however many files were read: an
	 * inotify watch on the directory names the files that appeared or
	 * changed, and only those are looked at; the files seen but not claimed
	 * yet (too young, or over the limit) and those to delete or archive are
	 * looked at again.  The whole directory is listed at the first plan,
	 * when the watch overflows, and every sluice.rescan_interval.
	 */
	MemoryContext cxt;
	bool		use_watch;		/* the worker waits for new files (not run_once) */
	int			watch;			/* inotify descriptor, -1 for none */
	TimestampTz listed_at;		/* the last full listing; 0 for none yet */
	List	   *waiting;		/* names */
	List	   *to_dispose;		/* names */
} CsvState;

/* The launcher fails a pipeline whose owner may no longer read server files. */
static char *
csv_owner_refused(Oid owner, const char **hint)
{
	if (has_privs_of_role(owner, ROLE_PG_READ_SERVER_FILES))
		return NULL;
	*hint = "Pipeline workers connect as the pipeline's owner and read server files. "
		"Give the owner back LOGIN and pg_read_server_files, then call sluice.start().";
	return psprintf("Role %s no longer has the privileges of pg_read_server_files.",
					quote_identifier(GetUserNameFromId(owner, false)));
}

/* Reading server files takes what COPY FROM a file takes. */
static void
csv_check_read_privilege(void)
{
	if (!has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read server files"),
				 errdetail("Only roles with privileges of the \"pg_read_server_files\" role may run a CSV source."),
				 errhint("A superuser can GRANT pg_read_server_files TO %s.",
						 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
}

static int
csv_file_cmp(const ListCell *a, const ListCell *b)
{
	CsvFile    *fa = lfirst(a);
	CsvFile    *fb = lfirst(b);

	if (fa->mtime != fb->mtime)
		return fa->mtime < fb->mtime ? -1 : 1;
	return strcmp(fa->path, fb->path);
}

/*
 * A file of the directory, if its name matches the pattern and it is a
 * regular file that is there; else NULL.
 */
static CsvFile *
csv_stat_file(const char *dir, const char *name, const char *pattern)
{
	char	   *path;
	struct stat st;
	CsvFile    *f;

	if (name[0] == '.' || fnmatch(pattern, name, 0) != 0)
		return NULL;
	path = psprintf("%s/%s", dir, name);
	if (stat(path, &st) != 0)
	{
		if (errno == ENOENT)
			return NULL;		/* removed while we looked */
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not stat file \"%s\": %m", path)));
	}
	if (!S_ISREG(st.st_mode))
		return NULL;
	f = palloc(sizeof(CsvFile));
	f->path = path;
	f->size = st.st_size;
	f->mtime = time_t_to_timestamptz(st.st_mtime);
	return f;
}

/*
 * The regular files of a directory whose names match a glob pattern,
 * oldest modification time first, then by name.
 */
static List *
csv_list_files(const char *dir, const char *pattern)
{
	DIR		   *d;
	struct dirent *de;
	List	   *files = NIL;

	csv_check_read_privilege();

	d = AllocateDir(dir);
	if (d == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open directory \"%s\": %m", dir)));
	while ((de = ReadDir(d, dir)) != NULL)
	{
		CsvFile    *f = csv_stat_file(dir, de->d_name, pattern);

		if (f)
			files = lappend(files, f);
	}
	FreeDir(d);

	list_sort(files, csv_file_cmp);
	return files;
}

static void
add_option(List **options, const char *name, const char *value)
{
	if (value != NULL)
		*options = lappend(*options, makeDefElem(pstrdup(name),
												 (Node *) makeString(pstrdup(value)), -1));
}

/* COPY options for a CSV source; NULL values are left at COPY's defaults. */
static List *
csv_copy_options(bool header, const char *delimiter, const char *quote,
				 const char *escape, const char *null_string, const char *encoding)
{
	List	   *options = NIL;

	add_option(&options, "format", "csv");
	add_option(&options, "header", header ? "true" : "false");
	add_option(&options, "delimiter", delimiter);
	add_option(&options, "quote", quote);
	add_option(&options, "escape", escape);
	add_option(&options, "null", null_string);
	add_option(&options, "encoding", encoding);
	return options;
}

/*
 * COPY one file into a relation, as the current user.  Returns the number
 * of rows read.
 */
static uint64
csv_copy_file(Oid target, List *attnames, List *options, const char *path)
{
	CopyStmt   *stmt = makeNode(CopyStmt);
	ParseState *pstate = make_parsestate(NULL);
	char	   *relname = get_rel_name(target);
	Oid			nspid = get_rel_namespace(target);
	ListCell   *lc;
	uint64		processed = 0;

	if (relname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("target table of the pipeline no longer exists"),
				 errdetail("The table with OID %u was dropped.", target)));

	stmt->relation = makeRangeVar(get_namespace_name(nspid), relname, -1);
	foreach(lc, attnames)
		stmt->attlist = lappend(stmt->attlist, makeString(lfirst(lc)));
	stmt->is_from = true;
	stmt->filename = (char *) path;
	stmt->options = options;
	pstate->p_sourcetext = psprintf("COPY %s FROM %s",
									quote_qualified_identifier(get_namespace_name(nspid), relname),
									quote_literal_cstr(path));

	DoCopy(pstate, stmt, -1, 0, &processed);
	free_parsestate(pstate);
	return processed;
}

/*
 * Parse one file with COPY's parser and hand its rows to a sink's receiver
 * (rel gives their shape), as the current user.  Returns the rows read.
 */
static uint64
csv_parse_file(Oid rel, List *attnames, List *options, const char *path, DestReceiver *dest)
{
	Relation	r = table_open(rel, AccessShareLock);
	List	   *attlist = NIL;
	ListCell   *lc;
	CopyFromState cstate;
	uint64		rows;

	foreach(lc, attnames)
		attlist = lappend(attlist, makeString(lfirst(lc)));
	cstate = BeginCopyFrom(make_parsestate(NULL), r, NULL, path, false, NULL, attlist, options);
	rows = copy_to_receiver(cstate, r, dest);
	EndCopyFrom(cstate);
	table_close(r, NoLock);
	return rows;
}

/*
 * Parse "CREATE TABLE t (<columns>)".  A syntax error is reported as an
 * invalid column list, without a cursor position that would point into a
 * query the user never wrote.
 */
static List *
parse_column_list(const char *columns)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	List	   *parsed = NIL;

	PG_TRY();
	{
		parsed = raw_parser(psprintf("CREATE TABLE sluice_columns (%s)", columns), RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid column list \"%s\"", columns),
				 errdetail("%s", edata->message),
				 errhint("Give column names and types, as in 'id int, amount numeric, ts timestamptz'.")));
	}
	PG_END_TRY();
	return parsed;
}

/*
 * sluice._parse_columns(columns text) returns setof (name text, type text)
 *
 * Parses a column list such as "id int, amount numeric(12,2)" with the SQL
 * parser, so that it accepts exactly what CREATE TABLE accepts, and returns
 * each column with its type in canonical form.
 */
PG_FUNCTION_INFO_V1(sluice_parse_columns);
Datum
sluice_parse_columns(PG_FUNCTION_ARGS)
{
	char	   *columns = text_to_cstring(PG_GETARG_TEXT_PP(0));
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *parsed;
	CreateStmt *stmt = NULL;
	ListCell   *lc;
	List	   *seen = NIL;

	InitMaterializedSRF(fcinfo, 0);

	parsed = parse_column_list(columns);
	if (list_length(parsed) == 1 && IsA(((RawStmt *) linitial(parsed))->stmt, CreateStmt))
		stmt = (CreateStmt *) ((RawStmt *) linitial(parsed))->stmt;
	if (stmt == NULL || stmt->tableElts == NIL || stmt->inhRelations != NIL ||
		stmt->options != NIL || stmt->partspec != NULL || stmt->tablespacename != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid column list \"%s\"", columns),
				 errhint("Give column names and types, as in 'id int, amount numeric, ts timestamptz'.")));

	foreach(lc, stmt->tableElts)
	{
		ColumnDef  *col = lfirst(lc);
		Oid			typid;
		int32		typmod;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		if (!IsA(col, ColumnDef) || col->constraints != NIL || col->collClause != NULL ||
			col->raw_default != NULL || col->typeName == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid column list \"%s\"", columns),
					 errdetail("Only column names and types are allowed, not constraints, defaults or collations.")));
		if (list_member(seen, makeString(col->colname)))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("column \"%s\" appears twice in the column list", col->colname)));
		seen = lappend(seen, makeString(col->colname));

		typenameTypeIdAndMod(NULL, col->typeName, &typid, &typmod);
		values[0] = CStringGetTextDatum(col->colname);
		values[1] = CStringGetTextDatum(format_type_with_typemod(typid, typmod));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * sluice._check_csv_options(header, delimiter, quote, escape, null, encoding)
 *
 * Lets COPY itself judge the options, so a pipeline is refused at creation
 * with COPY's own message rather than at its first batch.
 */
PG_FUNCTION_INFO_V1(sluice_check_csv_options);
Datum
sluice_check_csv_options(PG_FUNCTION_ARGS)
{
#define ARG_OR_NULL(n) (PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n)))
	List	   *options = csv_copy_options(PG_ARGISNULL(0) ? false : PG_GETARG_BOOL(0),
										   ARG_OR_NULL(1), ARG_OR_NULL(2), ARG_OR_NULL(3),
										   ARG_OR_NULL(4), ARG_OR_NULL(5));
	CopyFormatOptions *opts = palloc0(sizeof(CopyFormatOptions));

	ProcessCopyOptions(NULL, opts, true, options);
	PG_RETURN_VOID();
}

/*
 * sluice._check_directory(dir text)
 *
 * The directory must exist and be readable by the server, and the caller
 * must be allowed to read server files.
 */
PG_FUNCTION_INFO_V1(sluice_check_directory);
Datum
sluice_check_directory(PG_FUNCTION_ARGS)
{
	char	   *dir = text_to_cstring(PG_GETARG_TEXT_PP(0));

	if (!is_absolute_path(dir))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("directory \"%s\" is not an absolute path", dir)));
	(void) csv_list_files(dir, "*");
	PG_RETURN_VOID();
}

/* sluice._list_files(dir, pattern) returns setof (path, size, mtime) */
PG_FUNCTION_INFO_V1(sluice_list_files);
Datum
sluice_list_files(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *files;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	files = csv_list_files(text_to_cstring(PG_GETARG_TEXT_PP(0)),
						   text_to_cstring(PG_GETARG_TEXT_PP(1)));
	foreach(lc, files)
	{
		CsvFile    *f = lfirst(lc);
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(f->path);
		values[1] = Int64GetDatum(f->size);
		values[2] = TimestampTzGetDatum(f->mtime);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Delete a processed file, or move it into the archive directory.  Only
 * called for files whose batch committed; a file already gone is fine, so
 * doing it again after a crash is harmless.
 */
static void
csv_dispose_file(const char *path, const char *after, const char *archive_dir)
{
	if (!has_privs_of_role(GetUserId(), ROLE_PG_WRITE_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s processed files", after),
				 errdetail("Only roles with privileges of the \"pg_write_server_files\" role may delete or move server files.")));
	if (strcmp(after, "delete") == 0)
	{
		if (unlink(path) != 0 && errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not remove processed file \"%s\": %m", path)));
	}
	else
	{
		const char *name = last_dir_separator(path);
		char	   *dest = psprintf("%s/%s", archive_dir, name ? name + 1 : path);

		if (rename(path, dest) != 0 && errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not move processed file \"%s\" to \"%s\": %m", path, dest)));
	}
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

static void *
csv_open(Pipeline *p, MemoryContext cxt, bool waits)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	CsvState   *st = palloc0(sizeof(CsvState));
	char	   *header = jsonb_get_text(p->source, "header");
	ListCell   *lc;

	st->dir = jsonb_get_text(p->source, "dir");
	st->pattern = jsonb_get_text(p->source, "pattern");
	st->options = csv_copy_options(header && strcmp(header, "true") == 0,
								   jsonb_get_text(p->source, "delimiter"),
								   jsonb_get_text(p->source, "quote"),
								   jsonb_get_text(p->source, "escape"),
								   jsonb_get_text(p->source, "null"),
								   jsonb_get_text(p->source, "encoding"));
	foreach(lc, p->columns)
		st->attnames = lappend(st->attnames, pstrdup(((SourceColumn *) lfirst(lc))->name));
	st->after = jsonb_get_text(p->source, "after");
	if (st->after == NULL)
		st->after = "keep";
	st->archive_dir = jsonb_get_text(p->source, "archive_dir");
	st->settle_ms = jsonb_get_int64(p->source, "settle_ms", 0);
	st->cxt = cxt;
	st->watch = -1;
	st->use_watch = waits;
	MemoryContextSwitchTo(old);
	return st;
}

/*
 * Look at the listed files that committed batches read.  One that changed
 * since is reported once, as a warning and in sluice.errors, and never read
 * again.  One that did not is deleted or archived if the source asks so:
 * here, at the next plan rather than right after the commit, so that a
 * crash in between leaves nothing undone.
 */
static void
csv_known_files(CsvState *st, int32 id, List *files)
{
	Oid			types[5] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, BOOLOID};
	Datum		values[5] = {Int32GetDatum(id), files_array(files, 0),
		files_array(files, 1), files_array(files, 2),
	BoolGetDatum(strcmp(st->after, "keep") != 0)};
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
			csv_dispose_file(spi_text(i, 2), st->after, st->archive_dir);
		else
			ereport(WARNING,
					(errmsg("%s", spi_text(i, 2)), errdetail("%s", spi_text(i, 3))));
	}
}

/* what the watch reports: files that appear or change, and the directory going away */
#define CSV_WATCH_EVENTS (IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | \
						  IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

/*
 * (Re)start the watch; without one, the directory is listed at every plan.
 * A worker that drains what is there and exits (run_once) lists it at every
 * plan instead: closing a watch costs the kernel some 10 to 30 ms, more
 * than listing the directory once per batch.
 */
static void
csv_watch_start(CsvState *st)
{
	if (!st->use_watch)
		return;
	if (st->watch >= 0)
		close(st->watch);
	st->watch = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (st->watch >= 0 && inotify_add_watch(st->watch, st->dir, CSV_WATCH_EVENTS) < 0)
	{
		close(st->watch);
		st->watch = -1;
	}
	if (st->watch < 0)
		ereport(LOG,
				(errmsg("sluice: could not watch directory \"%s\": %m", st->dir),
				 errdetail("The directory will be listed at every trigger.")));
}

/*
 * Add the names the watch reported since the last plan to *names.  Returns
 * false when it cannot tell (no watch, an overflow, the directory itself
 * moved or went away): then the directory must be listed whole.
 */
static bool
csv_watch_read(CsvState *st, List **names)
{
	char		buf[8192] pg_attribute_aligned(8);
	bool		complete = st->watch >= 0;

	while (complete)
	{
		ssize_t		len = read(st->watch, buf, sizeof(buf));

		if (len < 0 && errno == EINTR)
			continue;
		if (len < 0 && errno == EAGAIN)
			break;
		if (len <= 0)
		{
			complete = false;
			break;
		}
		for (char *ptr = buf; ptr < buf + len;)
		{
			struct inotify_event *ev = (struct inotify_event *) ptr;

			if (ev->mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
				complete = false;
			else if (ev->len > 0)
				*names = lappend(*names, pstrdup(ev->name));
			ptr += sizeof(struct inotify_event) + ev->len;
		}
	}
	return complete;
}

/*
 * The files to look at in this plan: the whole directory when due, else
 * only those the watch named, those still waiting, and those to dispose of.
 */
static List *
csv_discover(CsvState *st)
{
	TimestampTz now = GetCurrentTimestamp();
	List	   *names = NIL;
	List	   *files = NIL;
	HASHCTL		ctl;
	HTAB	   *seen;
	ListCell   *lc;

	if (st->listed_at == 0 ||
		TimestampDifferenceExceeds(st->listed_at, now, sluice_rescan_interval * 1000) ||
		!csv_watch_read(st, &names))
	{
		/* the watch first, so nothing that changes during the listing is missed */
		csv_watch_start(st);
		st->listed_at = st->watch >= 0 ? now : 0;
		return csv_list_files(st->dir, st->pattern);
	}

	csv_check_read_privilege();
	names = list_concat(list_concat(names, st->waiting), st->to_dispose);
	ctl.keysize = NAME_MAX + 1;
	ctl.entrysize = NAME_MAX + 1;
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("sluice file names", Max(list_length(names), 16), &ctl,
					   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	foreach(lc, names)
	{
		char	   *name = lfirst(lc);
		bool		found;
		CsvFile    *f;

		if (strlen(name) > NAME_MAX)
			continue;
		(void) hash_search(seen, name, HASH_ENTER, &found);
		if (!found && (f = csv_stat_file(st->dir, name, st->pattern)) != NULL)
			files = lappend(files, f);
	}
	list_sort(files, csv_file_cmp);
	return files;
}

/* Add the last part of a path to a list in the source's long-lived memory. */
static List *
csv_keep_name(CsvState *st, List *names, const char *path)
{
	const char *name = last_dir_separator(path);
	MemoryContext old = MemoryContextSwitchTo(st->cxt);

	names = lappend(names, pstrdup(name ? name + 1 : path));
	MemoryContextSwitchTo(old);
	return names;
}

/*
 * Claim the files not yet in the file log for the batch, oldest first, up
 * to max_files_per_trigger and max_bytes_per_trigger, and to the limit of
 * backpressure, in bytes (but always one file, however large, as Spark's
 * maxBytesPerTrigger).  Files younger than
 * settle_time wait.  The
 * backlog is the files not yet in the log, the ones claimed now and the
 * young ones included.
 */
static int64
csv_plan(void *state, Pipeline *p, int64 batch_id, int64 *limit, int64 *backlog, Jsonb **slice)
{
	CsvState   *st = state;
	Oid			types[8] = {INT4OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID, INT8OID, INT4OID,
	TEXTARRAYOID, INT8OID};
	Datum		values[8];
	char		nulls[8] = "        ";
	/* the limits as they are now: alter_pipeline() may change them */
	int64		max_files = jsonb_get_int64(p->source, "max_files_per_trigger", 0);
	int64		max_bytes = jsonb_get_int64(p->source, "max_bytes_per_trigger", 0);
	TimestampTz listed_at;
	List	   *files;
	List	   *young = NIL;
	List	   *waiting = NIL;
	int64		claimed = 0;
	ListCell   *lc;

	if (*limit > 0 && (max_bytes == 0 || *limit < max_bytes))
		max_bytes = *limit;		/* backpressure's, in bytes */

	files = csv_discover(st);
	/* if the rest of this plan fails, what we knew is lost: list the directory next time */
	listed_at = st->listed_at;
	st->listed_at = 0;

	if (st->settle_ms > 0)
	{
		TimestampTz settled = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), -st->settle_ms);

		/* too young: perhaps still being written */
		foreach(lc, files)
			if (((CsvFile *) lfirst(lc))->mtime > settled)
			{
				young = lappend(young, lfirst(lc));
				files = foreach_delete_current(files, lc);
			}
	}
	*backlog = 0;
	if (files != NIL)
		csv_known_files(st, p->id, files);

	if (files != NIL || young != NIL)
	{
		values[0] = Int32GetDatum(p->id);
		values[1] = files_array(files, 0);
		values[2] = files_array(files, 1);
		values[3] = files_array(files, 2);
		values[4] = Int64GetDatum(batch_id);
		values[5] = Int32GetDatum((int32) max_files);
		if (max_files == 0)
			nulls[5] = 'n';
		values[6] = files_array(young, 0);
		values[7] = Int64GetDatum(max_bytes);
		if (max_bytes == 0)
			nulls[7] = 'n';
		/* the files not in the log yet, and whether this batch claimed them */
		*backlog = catalog_exec("WITH c AS ("
								"  SELECT * FROM unnest($2::text[], $3::int8[], $4::timestamptz[]) AS c(path, size, mtime)"
								"  WHERE NOT EXISTS (SELECT 1 FROM sluice.file f WHERE f.pipeline_id = $1 AND f.path = c.path)),"
								" claim AS (INSERT INTO sluice.file (pipeline_id, path, size, mtime, batch_id)"
								"  SELECT $1, path, size, mtime, $5"
								"   FROM (SELECT *, row_number() OVER w AS n, sum(size) OVER w AS upto"
								"          FROM c WINDOW w AS (ORDER BY mtime, path ROWS UNBOUNDED PRECEDING)) AS o"
								"  WHERE n = 1 OR $8 IS NULL OR upto <= $8"
								"  ORDER BY mtime, path LIMIT $6"
								"  ON CONFLICT DO NOTHING RETURNING path)"
								" SELECT c.path, c.path IN (SELECT path FROM claim) FROM c"
								" UNION ALL"
								" SELECT y.path, false FROM unnest($7::text[]) AS y(path)"
								"  WHERE NOT EXISTS (SELECT 1 FROM sluice.file f WHERE f.pipeline_id = $1 AND f.path = y.path)",
								8, types, values, nulls, SPI_OK_SELECT);
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			if (strcmp(spi_text(i, 2), "t") == 0)
				claimed++;
			else
				waiting = csv_keep_name(st, waiting, spi_text(i, 1));
		}
	}
	/* a young file that is known changed after it was read: report it once it settles */
	foreach(lc, young)
		waiting = csv_keep_name(st, waiting, ((CsvFile *) lfirst(lc))->path);

	list_free_deep(st->waiting);
	list_free_deep(st->to_dispose);
	st->waiting = waiting;
	st->to_dispose = NIL;
	st->listed_at = listed_at;
	return claimed;		/* the backlog counts the claimed and the young ones too */
}

static bool
csv_file_changed(CsvFile *f)
{
	struct stat st;

	return stat(f->path, &st) == 0 &&
		(st.st_size != f->size || time_t_to_timestamptz(st.st_mtime) != f->mtime);
}

/*
 * COPY one file of the batch, as the owner.  A file that changes while it
 * is read is no bad input: the batch fails as transient and is read again,
 * whole, later, whatever error a half-written line gave.
 */
static uint64
csv_read_file(CsvState *st, CsvFile *f, Oid into, Rejects *rj, DestReceiver *dest)
{
	MemoryContext cxt = CurrentMemoryContext;
	uint64		rows = 0;

	PG_TRY();
	{
		if (rj)
			rows = rejects_copy_file(rj, into, st->attnames, st->options, f->path, NULL);
		else if (dest)
			rows = csv_parse_file(into, st->attnames, st->options, f->path, dest);
		else
			rows = csv_copy_file(into, st->attnames, st->options, f->path);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (!csv_file_changed(f))
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_SLUICE_FILE_CHANGED),
				 errmsg("file \"%s\" changed while it was read", f->path),
				 errdetail("Reading it failed: %s", edata->message)));
	}
	PG_END_TRY();

	if (csv_file_changed(f))
		ereport(ERROR,
				(errcode(ERRCODE_SLUICE_FILE_CHANGED),
				 errmsg("file \"%s\" changed while it was read", f->path),
				 errdetail("The batch will be read again."),
				 errhint("Write files elsewhere and move them into the directory once complete.")));
	return rows;
}

static void
csv_read(void *state, Pipeline *p, Batch *b, Oid into, Rejects *rj)
{
	CsvState   *st = state;
	Datum		values[2] = {Int32GetDatum(p->id), Int64GetDatum(b->id)};
	ListCell   *lc;

	st->batch_files = NIL;
	catalog_exec("SELECT path FROM sluice.file WHERE pipeline_id = $1 AND batch_id = $2 ORDER BY mtime, path",
				 2, (Oid[]) {INT4OID, INT8OID}, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		CsvFile    *f = palloc0(sizeof(CsvFile));

		f->path = spi_text(i, 1);
		st->batch_files = lappend(st->batch_files, f);
	}

	csv_check_read_privilege();
	foreach(lc, st->batch_files)
	{
		CsvFile    *f = lfirst(lc);
		struct stat sb;

		b->unit = psprintf("file \"%s\"", f->path);
		pgstat_report_activity(STATE_RUNNING,
							   psprintf("batch " INT64_FORMAT ": reading %s", b->id, f->path));
		if (stat(f->path, &sb) == 0)
		{
			f->size = sb.st_size;
			f->mtime = time_t_to_timestamptz(sb.st_mtime);
		}
		b->rows += csv_read_file(st, f, into, rj, b->dest);
		b->bytes += f->size;
		b->size += f->size;
		b->units++;
		if (foreach_current_index(lc) == 0)
			crash_point("after_read", b->attempts);
	}
}

/* The batch's files are committed with it, as they were read. */
static void
csv_commit(void *state, Pipeline *p, Batch *b)
{
	CsvState   *st = state;
	Datum		values[5] = {Int32GetDatum(p->id), Int64GetDatum(b->id), files_array(st->batch_files, 0),
		files_array(st->batch_files, 1), files_array(st->batch_files, 2)};
	ListCell   *lc;

	catalog_exec("UPDATE sluice.file f SET committed = true, size = c.size, mtime = c.mtime"
				 " FROM unnest($3::text[], $4::int8[], $5::timestamptz[]) AS c(path, size, mtime)"
				 " WHERE f.pipeline_id = $1 AND f.batch_id = $2 AND f.path = c.path",
				 5, (Oid[]) {INT4OID, INT8OID, TEXTARRAYOID, INT8ARRAYOID, TIMESTAMPTZARRAYOID},
				 values, NULL, SPI_OK_UPDATE);
	/* deleted or archived at the next plan, once the catalog says committed */
	if (strcmp(st->after, "keep") != 0)
		foreach(lc, st->batch_files)
			st->to_dispose = csv_keep_name(st, st->to_dispose, ((CsvFile *) lfirst(lc))->path);
	st->batch_files = NIL;
}

/*
 * A plan deletes or archives the files of committed batches: not before the
 * batch before it commits, so only a source that keeps its files plans ahead.
 */
static bool
csv_plan_ahead(void *state)
{
	return strcmp(((CsvState *) state)->after, "keep") == 0;
}

/* The files of a batch, as the caller sees them. */
static Jsonb *
csv_describe(int32 pipeline_id, int64 batch_id)
{
	Datum		values[2] = {Int32GetDatum(pipeline_id), Int64GetDatum(batch_id)};
	bool		isnull;

	pinned_exec("SELECT jsonb_build_object('log_offset', $2, 'files',"
				"  (SELECT jsonb_agg(jsonb_build_object('path', f.path, 'size', f.size, 'mtime', f.mtime)"
				"                    ORDER BY f.mtime, f.path)"
				"     FROM sluice.file AS f WHERE f.pipeline_id = $1 AND f.batch_id = $2))",
				2, (Oid[]) {INT4OID, INT8OID}, values, NULL, SPI_OK_SELECT);
	return DatumGetJsonbPCopy(spi_datum(0, 1, &isnull));
}

const SourceRoutine csv_source_routine = {
	.type = "csv",
	.open = csv_open,
	.plan = csv_plan,
	.read = csv_read,
	.commit = csv_commit,
	.after_commit = NULL,
	.describe = csv_describe,
	.owner_refused = csv_owner_refused,
	.plan_ahead = csv_plan_ahead,
	.initial_size = 1,			/* bytes: one file */
};

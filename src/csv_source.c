/*
 * csv_source.c
 *		The CSV directory source: listing a directory, COPY options, and
 *		reading one file into a relation with PostgreSQL's own COPY.
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
#include <sys/stat.h>

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

#include "sluice.h"

/* Reading server files takes what COPY FROM a file takes. */
void
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
 * The regular files of a directory whose names match a glob pattern,
 * oldest modification time first, then by name.
 */
List *
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
		char	   *path;
		struct stat st;
		CsvFile    *f;

		if (de->d_name[0] == '.' || fnmatch(pattern, de->d_name, 0) != 0)
			continue;
		path = psprintf("%s/%s", dir, de->d_name);
		if (stat(path, &st) != 0)
		{
			if (errno == ENOENT)
				continue;		/* removed while we looked */
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not stat file \"%s\": %m", path)));
		}
		if (!S_ISREG(st.st_mode))
			continue;
		f = palloc(sizeof(CsvFile));
		f->path = path;
		f->size = st.st_size;
		f->mtime = time_t_to_timestamptz(st.st_mtime);
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
List *
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
uint64
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
void
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

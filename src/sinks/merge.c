/*
 * merge.c
 *		The merge sink: an idempotent upsert by key with MERGE.
 *
 * The last row of a key in file and line order (the staging table's ctid
 * order) wins, so a replay or a duplicate never doubles a row.  A row equal
 * to the one in the target is not written again.  A null key is refused in
 * the select list, row by row, by sluice._null_key(): it would never match,
 * and a replay would insert it again.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "access/htup_details.h"
#include "catalog/pg_operator.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "sink.h"

/*
 * The equality operator of a staged column's type, schema-qualified, so that
 * no operator of a schema on the owner's search_path can stand in for it.
 */
static char *
merge_eq_operator(Oid input, const char *column)
{
	Oid			typid = get_atttype(input, get_attnum(input, column));
	TypeCacheEntry *tc = lookup_type_cache(typid, TYPECACHE_EQ_OPR);
	HeapTuple	tup;
	char	   *result;

	if (!OidIsValid(tc->eq_opr))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("key column \"%s\" of a merge sink has no equality operator", column)));
	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(tc->eq_opr));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", tc->eq_opr);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(((Form_pg_operator) GETSTRUCT(tup))->oprnamespace)),
					  NameStr(((Form_pg_operator) GETSTRUCT(tup))->oprname));
	ReleaseSysCache(tup);
	return result;
}

/* The type of a column of the target, always schema-qualified. */
static char *
merge_target_type(Oid target, const char *column)
{
	AttrNumber	att = get_attnum(target, column);
	Oid			typid;
	int32		typmod;
	Oid			coll;

	if (att == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of the merge sink does not exist in table %s",
						column, sink_relation_name(target))));
	get_atttypetypmodcoll(target, att, &typid, &typmod, &coll);
	return format_type_extended(typid, typmod, FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

/*
 * The MERGE of the rows of input (all, or those whose ctid is in $2).  No
 * name in it is looked up through the owner's search_path: tables are
 * qualified, key equality is the key type's own operator, and a matched
 * row is compared with the new one as text, cast to the target's column
 * types first (so that an unchanged row is not written again).
 */
static char *
merge_statement(Pipeline *p, Oid input, List *keys, bool ignore, bool some_rows)
{
	StringInfoData sql;
	StringInfoData keylist;
	StringInfoData on;
	StringInfoData nullcheck;
	StringInfoData tcols;
	StringInfoData scols;
	StringInfoData set;
	char	   *cols = sink_column_list(input, "");
	char	   *rel = quote_qualified_identifier("pg_temp", get_rel_name(input));
	List	   *colnames = NIL;
	ListCell   *lc;
	bool		only_keys = true;

	initStringInfo(&keylist);
	initStringInfo(&on);
	initStringInfo(&nullcheck);
	foreach(lc, keys)
	{
		const char *k = quote_identifier(lfirst(lc));

		appendStringInfo(&keylist, "%s%s", keylist.len ? ", " : "", k);
		appendStringInfo(&on, "%st.%s %s s.%s", on.len ? " AND " : "", k,
						 merge_eq_operator(input, lfirst(lc)), k);
		appendStringInfo(&nullcheck, " WHEN %s IS NULL THEN sluice._null_key(%s)", k,
						 quote_literal_cstr(lfirst(lc)));
	}

	/* the non-key columns, for the update */
	colnames = sink_columns(input);
	initStringInfo(&tcols);
	initStringInfo(&scols);
	initStringInfo(&set);
	foreach(lc, colnames)
	{
		const char *c = quote_identifier(lfirst(lc));
		ListCell   *kc;
		bool		is_key = false;

		foreach(kc, keys)
			if (strcmp(lfirst(kc), lfirst(lc)) == 0)
				is_key = true;
		if (is_key)
			continue;
		only_keys = false;
		appendStringInfo(&tcols, "%st.%s", tcols.len ? ", " : "", c);
		appendStringInfo(&scols, "%ss.%s::%s", scols.len ? ", " : "", c,
						 merge_target_type(p->target, lfirst(lc)));
		appendStringInfo(&set, "%s%s = s.%s", set.len ? ", " : "", c, c);
	}

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "MERGE INTO %s AS t USING (SELECT DISTINCT ON (%s) *, CASE%s END AS sluice_null_key"
					 " FROM %s%s ORDER BY %s, ctid DESC) AS s ON %s",
					 sink_relation_name(p->target), keylist.data, nullcheck.data, rel,
					 some_rows ? " WHERE ctid = ANY ($2)" : "", keylist.data, on.data);
	if (ignore || only_keys)
		appendStringInfoString(&sql, " WHEN MATCHED THEN DO NOTHING");
	else
		appendStringInfo(&sql, " WHEN MATCHED AND ROW(%s, NULL)::text OPERATOR(pg_catalog.<>) ROW(%s, NULL)::text"
						 " THEN UPDATE SET %s",
						 tcols.data, scols.data, set.data);
	appendStringInfo(&sql, " WHEN NOT MATCHED THEN INSERT (%s) VALUES (%s)",
					 cols, sink_column_list(input, "s."));
	return sql.data;
}

static int64
merge_write(Pipeline *p, Batch *b, Oid input, Oid stage, Rejects *rj)
{
	List	   *keys = jsonb_get_text_list(p->sink, "key");
	char	   *on_match = jsonb_get_text(p->sink, "on_match");
	bool		ignore = on_match != NULL && strcmp(on_match, "ignore") == 0;
	char	   *all = merge_statement(p, input, keys, ignore, false);
	Datum		id = Int64GetDatum(b->id);

	if (rj)
		/* row by row, the last row of a key must win: 'ignore' keeps the first it writes */
		return rejects_write(rj, all, merge_statement(p, input, keys, ignore, true), input, stage,
							 b->id, ignore);
	if (SPI_execute_with_args(all, 1, (Oid[]) {INT8OID}, &id, NULL, false, 0) != SPI_OK_MERGE)
		elog(ERROR, "could not write batch to the sink");
	return (int64) SPI_processed;
}

const SinkRoutine merge_sink_routine = {
	.type = "merge",
	.direct = false,
	.write = merge_write,
};

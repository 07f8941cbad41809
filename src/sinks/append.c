/*
 * append.c
 *		The append sink: every row of a batch is inserted into the target,
 *		exactly once through the batch transaction.  Without a transform
 *		the source COPYs straight into the target (direct), so a batch
 *		costs what COPY costs; otherwise one INSERT ... SELECT takes the
 *		staged rows.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "sink.h"

/* The schema-qualified, quoted name of a sink's table. */
char *
sink_relation_name(Oid relid)
{
	char	   *name = OidIsValid(relid) ? get_rel_name(relid) : NULL;

	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("target table of the pipeline no longer exists"),
				 errdetail("The table with OID %u was dropped.", relid)));
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)), name);
}

/* The names of the columns of a relation, in order. */
List *
sink_columns(Oid relid)
{
	List	   *names = NIL;

	for (AttrNumber att = 1;; att++)
	{
		HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(att));
		Form_pg_attribute attr;

		if (!HeapTupleIsValid(tup))
			break;
		attr = (Form_pg_attribute) GETSTRUCT(tup);
		if (!attr->attisdropped)
			names = lappend(names, pstrdup(NameStr(attr->attname)));
		ReleaseSysCache(tup);
	}
	return names;
}

/* The columns of a relation, quoted, each after prefix, separated by commas. */
char *
sink_column_list(Oid relid, const char *prefix)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, sink_columns(relid))
		appendStringInfo(&buf, "%s%s%s", buf.len > 0 ? ", " : "", prefix, quote_identifier(lfirst(lc)));
	return buf.data;
}

static int64
append_write(Pipeline *p, Batch *b, Oid input, Oid stage, Rejects *rj)
{
	char	   *cols = sink_column_list(input, "");
	char	   *rel = quote_qualified_identifier("pg_temp", get_rel_name(input));
	char	   *all = psprintf("INSERT INTO %s (%s) SELECT %s FROM %s",
						   sink_relation_name(p->target), cols, cols, rel);
	Datum		id = Int64GetDatum(b->id);

	if (rj)
		return rejects_write(rj, all, psprintf("%s WHERE ctid = ANY ($2)", all), input, stage, b->id,
							 false);
	if (SPI_execute_with_args(all, 1, (Oid[]) {INT8OID}, &id, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not write batch to the sink");
	return (int64) SPI_processed;
}

const SinkRoutine append_sink_routine = {
	.type = "append",
	.direct = true,
	.write = append_write,
};

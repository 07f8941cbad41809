/*
 * function.c
 *		The function sink, SQL's foreachBatch: fn(batch_id bigint, batch
 *		regclass) is called inside the batch transaction, as the owner,
 *		with the owner's search_path, so code with side effects elsewhere
 *		can be idempotent by batch id.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"

#include "sink.h"

/* The function, which the catalog keeps as its signature. */
static Oid
function_oid(Pipeline *p)
{
	char	   *fnoid = jsonb_get_text(p->sink, "fnoid");

	if (fnoid == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s of the function sink does not exist", jsonb_get_text(p->sink, "function")),
				 errhint("Create it again, or drop the pipeline and create it with another sink.")));
	return atooid(fnoid);
}

static int64
function_write(Pipeline *p, Batch *b, Oid input, Oid stage, Rejects *rj)
{
	Oid			fn = function_oid(p);
	Datum		values[2] = {Int64GetDatum(b->id), ObjectIdGetDatum(input)};
	char	   *sql = psprintf("SELECT %s($1, $2)",
							   quote_qualified_identifier(get_namespace_name(get_func_namespace(fn)),
														  get_func_name(fn)));

	if (SPI_execute_with_args(sql, 2, (Oid[]) {INT8OID, REGCLASSOID}, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not call the function sink");
	return -1;					/* what it wrote is its own business */
}

static char *
function_describe(Pipeline *p)
{
	return psprintf("function %s", jsonb_get_text(p->sink, "function"));
}

const SinkRoutine function_sink_routine = {
	.type = "function",
	.direct = false,
	.write = function_write,
	.describe = function_describe,
};

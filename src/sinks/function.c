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
#include "miscadmin.h"
#include "utils/acl.h"
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
	LOCAL_FCINFO(fcinfo, 2);
	FmgrInfo	flinfo;
	AclResult	aclresult;

	/* by its oid, not by a name that an overload elsewhere could capture */
	aclresult = pg_proc_aclcheck(fn, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(fn));
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 2, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = Int64GetDatum(b->id);
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = ObjectIdGetDatum(input);
	fcinfo->args[1].isnull = false;
	(void) FunctionCallInvoke(fcinfo);
	return -1;					/* what it wrote is its own business */
}

const SinkRoutine function_sink_routine = {
	.type = "function",
	.direct = false,
	.write = function_write,
};

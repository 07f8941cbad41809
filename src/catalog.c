/*
 * catalog.c
 *		Reading and writing sluice's own tables, as the extension's owner.
 *
 * Users may only read the catalog (row-level security shows each their own
 * pipelines); every change goes through the extension's functions and
 * workers.  Those switch to the extension's owner around each catalog
 * statement only, with search_path pinned to pg_catalog, pg_temp, so that
 * nothing a user created is resolved in our SQL and nothing the user wrote
 * runs with our rights.  Everything else a batch does (reading the source,
 * writing the sink, the transform) stays with the pipeline's owner.
 *
 * An error inside a switched statement needs no cleanup here: aborting the
 * (sub)transaction restores the user and the settings.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/fmgroids.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "common/hashfn.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"

#include "sluice.h"

/*
 * The extension's row in pg_extension: the role that created it, which owns
 * the catalog, and the version of its SQL objects.
 */
static Oid
extension_lookup(char **version)
{
	/* looked up once per transaction: every catalog statement asks */
	static LocalTransactionId cached_lxid = InvalidLocalTransactionId;
	static Oid	cached_owner;
	static char cached_version[NAMEDATALEN];
	Oid			extoid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;

	if (MyProc->lxid == cached_lxid && cached_lxid != InvalidLocalTransactionId)
	{
		if (version)
			*version = pstrdup(cached_version);
		return cached_owner;
	}
	extoid = get_extension_oid("sluice", false);
	rel = table_open(ExtensionRelationId, AccessShareLock);

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "could not find extension sluice");
	cached_owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	d = heap_getattr(tup, Anum_pg_extension_extversion, RelationGetDescr(rel), &isnull);
	strlcpy(cached_version, isnull ? "" : TextDatumGetCString(d), NAMEDATALEN);
	cached_lxid = MyProc->lxid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (version)
		*version = pstrdup(cached_version);
	return cached_owner;
}

static Oid
extension_owner(void)
{
	return extension_lookup(NULL);
}

/*
 * Whether the extension's SQL objects are this library's version.  After a
 * new build is installed and the server restarted, pipelines wait until
 * ALTER EXTENSION sluice UPDATE has brought the catalog along.
 */
bool
extension_version_ok(char **version)
{
	char	   *v;

	(void) extension_lookup(&v);
	if (version)
		*version = v;
	return strcmp(v, SLUICE_VERSION) == 0;
}

void
check_extension_version(void)
{
	char	   *version;

	if (!extension_version_ok(&version))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"sluice\" is at version %s, but its library is %s", version,
						SLUICE_VERSION),
				 errhint("Run ALTER EXTENSION sluice UPDATE.")));
}

/*
 * A worker runs the same few statements at every batch: it keeps their
 * plans (the plan cache replans them when what they use changes).  Keyed
 * by a hash of the statement, its argument types and whose it is; a
 * collision, or a full cache, runs the statement unkept.
 */
#define KEPT_PLANS_MAX 256

typedef struct KeptPlan
{
	uint64		key;
	char	   *sql;
	Oid		   *types;
	int			nargs;
	bool		as_owner;
	SPIPlanPtr	plan;
} KeptPlan;

static HTAB *kept_plans = NULL;

static SPIPlanPtr
kept_plan(bool as_owner, const char *sql, int nargs, Oid *types)
{
	uint64		key = hash_bytes_extended((const unsigned char *) sql, (int) strlen(sql), as_owner);
	KeptPlan   *kp;
	bool		found;
	SPIPlanPtr	plan;

	if (!IsBackgroundWorker)
		return NULL;
	if (nargs > 0)
		key = hash_bytes_extended((const unsigned char *) types, (int) (sizeof(Oid) * nargs), key);
	if (kept_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(KeptPlan);
		ctl.hcxt = TopMemoryContext;
		kept_plans = hash_create("sluice kept plans", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	kp = hash_search(kept_plans, &key, HASH_FIND, NULL);
	if (kp != NULL)
		return kp->as_owner == as_owner && kp->nargs == nargs && strcmp(kp->sql, sql) == 0 &&
			(nargs == 0 || memcmp(kp->types, types, sizeof(Oid) * nargs) == 0) ? kp->plan : NULL;
	if (hash_get_num_entries(kept_plans) >= KEPT_PLANS_MAX)
		return NULL;
	plan = SPI_prepare(sql, nargs, types);
	if (plan == NULL || SPI_keepplan(plan) != 0)
		return NULL;
	kp = hash_search(kept_plans, &key, HASH_ENTER, &found);
	kp->sql = MemoryContextStrdup(TopMemoryContext, sql);
	kp->types = nargs > 0 ? MemoryContextAlloc(TopMemoryContext, sizeof(Oid) * nargs) : NULL;
	if (nargs > 0)
		memcpy(kp->types, types, sizeof(Oid) * nargs);
	kp->nargs = nargs;
	kp->as_owner = as_owner;
	kp->plan = plan;
	return plan;
}

/*
 * Run one statement with search_path pinned, as the extension's owner
 * (catalog statements) or as the current user (our statements over the
 * user's objects).  Fails unless SPI returns expected_rc; returns the
 * number of rows processed.
 */
static uint64
pinned_exec_as(bool as_owner, const char *sql, int nargs, Oid *types, Datum *values,
			   const char *nulls, int expected_rc)
{
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;
	int			rc;
	SPIPlanPtr	plan;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	if (as_owner)
		SetUserIdAndSecContext(extension_owner(), save_sec | SECURITY_LOCAL_USERID_CHANGE);
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);

	plan = kept_plan(as_owner, sql, nargs, types);
	rc = plan ? SPI_execute_plan(plan, values, nulls, false, 0) :
		SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	AtEOXact_GUC(true, nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec);
	if (rc != expected_rc)
		elog(ERROR, "sluice catalog query failed: %s", SPI_result_code_string(rc));
	return SPI_processed;
}

uint64
catalog_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
			 int expected_rc)
{
	return pinned_exec_as(true, sql, nargs, types, values, nulls, expected_rc);
}

uint64
pinned_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls,
			int expected_rc)
{
	return pinned_exec_as(false, sql, nargs, types, values, nulls, expected_rc);
}

char *
spi_text(int row, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col);
}

int64
spi_int64(int row, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

Datum
spi_datum(int row, int col, bool *isnull)
{
	return SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, isnull);
}

void
tid_list_push(TidList *l, ItemPointer tid)
{
	if (l->n == l->max)
	{
		l->max = Max(64, l->max * 2);
		l->tids = l->tids ? repalloc_huge(l->tids, sizeof(ItemPointerData) * l->max)
			: MemoryContextAllocHuge(l->cxt ? l->cxt : CurrentMemoryContext, sizeof(ItemPointerData) * l->max);
	}
	l->tids[l->n++] = *tid;
}

/* n row versions as a tid[] */
Datum
tid_array(const ItemPointerData *tids, int64 n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ArrayType  *arr;

	for (int64 i = 0; i < n; i++)
		elems[i] = PointerGetDatum(&tids[i]);
	arr = construct_array(elems, (int) n, TIDOID, sizeof(ItemPointerData), false, TYPALIGN_SHORT);
	pfree(elems);
	return PointerGetDatum(arr);
}

/*
 * A key of a jsonb object as text (strings, numbers and booleans as
 * jsonb's ->> gives them), or NULL when it is missing or null.
 */
char *
jsonb_get_text(Jsonb *j, const char *key)
{
	JsonbValue	v;

	if (!getKeyJsonValueFromContainer(&j->root, key, strlen(key), &v))
		return NULL;
	switch (v.type)
	{
		case jbvString:
			return pnstrdup(v.val.string.val, v.val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
		case jbvBool:
			return pstrdup(v.val.boolean ? "true" : "false");
		case jbvNull:
			return NULL;
		default:
			elog(ERROR, "sluice option \"%s\" is not a scalar", key);
	}
	return NULL;					/* keep the compiler quiet */
}

int64
jsonb_get_int64(Jsonb *j, const char *key, int64 missing)
{
	char	   *s = jsonb_get_text(j, key);

	return s ? pg_strtoint64(s) : missing;
}

bool
jsonb_get_bool(Jsonb *j, const char *key, bool missing)
{
	char	   *s = jsonb_get_text(j, key);

	return s ? strcmp(s, "true") == 0 : missing;
}

/* Text elements of an array-valued key, as a List of C strings. */
List *
jsonb_get_text_list(Jsonb *j, const char *key)
{
	JsonbValue	v;
	List	   *result = NIL;
	JsonbIterator *it;
	JsonbValue	elem;
	JsonbIteratorToken tok;

	if (!getKeyJsonValueFromContainer(&j->root, key, strlen(key), &v) || v.type != jbvBinary)
		return NIL;
	it = JsonbIteratorInit(v.val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &elem, true)) != WJB_DONE)
		if (tok == WJB_ELEM && elem.type == jbvString)
			result = lappend(result, pnstrdup(elem.val.string.val, elem.val.string.len));
	return result;
}

/*
 * roles.c
 *		Pipelines and the roles that own them: DROP ROLE, DROP OWNED BY and
 *		REASSIGN OWNED BY, through a ProcessUtility_hook.
 *
 * A pipeline's worker connects as its owner, so a role that owns pipelines
 * cannot be dropped, as it could not be while it owns a table.  Pipelines
 * live in one database (sluice.database) while DROP ROLE may run in any:
 * there we look in the catalog; elsewhere in the set of owners that the
 * launcher keeps in shared memory, to which create_pipeline() adds its
 * owner at once.  DROP OWNED BY and REASSIGN OWNED BY in that database drop
 * or hand over the role's pipelines, as they do its tables.
 *
 * The same hooks (and a post_parse_analyze_hook) refuse the commands that
 * would let a role that does not own the catalog lock it beyond ACCESS
 * SHARE, and an event trigger keeps the tables pipelines write from being
 * dropped under them.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "parser/parsetree.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "nodes/makefuncs.h"
#include "utils/lsyscache.h"

#include "sluice.h"

static ProcessUtility_hook_type prev_process_utility_hook = NULL;
static post_parse_analyze_hook_type prev_post_parse_analyze_hook = NULL;

static bool
in_pipelines_database(void)
{
	return OidIsValid(MyDatabaseId) &&
		strcmp(get_database_name(MyDatabaseId), sluice_database) == 0 &&
		OidIsValid(get_extension_oid("sluice", true));
}

/* Refuse to drop a role that owns pipelines. */
static void
check_drop_role(DropRoleStmt *stmt)
{
	bool		here = in_pipelines_database();
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		RoleSpec   *spec = lfirst(lc);
		Oid			role = get_rolespec_oid(spec, true);
		int64		owned = 0;

		if (!OidIsValid(role))
			continue;
		if (here)
		{
			Datum		value = ObjectIdGetDatum(role);

			SPI_connect();
			catalog_exec("SELECT count(*) FROM sluice.pipeline WHERE owner = $1", 1,
						 (Oid[]) {REGROLEOID}, &value, NULL, SPI_OK_SELECT);
			owned = spi_int64(0, 1);
			SPI_finish();
		}
		else if (!owners_known())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot tell yet whether role \"%s\" owns sluice pipelines", get_rolespec_name(spec)),
					 errdetail("The sluice launcher has not read the pipelines of database \"%s\" since the server started.",
							   sluice_database),
					 errhint("Try again in a moment, or run DROP ROLE in database \"%s\".", sluice_database)));
		else if (owners_contains(role))
			owned = -1;			/* some, in the other database */
		if (owned == 0)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("role \"%s\" cannot be dropped because some objects depend on it",
						get_rolespec_name(spec)),
				 owned > 0 ? errdetail_plural("owner of " INT64_FORMAT " sluice pipeline in database \"%s\"",
											  "owner of " INT64_FORMAT " sluice pipelines in database \"%s\"",
											  owned, owned, sluice_database)
				 : errdetail("owner of sluice pipelines in database \"%s\"", sluice_database),
				 errhint("In database \"%s\", drop them with sluice.drop_pipeline(), or run REASSIGN OWNED BY or DROP OWNED BY first.",
						 sluice_database)));
	}
}

/* The roles of DROP OWNED BY or REASSIGN OWNED BY, as an oid[] datum. */
static Datum
role_array(List *roles)
{
	Datum	   *elems = palloc(sizeof(Datum) * list_length(roles));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, roles)
		elems[n++] = ObjectIdGetDatum(get_rolespec_oid(lfirst(lc), false));
	return PointerGetDatum(construct_array(elems, n, OIDOID, sizeof(Oid), true, TYPALIGN_INT));
}

/*
 * Some commands lock a table before they check that the caller owns it
 * (CREATE RULE, CREATE TRIGGER, COMMENT, SECURITY LABEL, ALTER TABLE's
 * ATTACH PARTITION, CREATE TABLE ... INHERITS / PARTITION OF).  Aimed at the
 * catalog by a role that does not own it, such a command would queue a
 * strong lock behind any reader's and stall every pipeline.  Refuse it
 * before it locks anything.
 */
static void
guard_catalog_relation(RangeVar *rv)
{
	Oid			nsp = get_namespace_oid("sluice", true);
	Oid			relid;

	if (rv == NULL || !OidIsValid(nsp))
		return;
	relid = RangeVarGetRelid(rv, NoLock, true);
	if (OidIsValid(relid) && get_rel_namespace(relid) == nsp && !pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, get_relkind_objtype(get_rel_relkind(relid)), get_rel_name(relid));
}

/*
 * A MERGE whose only action is DO NOTHING needs no privilege on its target,
 * yet takes ROW EXCLUSIVE on it until the transaction ends.  Aimed at the
 * catalog by a role that does not own it, refuse it: the error releases the
 * lock its parse analysis took.
 */
static void
sluice_post_parse_analyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze_hook)
		prev_post_parse_analyze_hook(pstate, query, jstate);
	if (query->commandType == CMD_MERGE && query->resultRelation > 0)
	{
		Oid			relid = rt_fetch(query->resultRelation, query->rtable)->relid;
		Oid			nsp = get_namespace_oid("sluice", true);

		if (OidIsValid(nsp) && get_rel_namespace(relid) == nsp &&
			!pg_class_ownercheck(relid, GetUserId()))
			aclcheck_error(ACLCHECK_NO_PRIV, get_relkind_objtype(get_rel_relkind(relid)),
						   get_rel_name(relid));
	}
}

static void
guard_catalog(Node *stmt)
{
	ListCell   *lc;

	switch (nodeTag(stmt))
	{
		case T_RuleStmt:
			guard_catalog_relation(((RuleStmt *) stmt)->relation);
			break;
		case T_CreateTrigStmt:
			guard_catalog_relation(((CreateTrigStmt *) stmt)->relation);
			break;
		case T_AlterTableStmt:
			guard_catalog_relation(((AlterTableStmt *) stmt)->relation);
			foreach(lc, ((AlterTableStmt *) stmt)->cmds)
			{
				AlterTableCmd *cmd = lfirst(lc);

				if ((cmd->subtype == AT_AttachPartition || cmd->subtype == AT_DetachPartition) &&
					cmd->def && IsA(cmd->def, PartitionCmd))
					guard_catalog_relation(((PartitionCmd *) cmd->def)->name);
			}
			break;
		case T_CreateStmt:
			foreach(lc, ((CreateStmt *) stmt)->inhRelations)
				guard_catalog_relation(lfirst(lc));
			break;
		case T_CommentStmt:
		case T_SecLabelStmt:
			{
				ObjectType	type = IsA(stmt, CommentStmt) ? ((CommentStmt *) stmt)->objtype
				: ((SecLabelStmt *) stmt)->objtype;
				Node	   *object = IsA(stmt, CommentStmt) ? ((CommentStmt *) stmt)->object
				: ((SecLabelStmt *) stmt)->object;

				if (type == OBJECT_TABLE || type == OBJECT_VIEW || type == OBJECT_SEQUENCE)
					guard_catalog_relation(makeRangeVarFromNameList(castNode(List, object)));
				else if (type == OBJECT_COLUMN && list_length(castNode(List, object)) > 1)
					guard_catalog_relation(makeRangeVarFromNameList(list_truncate(list_copy(castNode(List, object)),
																				 list_length(castNode(List, object)) - 1)));
			}
			break;
		default:
			break;
	}
}

static void
sluice_process_utility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					   ProcessUtilityContext context, ParamListInfo params,
					   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;

	if (IsA(stmt, DropRoleStmt))
		check_drop_role((DropRoleStmt *) stmt);
	guard_catalog(stmt);

	/*
	 * DROP OWNED drops the pipelines before the tables they write, which
	 * they protect (sluice_on_drop).  If the command then finds the caller
	 * may not, it fails and this rolls back with it.
	 */
	if (IsA(stmt, DropOwnedStmt) && in_pipelines_database())
	{
		Datum		value = role_array(((DropOwnedStmt *) stmt)->roles);

		SPI_connect();
		catalog_exec("DELETE FROM sluice.pipeline WHERE owner::oid = ANY ($1)", 1,
					 (Oid[]) {OIDARRAYOID}, &value, NULL, SPI_OK_DELETE);
		SPI_finish();
		sluice_wake_launcher();
	}

	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	/* after the command itself checked the caller's rights over the roles */
	if (IsA(stmt, ReassignOwnedStmt) && in_pipelines_database())
	{
		Datum		values[2];

		SPI_connect();
		values[0] = role_array(((ReassignOwnedStmt *) stmt)->roles);
		values[1] = ObjectIdGetDatum(get_rolespec_oid(((ReassignOwnedStmt *) stmt)->newrole, false));
		catalog_exec("UPDATE sluice.pipeline SET owner = $2 WHERE owner::oid = ANY ($1)", 2,
					 (Oid[]) {OIDARRAYOID, REGROLEOID}, values, NULL, SPI_OK_UPDATE);
		SPI_finish();
		/* the launcher refreshes the owners and restarts workers as the new owner */
		sluice_wake_launcher();
	}
}

void
roles_install_hook(void)
{
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = sluice_process_utility;
	prev_post_parse_analyze_hook = post_parse_analyze_hook;
	post_parse_analyze_hook = sluice_post_parse_analyze;
}

/*
 * sluice._on_drop(), an event trigger on sql_drop: a table a pipeline writes
 * into (its target, late-rows or state table) cannot be dropped while the
 * pipeline exists, as if the pipeline depended on it.  The catalog keeps
 * such a table as a regclass, which would otherwise be left naming an OID
 * that a dump and restore could give to another table.
 */
PG_FUNCTION_INFO_V1(sluice_on_drop);
Datum
sluice_on_drop(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "sluice_on_drop must be called as an event trigger");
	/* DROP EXTENSION sluice drops the catalog too */
	if (!OidIsValid(get_extension_oid("sluice", true)) ||
		!OidIsValid(get_relname_relid("pipeline", get_namespace_oid("sluice", true))))
		PG_RETURN_VOID();

	SPI_connect();
	if (catalog_exec("SELECT p.name, d.object_identity, p.owner::oid FROM pg_catalog.pg_event_trigger_dropped_objects() AS d,"
					 "  sluice.pipeline AS p"
					 " WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0"
					 "   AND d.objid IN (p.target, p.late_rows, p.state_table, p.dedupe_table) LIMIT 1",
					 0, NULL, NULL, NULL, SPI_OK_SELECT) > 0)
	{
		bool		isnull;
		Oid			owner = DatumGetObjectId(spi_datum(0, 3, &isnull));

		/* another role's pipeline is not named to someone who cannot see it */
		if (has_privs_of_role(GetUserId(), owner))
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("cannot drop table %s because sluice pipeline \"%s\" writes into it",
							spi_text(0, 2), spi_text(0, 1)),
					 errhint("Drop the pipeline first with sluice.drop_pipeline().")));
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop table %s because a sluice pipeline of role %s writes into it",
						spi_text(0, 2), quote_identifier(GetUserNameFromId(owner, false))),
				 errhint("Revoke that role's privileges on the table, and have it or a superuser drop the pipeline.")));
	}
	SPI_finish();
	PG_RETURN_VOID();
}

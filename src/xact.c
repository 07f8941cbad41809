/*
 * xact.c
 *		The transaction and SPI prologue and epilogue that every unit of
 *		work of a worker shares, and catching the error of a failed one.
 */
#include "postgres.h"

#include "access/xact.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "sluice.h"

/* Start a transaction with SPI and a snapshot, and say what it does. */
void
xact_begin(const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

void
xact_end(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * The commit of the transaction in progress need not wait for the disk
 * (synchronous_commit off for it alone): a later commit's flush makes it
 * durable, or a crash before then takes it back whole.
 */
void
xact_no_wait(void)
{
	(void) set_config_option("synchronous_commit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * In a PG_CATCH block: the error, copied into cxt, after the transaction
 * was rolled back.  Not logged here: the caller logs it once, saying what
 * comes of it.
 */
ErrorData *
xact_catch(MemoryContext cxt)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
	return edata;
}

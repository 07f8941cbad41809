/*
 * kafka.c
 *		The Kafka source: its SourceRoutine, the librdkafka consumer its
 *		worker keeps, planning offsets, and reading messages through COPY's
 *		own parser.
 *
 * Its offsets are sluice.kafka_offset: the next offset of each partition,
 * advanced in the batch's transaction with a compare-and-set on the value
 * the batch started from.  The plan of batch N writes, in its own
 * transaction and before anything is read, the start and end offset of
 * each partition into the batch's row (write-ahead): the end is where the
 * partition stood at the plan (its last stable offset, as the consumer reads
 * committed records only), capped by max_offsets_per_trigger.  A batch that
 * is replayed reads the same messages; Kafka's consumer groups play no
 * part: the worker's consumer (librdkafka's simple consumer, kept across
 * batches) starts each partition of a batch at the batch's start offset and
 * stops it at the end.
 *
 * A batch is read by feeding the messages to COPY FROM through its data
 * source callback, each message one line, so an append sink loads at COPY's
 * speed and every type parses as COPY parses it.  A CSV message must be one
 * record: one whose quotes do not close, or with a line break outside
 * quotes, would run into the next message, and is refused before COPY sees
 * it.  JSON and text messages are written as CSV records of the columns.
 */
#include "postgres.h"

#include <math.h>

#include <librdkafka/rdkafka.h>

#include "access/table.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/copy.h"
#include "commands/copyfrom_internal.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "parser/parse_relation.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "mb/pg_wchar.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/timestamp.h"

#include "source.h"
#include "sluice.h"

/* how long a broker may keep us waiting, for metadata at creation and while reading */
#define KAFKA_CHECK_TIMEOUT_MS 5000
#define KAFKA_REQUEST_TIMEOUT_MS 10000
#define KAFKA_READ_TIMEOUT_MS 30000
#define KAFKA_POLL_MS 100
#define KAFKA_TAKE 1024			/* messages taken from the queue at once */

/* settings sluice makes itself */
static const char *const kafka_own_options[] = {
	"bootstrap.servers", "metadata.broker.list", "group.id", "group.instance.id",
	"enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset", "isolation.level",
	"enable.partition.eof", "allow.auto.create.topics", NULL
};

/*
 * The settings a user may give: security, authentication, TLS, sockets and
 * fetch timing.  Anything else is refused, since librdkafka has settings
 * that load code (plugin.library.paths, ssl.providers, ssl.engine.location),
 * run commands (the Kerberos kinit command), write files (offset.store.path)
 * or take memory outside PostgreSQL's accounting.
 */
static const char *const kafka_allowed_options[] = {
	"security.protocol", "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password",
	"ssl.ca.location", "ssl.ca.pem", "ssl.certificate.location", "ssl.certificate.pem",
	"ssl.key.location", "ssl.key.pem", "ssl.key.password", "ssl.keystore.location",
	"ssl.keystore.password", "ssl.crl.location", "ssl.cipher.suites", "ssl.curves.list",
	"ssl.sigalgs.list", "ssl.endpoint.identification.algorithm", "enable.ssl.certificate.verification",
	"client.id", "client.rack", "socket.timeout.ms", "socket.connection.setup.timeout.ms",
	"socket.keepalive.enable", "socket.nagle.disable", "connections.max.idle.ms",
	"reconnect.backoff.ms", "reconnect.backoff.max.ms", "retry.backoff.ms", "metadata.max.age.ms",
	"topic.metadata.refresh.interval.ms", "topic.metadata.refresh.fast.interval.ms",
	"broker.address.family", "broker.address.ttl", "api.version.request",
	"api.version.request.timeout.ms", "broker.version.fallback", "fetch.wait.max.ms",
	"fetch.min.bytes", "fetch.error.backoff.ms", "check.crcs", NULL
};

/* SASL mechanisms that need no command, no ticket cache of the server's and no URL fetched */
static const char *const kafka_allowed_mechanisms[] = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", NULL};

#define KAFKA_MAX_BROKERS 64	/* librdkafka starts a thread per broker */
#define KAFKA_MAX_PARTITIONS 10000

typedef struct KafkaPartition
{
	int32		partition;
	int64		start;
	int64		end;
	int64		latest;			/* where the partition stood at the plan (progress_json) */
	bool		done;
} KafkaPartition;

typedef struct KafkaState
{
	char	   *brokers;
	char	   *topic;
	Jsonb	   *options;
	enum
	{
		KAFKA_CSV, KAFKA_JSON, KAFKA_TEXT
	}			format;
	List	   *attnames;		/* every column */
	int			nvalue;			/* of which the message fills the first nvalue */
	char	  **value_names;
	bool		include_metadata;
	bool		fail_on_data_loss;
	TimestampTz short_since;	/* since when the plans found fewer than min_offsets */
	bool		waits;			/* not run_once: min_offsets applies */
	bool		start_latest;	/* starting_offsets 'latest' */
	Jsonb	   *start_at;		/* or {partition: offset}, NULL for 'earliest' or 'latest' */
	List	   *only;			/* the partitions to read (Integer), NIL for all */
	List	   *copy_options;
	rd_kafka_t *rk;
	rd_kafka_topic_t *rkt;
	rd_kafka_queue_t *queue;	/* where the partitions being read deliver */
	char		last_error[512];	/* from librdkafka's error callback */

	/* messages taken from the queue, in batches, not handled yet */
	rd_kafka_message_t *taken[KAFKA_TAKE];
	int			ntaken;
	int			next_taken;
	rd_kafka_message_t *current;	/* being added to what COPY reads */
	Rejects    *rj;				/* when the batch sets bad rows aside */
	int64		nset_aside;		/* messages set aside before COPY saw them */

	/* the batch being read */
	KafkaPartition *parts;
	int			nparts;
	int			ndone;
	StringInfoData pending;		/* bytes for COPY not handed over yet */
	int			pending_off;
	int32	   *line_partition; /* the message of each line COPY reads */
	int64	   *line_offset;
	uint64		nlines;
	uint64		maxlines;
	CopyFromState cstate;
	int64		bytes;
} KafkaState;

static void kafka_drop_taken(KafkaState *st);

/* the read in progress: COPY's data source callback takes no argument */
static KafkaState *reading = NULL;

static void
kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	KafkaState *st = opaque;

	if (st)
		strlcpy(st->last_error, reason, sizeof(st->last_error));
}

static bool
name_in(const char *name, const char *const *list)
{
	for (int i = 0; list[i]; i++)
		if (strcmp(name, list[i]) == 0)
			return true;
	return false;
}

/* An option that names a file the server would read. */
static bool
option_names_file(const char *name)
{
	size_t		len = strlen(name);

	return (len > 9 && strcmp(name + len - 9, ".location") == 0) ||
		strcmp(name, "sasl.kerberos.keytab") == 0 || strcmp(name, "sasl.oauthbearer.config") == 0;
}

/* An option's value as text: a string, a number or a boolean. */
static char *
kafka_option_value(const char *key, JsonbValue *v)
{
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvBool)
		return v->val.boolean ? "true" : "false";
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid value for librdkafka option \"%s\"", key),
			 errdetail("A value is a string, a number or a boolean.")));
	return NULL;				/* keep the compiler quiet */
}

/*
 * The user's options as name/value pairs, checked as the current user: only
 * allowed settings, files only for roles that may read them.  No value is
 * ever put into a message: it may be a secret.
 */
static List *
kafka_check_options(const char *brokers, Jsonb *options)
{
	JsonbIterator *it = JsonbIteratorInit(&options->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	List	   *pairs = NIL;
	int			nbrokers = 1;

	for (const char *c = brokers; *c; c++)
		nbrokers += *c == ',';
	if (nbrokers > KAFKA_MAX_BROKERS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many Kafka brokers: %d", nbrokers),
				 errdetail("A source names at most %d bootstrap brokers; the others are found from them.",
						   KAFKA_MAX_BROKERS)));

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *value;

		if (tok == WJB_KEY)
		{
			key = pnstrdup(v.val.string.val, v.val.string.len);
			continue;
		}
		if (tok != WJB_VALUE || key == NULL)
			continue;
		if (name_in(key, kafka_own_options))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("librdkafka option \"%s\" is set by sluice", key),
					 errhint("Give the brokers as the source's brokers; sluice reads committed records from the offsets it keeps itself.")));
		if (!name_in(key, kafka_allowed_options))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("librdkafka option \"%s\" is not allowed", key),
					 errdetail("A Kafka source takes the settings of security, authentication, TLS, sockets and fetch timing only."),
					 errhint("See the README for the list.")));
		if (option_names_file(key) && !has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied for librdkafka option \"%s\"", key),
					 errdetail("It names a file the server reads: only roles with privileges of the \"pg_read_server_files\" role may set it.")));
		value = kafka_option_value(key, &v);
		if (strncmp(key, "sasl.mechanism", 14) == 0)
		{
			bool		ok = false;

			for (int i = 0; kafka_allowed_mechanisms[i]; i++)
				ok |= pg_strcasecmp(value, kafka_allowed_mechanisms[i]) == 0;
			if (!ok)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("SASL mechanism \"%s\" is not supported by a Kafka source", value),
						 errhint("Use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")));
		}
		pairs = lappend(pairs, list_make2(key, value));
		key = NULL;
	}
	return pairs;
}

/* A librdkafka configuration from the brokers and the user's options. */
static rd_kafka_conf_t *
kafka_conf(const char *brokers, Jsonb *options, KafkaState *st)
{
	List	   *pairs = kafka_check_options(brokers, options);
	rd_kafka_conf_t *conf;
	char		err[512];
	ListCell   *lc;
	/*
	 * A batch reads up to offsets it knows are there, and the plan asks each
	 * partition's leader where it ends: a fetch that waits for more data
	 * would hold the plan's request behind it, so it waits 10 ms at most.
	 */
	const char *defaults[][2] = {
		{"client.id", "sluice"},
		{"fetch.wait.max.ms", "10"},
		{"socket.timeout.ms", "10000"},
	};
	const char *own[][2] = {
		{"bootstrap.servers", brokers},
		{"enable.auto.commit", "false"},
		{"enable.auto.offset.store", "false"},
		{"auto.offset.reset", "error"},
		{"isolation.level", "read_committed"},
		{"enable.partition.eof", "true"},
		{"allow.auto.create.topics", "false"},
		/*
		 * What the consumer fetches ahead, over all the partitions of a
		 * batch.  Below these a fetcher that finds the queue full backs off
		 * for long, and a batch took 2.3 times as long: 64 MB at most.
		 */
		{"queued.max.messages.kbytes", "65536"},
		{"queued.min.messages", "1000000"},
		{"sasl.kerberos.min.time.before.relogin", "0"},
	};

	conf = rd_kafka_conf_new();
	for (int i = 0; i < lengthof(defaults); i++)
		if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, sizeof(err)) != RD_KAFKA_CONF_OK)
			break;
	foreach(lc, pairs)
	{
		const char *key = linitial(lfirst(lc));
		rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, key, lsecond(lfirst(lc)), err, sizeof(err));

		if (res != RD_KAFKA_CONF_OK)
		{
			rd_kafka_conf_destroy(conf);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 res == RD_KAFKA_CONF_UNKNOWN
					 ? errmsg("unknown librdkafka option \"%s\"", key)
					 : errmsg("invalid value for librdkafka option \"%s\"", key),
					 errhint("See the configuration properties of librdkafka %s.", rd_kafka_version_str())));
		}
	}
	for (int i = 0; i < lengthof(own); i++)
		if (rd_kafka_conf_set(conf, own[i][0], own[i][1], err, sizeof(err)) != RD_KAFKA_CONF_OK &&
			strncmp(own[i][0], "sasl.", 5) != 0)	/* a build without SASL has no Kerberos either */
		{
			rd_kafka_conf_destroy(conf);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid Kafka brokers \"%s\"", brokers),
					 errdetail("%s", err)));
		}
	rd_kafka_conf_set_log_cb(conf, NULL);
	rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
	rd_kafka_conf_set_opaque(conf, st);
	return conf;
}

static rd_kafka_t *
kafka_consumer(const char *brokers, Jsonb *options, KafkaState *st)
{
	rd_kafka_conf_t *conf = kafka_conf(brokers, options, st);
	char		err[512];
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));

	if (rk == NULL)
	{
		rd_kafka_conf_destroy(conf);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not create a Kafka consumer"),
				 errdetail("%s", err)));
	}
	return rk;
}

/*
 * The partition count of a topic, asking the brokers for at most timeout_ms
 * in steps that let a cancel through.  A broker that cannot be reached, or
 * a topic that does not exist, is an error.  It asks for the metadata of
 * all topics: a request naming the topic could make a broker that creates
 * topics on demand create it.
 */
static int
kafka_partition_count(rd_kafka_t *rk, const char *brokers, const char *topic, int timeout_ms,
					  const char *last_error)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
	bool		answered = false;
	int			count = -1;

	for (int waited = 0; waited < timeout_ms && count < 0; waited += 250)
	{
		CHECK_FOR_INTERRUPTS();
		err = rd_kafka_metadata(rk, 1, NULL, &md, 250);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			continue;
		answered = true;
		for (int i = 0; i < md->topic_cnt; i++)
			if (strcmp(md->topics[i].topic, topic) == 0 && md->topics[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
				count = md->topics[i].partition_cnt;
		rd_kafka_metadata_destroy(md);
		if (count < 0)
			break;
	}
	if (count >= 0)
		return count;
	if (answered)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("Kafka topic \"%s\" does not exist", topic)));
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("could not reach Kafka brokers \"%s\"", brokers),
			 errdetail("%s", last_error && last_error[0] ? last_error : rd_kafka_err2str(err))));
	return -1;					/* keep the compiler quiet */
}

/* Reading a topic takes EXECUTE on sluice.kafka_source(), which a superuser grants. */
static char *
kafka_owner_refused(Oid owner, const char **hint)
{
	Oid			fn = LookupFuncName(list_make2(makeString("sluice"), makeString("kafka_source")), -1, NULL, true);

	if (OidIsValid(fn) && pg_proc_aclcheck(fn, owner, ACL_EXECUTE) == ACLCHECK_OK)
		return NULL;
	*hint = "Pipeline workers connect as the pipeline's owner. "
		"Grant the owner EXECUTE on sluice.kafka_source() again, then call sluice.start().";
	return psprintf("Role %s may no longer execute sluice.kafka_source().",
					quote_identifier(GetUserNameFromId(owner, false)));
}

static void
kafka_check_privilege(void)
{
	const char *hint = NULL;
	const char *role;

	if (kafka_owner_refused(GetUserId(), &hint) == NULL)
		return;
	role = quote_identifier(GetUserNameFromId(GetUserId(), false));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to read Kafka topics"),
			 errdetail("Role %s may not execute sluice.kafka_source().", role),
			 errhint("A superuser can GRANT EXECUTE ON FUNCTION sluice.kafka_source TO %s.", role)));
}

/*
 * sluice._kafka_check(brokers text, topic text, options jsonb) returns int
 *
 * Checks a Kafka source's options as librdkafka takes them, and that its
 * brokers answer and know the topic, within a few seconds; returns the
 * topic's partition count.
 */
PG_FUNCTION_INFO_V1(sluice_kafka_check);
Datum
sluice_kafka_check(PG_FUNCTION_ARGS)
{
	char	   *brokers = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *topic = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Jsonb	   *options = PG_GETARG_JSONB_P(2);
	KafkaState *st = palloc0(sizeof(KafkaState));
	rd_kafka_t *rk;
	volatile int count = -1;

	kafka_check_privilege();
	rk = kafka_consumer(brokers, options, st);
	PG_TRY();
	{
		count = kafka_partition_count(rk, brokers, topic, KAFKA_CHECK_TIMEOUT_MS, st->last_error);
	}
	PG_FINALLY();
	{
		rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
	}
	PG_END_TRY();
	PG_RETURN_INT32(count);
}

static void
kafka_close(int code, Datum arg)
{
	KafkaState *st = (KafkaState *) DatumGetPointer(arg);

	if (st->rk)
	{
		kafka_drop_taken(st);
		rd_kafka_queue_destroy(st->queue);
		if (st->rkt)
			rd_kafka_topic_destroy(st->rkt);
		rd_kafka_destroy(st->rk);
		st->rk = NULL;
	}
}

static void *
kafka_open(Pipeline *p, MemoryContext cxt, bool waits)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	KafkaState *st = palloc0(sizeof(KafkaState));
	JsonbValue	v;
	char	   *format;
	ListCell   *lc;
	int			i = 0;

	st->brokers = jsonb_get_text(p->source, "brokers");
	st->topic = jsonb_get_text(p->source, "topic");
	format = jsonb_get_text(p->source, "format");
	st->format = format == NULL || strcmp(format, "csv") == 0 ? KAFKA_CSV
		: strcmp(format, "json") == 0 ? KAFKA_JSON : KAFKA_TEXT;
	st->include_metadata = jsonb_get_bool(p->source, "include_metadata", false);
	st->fail_on_data_loss = jsonb_get_bool(p->source, "fail_on_data_loss", true);
	st->waits = waits;
	if (getKeyJsonValueFromContainer(&p->source->root, "options", 7, &v) && v.type == jbvBinary)
		st->options = JsonbValueToJsonb(&v);
	else
		st->options = JsonbValueToJsonb(&(JsonbValue) {.type = jbvBinary});
	if (getKeyJsonValueFromContainer(&p->source->root, "starting_offsets", 16, &v))
	{
		if (v.type == jbvBinary)
			st->start_at = JsonbValueToJsonb(&v);
		else
			st->start_latest = v.type == jbvString && v.val.string.len == 6 &&
				strncmp(v.val.string.val, "latest", 6) == 0;
	}
	if (getKeyJsonValueFromContainer(&p->source->root, "partitions", 10, &v) && v.type == jbvBinary)
	{
		JsonbIterator *it = JsonbIteratorInit(v.val.binary.data);
		JsonbValue	elem;

		while (JsonbIteratorNext(&it, &elem, true) != WJB_DONE)
			if (elem.type == jbvNumeric)
				st->only = lappend_int(st->only,
									   DatumGetInt32(DirectFunctionCall1(numeric_int4,
																		 NumericGetDatum(elem.val.numeric))));
	}

	st->nvalue = list_length(p->columns) - (st->include_metadata ? 5 : 0);
	st->value_names = palloc(sizeof(char *) * Max(st->nvalue, 1));
	foreach(lc, p->columns)
	{
		SourceColumn *c = lfirst(lc);

		st->attnames = lappend(st->attnames, makeString(pstrdup(c->name)));
		if (i < st->nvalue)
			st->value_names[i] = pstrdup(c->name);
		i++;
	}
	st->copy_options = list_make2(makeDefElem("format", (Node *) makeString("csv"), -1),
								  makeDefElem("header", (Node *) makeString("false"), -1));
	if (st->format == KAFKA_CSV && jsonb_get_text(p->source, "delimiter"))
		st->copy_options = lappend(st->copy_options,
								   makeDefElem("delimiter",
											   (Node *) makeString(jsonb_get_text(p->source, "delimiter")), -1));
	initStringInfo(&st->pending);
	st->rk = kafka_consumer(st->brokers, st->options, st);
	st->queue = rd_kafka_queue_new(st->rk);
	st->rkt = rd_kafka_topic_new(st->rk, st->topic, NULL);
	if (st->rkt == NULL)
	{
		kafka_close(0, PointerGetDatum(st));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("could not read Kafka topic \"%s\"", st->topic),
				 errdetail("%s", rd_kafka_err2str(rd_kafka_last_error()))));
	}
	on_proc_exit(kafka_close, PointerGetDatum(st));
	MemoryContextSwitchTo(old);
	return st;
}

static int64
kafka_start_offset(KafkaState *st, int32 partition, bool first, int64 lo, int64 hi)
{
	JsonbValue	v;
	char		key[16];
	int64		offset = -2;	/* earliest, for a partition seen after the first plan */

	if (first && st->start_latest)
		offset = -1;
	else if (first && st->start_at)
	{
		snprintf(key, sizeof(key), "%d", partition);
		if (getKeyJsonValueFromContainer(&st->start_at->root, key, strlen(key), &v) && v.type == jbvNumeric)
			offset = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(v.val.numeric)));
	}
	if (offset == -2)
		return lo;
	if (offset == -1)
		return hi;
	return offset;
}

/* {"topic": {"0": offset, ...}} of each partition's start, end or latest offset */
static void
append_partition_json(StringInfo buf, const char *topic, KafkaPartition *parts, int n, char which)
{
	appendStringInfoChar(buf, '{');
	escape_json(buf, topic);
	appendStringInfoString(buf, ": {");
	for (int i = 0; i < n; i++)
		appendStringInfo(buf, "%s\"%d\": " INT64_FORMAT, i > 0 ? ", " : "", parts[i].partition,
						 which == 'e' ? parts[i].end : which == 'l' ? parts[i].latest : parts[i].start);
	appendStringInfoString(buf, "}}");
}

/*
 * Whether a plan that found fewer messages than min_offsets_per_trigger
 * goes on anyway: max_trigger_delay has passed since the last batch was
 * planned (or, before the first batch, since the plans found messages).
 * run_once drains what is there and never waits.
 */
static bool
kafka_waited_enough(KafkaState *st, Pipeline *p, int64 max_delay_ms)
{
	Datum		values[1] = {Int32GetDatum(p->id)};
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz since;
	bool		isnull;

	if (!st->waits)
		return true;
	catalog_exec("SELECT max(planned_at) FROM sluice.batch WHERE pipeline_id = $1",
				 1, (Oid[]) {INT4OID}, values, NULL, SPI_OK_SELECT);
	since = DatumGetTimestampTz(spi_datum(0, 1, &isnull));
	if (isnull)
	{
		if (st->short_since == 0)
			st->short_since = now;
		since = st->short_since;
	}
	return now - since >= max_delay_ms * 1000;
}

/*
 * Plan the next slice: for each partition read, from its next offset to
 * where it stands now, capped by max_rate_per_partition times the trigger
 * interval, then by max_offsets_per_trigger (or backpressure's limit, in
 * offsets, if lower) spread over the partitions by their lag, as Spark does; with min_offsets_per_trigger, nothing until
 * that many are there or max_trigger_delay has passed.  A partition seen for the first
 * time starts where starting_offsets says (later partitions: the
 * earliest); its row is written now, so a later plan starts there too.
 */
static int64
kafka_plan(void *state, Pipeline *p, int64 batch_id, int64 *limit, int64 *backlog, Jsonb **slice)
{
	KafkaState *st = state;
	int			count;
	KafkaPartition *parts;
	Datum	   *new_parts;
	Datum	   *new_offsets;
	int64	   *stored;
	TimestampTz deadline;
	int			nnew = 0;
	int			n = 0;
	bool		first;
	int64		lag = 0;
	int64		claimed = 0;
	Datum		values[4] = {Int32GetDatum(p->id), CStringGetTextDatum(st->topic)};
	StringInfoData start_json;
	StringInfoData end_json;
	StringInfoData latest_json;
	/* the limits as they are now: alter_pipeline() may change them */
	int64		max_offsets = jsonb_get_int64(p->source, "max_offsets_per_trigger", 0);
	int64		max_rate = jsonb_get_int64(p->source, "max_rate_per_partition", 0);
	int64		min_offsets = jsonb_get_int64(p->source, "min_offsets_per_trigger", 0);

	/* what backpressure allows is never below min_offsets_per_trigger */
	if (*limit > 0 && *limit < min_offsets)
		*limit = min_offsets;
	if (*limit > 0 && (max_offsets == 0 || *limit < max_offsets))
		max_offsets = *limit;
	kafka_check_privilege();
	(void) kafka_check_options(st->brokers, st->options);	/* the owner may have lost pg_read_server_files */
	count = kafka_partition_count(st->rk, st->brokers, st->topic, KAFKA_REQUEST_TIMEOUT_MS, st->last_error);
	if (count > KAFKA_MAX_PARTITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("Kafka topic \"%s\" has %d partitions, more than a pipeline reads (%d)",
						st->topic, count, KAFKA_MAX_PARTITIONS),
				 errhint("Split it over several pipelines with partitions => ...")));
	parts = palloc0(sizeof(KafkaPartition) * Max(count, 1));
	new_parts = palloc(sizeof(Datum) * Max(count, 1));
	new_offsets = palloc(sizeof(Datum) * Max(count, 1));
	stored = palloc(sizeof(int64) * Max(count, 1));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), KAFKA_REQUEST_TIMEOUT_MS);

	/*
	 * Where each partition's next batch starts (-1: not seen yet): where the
	 * committed batches left it, or, when other workers hold planned batches
	 * that read it, where the last of those ends (they commit in order).
	 */
	for (int i = 0; i < count; i++)
		stored[i] = -1;
	catalog_exec("SELECT o.partition, greatest(o.next_offset, max((b.slice->'end'->$2->>o.partition::text)::int8))"
				 " FROM sluice.kafka_offset AS o"
				 " LEFT JOIN sluice.batch AS b ON b.pipeline_id = o.pipeline_id AND b.status = 'planned'"
				 "  AND b.slice->'end'->$2 ? o.partition::text"
				 " WHERE o.pipeline_id = $1 AND o.topic = $2 GROUP BY o.partition, o.next_offset",
				 2, (Oid[]) {INT4OID, TEXTOID}, values, NULL, SPI_OK_SELECT);
	first = SPI_processed == 0;
	for (uint64 i = 0; i < SPI_processed; i++)
		if (spi_int64(i, 1) >= 0 && spi_int64(i, 1) < count)
			stored[spi_int64(i, 1)] = spi_int64(i, 2);
	for (int32 part = 0; part < count; part++)
	{
		KafkaPartition *kp = &parts[n];
		int64		lo,
					hi;
		int64		next = stored[part];
		long		wait_ms = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		rd_kafka_resp_err_t err;

		if (st->only != NIL && !list_member_int(st->only, part))
			continue;
		CHECK_FOR_INTERRUPTS();
		/* the whole plan waits for the brokers 10 s at most */
		err = wait_ms <= 0 ? RD_KAFKA_RESP_ERR__TIMED_OUT
			: rd_kafka_query_watermark_offsets(st->rk, st->topic, part, &lo, &hi, (int) wait_ms);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("could not read the offsets of partition %d of Kafka topic \"%s\"", part, st->topic),
					 errdetail("%s", rd_kafka_err2str(err))));
		if (lo < 0 || hi < lo)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("partition %d of Kafka topic \"%s\" reports offsets from " INT64_FORMAT " to " INT64_FORMAT,
							part, st->topic, lo, hi),
					 errdetail("A broker answered with offsets that cannot be.")));
		kp->partition = part;
		if (next < 0)
		{
			next = Max(lo, Min(hi, kafka_start_offset(st, part, first, lo, hi)));
			new_parts[nnew] = Int32GetDatum(part);
			new_offsets[nnew++] = Int64GetDatum(next);
		}
		else if (next < lo || next > hi)
		{
			/* retention took messages the pipeline has not read, or the topic was made again */
			if (st->fail_on_data_loss)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 next < lo
						 ? errmsg("offsets " INT64_FORMAT " to " INT64_FORMAT " of partition %d of Kafka topic \"%s\" are no longer on the brokers",
								  next, lo - 1, part, st->topic)
						 : errmsg("partition %d of Kafka topic \"%s\" ends at offset " INT64_FORMAT ", before the pipeline's next offset " INT64_FORMAT,
								  part, st->topic, hi, next),
						 errdetail("Messages the pipeline has not read are gone%s.",
								   next < lo ? " (retention)" : "; the topic may have been deleted and made again"),
						 errhint("To go on from the earliest offset the partition has, create the source with fail_on_data_loss => false.")));
			values[2] = Int32GetDatum(part);
			values[3] = Int64GetDatum(lo);
			catalog_exec("UPDATE sluice.kafka_offset SET next_offset = $4"
						 " WHERE pipeline_id = $1 AND topic = $2 AND partition = $3",
						 4, (Oid[]) {INT4OID, TEXTOID, INT4OID, INT8OID}, values, NULL, SPI_OK_UPDATE);
			values[2] = CStringGetTextDatum(next < lo
											? psprintf("offsets " INT64_FORMAT " to " INT64_FORMAT " of partition %d of Kafka topic \"%s\" were lost: skipped " INT64_FORMAT " messages",
													   next, lo - 1, part, st->topic, lo - next)
											: psprintf("partition %d of Kafka topic \"%s\" went back from offset " INT64_FORMAT " to " INT64_FORMAT ": reading it again from offset " INT64_FORMAT,
													   part, st->topic, next, hi, lo));
			catalog_exec("INSERT INTO sluice.error (pipeline_id, sqlstate, message) VALUES ($1, '01000', $3)",
						 3, (Oid[]) {INT4OID, TEXTOID, TEXTOID}, values, NULL, SPI_OK_INSERT);
			values[2] = (Datum) 0;
			next = lo;
		}
		kp->start = next;
		kp->end = kp->latest = hi;
		lag += hi - next;
		n++;
	}
	if (nnew > 0)
	{
		values[2] = PointerGetDatum(construct_array(new_parts, nnew, INT4OID, 4, true, TYPALIGN_INT));
		values[3] = PointerGetDatum(construct_array(new_offsets, nnew, INT8OID, 8, FLOAT8PASSBYVAL,
													TYPALIGN_DOUBLE));
		catalog_exec("INSERT INTO sluice.kafka_offset (pipeline_id, topic, partition, next_offset)"
					 " SELECT $1, $2, p, o FROM unnest($3::int4[], $4::int8[]) AS u(p, o)"
					 " ON CONFLICT DO NOTHING",
					 4, (Oid[]) {INT4OID, TEXTOID, INT4ARRAYOID, INT8ARRAYOID}, values, NULL, SPI_OK_INSERT);
	}

	*backlog = lag;
	if (lag == 0 || (min_offsets > 0 && lag < min_offsets &&
					 !kafka_waited_enough(st, p, jsonb_get_int64(p->source, "max_trigger_delay_ms", 900000))))
		return 0;
	st->short_since = 0;

	/* max_rate_per_partition: messages a second, times the trigger interval (a second for none) */
	if (max_rate > 0)
	{
		double		cap = Max(1.0, floor((double) max_rate * (p->trigger_ms > 0 ? p->trigger_ms : 1000) / 1000));

		lag = 0;
		for (int i = 0; i < n; i++)
		{
			if (parts[i].end - parts[i].start > cap)
				parts[i].end = parts[i].start + (int64) cap;
			lag += parts[i].end - parts[i].start;
		}
	}
	for (int i = 0; i < n; i++)
	{
		int64		size = parts[i].end - parts[i].start;

		if (max_offsets > 0 && lag > max_offsets && size > 0)
		{
			double		prorate = (double) max_offsets * size / lag;
			int64		take = prorate < 1 ? (int64) ceil(prorate) : (int64) floor(prorate);

			parts[i].end = parts[i].start + Min(take, size);
		}
		claimed += parts[i].end - parts[i].start;
	}
	if (claimed == 0)
		return 0;

	initStringInfo(&start_json);
	initStringInfo(&end_json);
	initStringInfo(&latest_json);
	append_partition_json(&start_json, st->topic, parts, n, 's');
	append_partition_json(&end_json, st->topic, parts, n, 'e');
	append_partition_json(&latest_json, st->topic, parts, n, 'l');
	*slice = DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
												CStringGetDatum(psprintf("{\"start\": %s, \"end\": %s, \"latest\": %s}",
																		 start_json.data, end_json.data,
																		 latest_json.data))));
	return claimed;
}

/* The slice of the batch, as its plan wrote it. */
static void
kafka_load_slice(KafkaState *st, Pipeline *p, Batch *b)
{
	Datum		values[3] = {Int32GetDatum(p->id), Int64GetDatum(b->id), CStringGetTextDatum(st->topic)};

	catalog_exec("SELECT s.key::int, s.value::text::int8, (b.slice->'end'->$3->>s.key)::int8"
				 " FROM sluice.batch b, jsonb_each(b.slice->'start'->$3) AS s"
				 " WHERE b.pipeline_id = $1 AND b.batch_id = $2 ORDER BY 1",
				 3, (Oid[]) {INT4OID, INT8OID, TEXTOID}, values, NULL, SPI_OK_SELECT);
	st->nparts = (int) SPI_processed;
	st->parts = palloc0(sizeof(KafkaPartition) * Max(st->nparts, 1));
	for (int i = 0; i < st->nparts; i++)
	{
		st->parts[i].partition = (int32) spi_int64(i, 1);
		st->parts[i].start = spi_int64(i, 2);
		st->parts[i].end = spi_int64(i, 3);
	}
}

static int
kafka_partition_cmp(const void *a, const void *b)
{
	int32		pa = ((const KafkaPartition *) a)->partition;
	int32		pb = ((const KafkaPartition *) b)->partition;

	return pa < pb ? -1 : pa > pb;
}

/* The slice's partition of a message: st->parts is in partition order. */
static KafkaPartition *
kafka_find_partition(KafkaState *st, int32 partition)
{
	KafkaPartition key = {.partition = partition};

	return bsearch(&key, st->parts, st->nparts, sizeof(KafkaPartition), kafka_partition_cmp);
}

static void
kafka_partition_done(KafkaState *st, KafkaPartition *kp)
{
	if (!kp->done)
	{
		kp->done = true;
		st->ndone++;
	}
}

/* A field of a CSV record: quoted, quotes doubled; NULL as nothing. */
static void
append_csv_field(StringInfo buf, const char *s, size_t len, bool first)
{
	if (!first)
		appendStringInfoChar(buf, ',');
	if (s == NULL)
		return;
	appendStringInfoChar(buf, '"');
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] == '"')
			appendStringInfoChar(buf, '"');
		appendStringInfoChar(buf, s[i]);
	}
	appendStringInfoChar(buf, '"');
}

/*
 * Whether a CSV message is one record: its quotes close, and no line break
 * lies outside them.  Returns its length without a trailing line break, or
 * -1.
 */
static ssize_t
kafka_csv_record(const char *s, size_t len)
{
	bool		quoted = false;

	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
		len--;
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] == '"')
			quoted = !quoted;	/* a doubled quote inside quotes toggles twice */
		else if (!quoted && (s[i] == '\n' || s[i] == '\r'))
			return -1;
	}
	return quoted ? -1 : (ssize_t) len;
}

/* Where a message is, as sluice.reject keeps it. */
static char *
kafka_position(KafkaState *st, int32 partition, int64 offset)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"topic\": ");
	escape_json(&buf, st->topic);
	appendStringInfo(&buf, ", \"partition\": %d, \"offset\": " INT64_FORMAT "}", partition, offset);
	return buf.data;
}

/* Rejects' locator: the message that line n of what COPY read came from. */
static char *
kafka_locate(void *arg, int64 line)
{
	KafkaState *st = arg;

	if (line < 1 || line > st->nlines)
		return NULL;
	return kafka_position(st, st->line_partition[line - 1], st->line_offset[line - 1]);
}

/*
 * A message that cannot be a row: the batch fails naming it, or, when the
 * batch sets bad rows aside, it goes into sluice.rejects (or is counted)
 * and COPY never sees it.  Returns false then.
 */
static bool
kafka_bad_message(KafkaState *st, rd_kafka_message_t *m, int sqlerrcode, const char *why)
{
	char	   *message = psprintf("message at offset " INT64_FORMAT " of partition %d of Kafka topic \"%s\" %s",
								   m->offset, m->partition, st->topic, why);

	if (st->rj == NULL)
		ereport(ERROR, (errcode(sqlerrcode), errmsg_internal("%s", message)));
	st->nset_aside++;
	rejects_set_aside(st->rj, kafka_position(st, m->partition, m->offset),
					  m->payload && sqlerrcode != ERRCODE_CHARACTER_NOT_IN_REPERTOIRE
					  ? pnstrdup(m->payload, m->len) : NULL,
					  &(ErrorData) {.sqlerrcode = sqlerrcode, .message = message});
	return false;
}

/* The value of a JSON message as a CSV record of the source's columns; false if it is none. */
static bool
kafka_json_record(KafkaState *st, rd_kafka_message_t *m)
{
	MemoryContext cxt = CurrentMemoryContext;
	Jsonb	   *volatile jb = NULL;
	ErrorData  *volatile edata = NULL;

	/* jsonb_in() only parses: its error can be caught without a subtransaction */
	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(m->payload, m->len))));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	if (edata && ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_DATA_EXCEPTION &&
		edata->sqlerrcode != ERRCODE_STATEMENT_TOO_COMPLEX)
		ReThrowError(edata);	/* out of memory is no bad message */
	if (edata)
		return kafka_bad_message(st, m, ERRCODE_INVALID_TEXT_REPRESENTATION,
								 psprintf("is not JSON: %s", edata->message));
	if (!JB_ROOT_IS_OBJECT(jb))
		return kafka_bad_message(st, m, ERRCODE_BAD_COPY_FILE_FORMAT, "is not a JSON object");
	for (int i = 0; i < st->nvalue; i++)
	{
		JsonbValue	v;
		char	   *s = NULL;

		if (getKeyJsonValueFromContainer(&jb->root, st->value_names[i], strlen(st->value_names[i]), &v))
		{
			if (v.type == jbvString)
				s = pnstrdup(v.val.string.val, v.val.string.len);
			else if (v.type == jbvNumeric)
				s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v.val.numeric)));
			else if (v.type == jbvBool)
				s = v.val.boolean ? "true" : "false";
			else if (v.type == jbvBinary)
				s = JsonbToCString(NULL, v.val.binary.data, v.val.binary.len);
		}
		append_csv_field(&st->pending, s, s ? strlen(s) : 0, i == 0);
	}
	return true;
}

/* Add one message to what COPY reads, as one line; false if it was set aside. */
static bool
kafka_add_message(KafkaState *st, rd_kafka_message_t *m)
{
	int			mark = st->pending.len;

	if (m->payload == NULL)
		return kafka_bad_message(st, m, ERRCODE_BAD_COPY_FILE_FORMAT, "has no value");
	/* COPY's reader could not go on past a bad byte sequence */
	if (!pg_verify_mbstr(GetDatabaseEncoding(), m->payload, (int) m->len, true))
		return kafka_bad_message(st, m, ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
								 psprintf("is not valid %s", GetDatabaseEncodingName()));
	if (st->include_metadata && m->key &&
		!pg_verify_mbstr(GetDatabaseEncoding(), m->key, (int) m->key_len, true))
		return kafka_bad_message(st, m, ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
								 psprintf("has a key that is not valid %s", GetDatabaseEncodingName()));
	if (st->format == KAFKA_CSV)
	{
		ssize_t		len = kafka_csv_record(m->payload, m->len);

		if (len < 0)
			return kafka_bad_message(st, m, ERRCODE_BAD_COPY_FILE_FORMAT, "is not one CSV record");
		if (len == 2 && memcmp(m->payload, "\\.", 2) == 0)
			return kafka_bad_message(st, m, ERRCODE_BAD_COPY_FILE_FORMAT, "is COPY's end-of-data marker");
		appendBinaryStringInfo(&st->pending, m->payload, len);
	}
	else if (st->format == KAFKA_JSON)
	{
		if (!kafka_json_record(st, m))
		{
			st->pending.len = mark;
			st->pending.data[mark] = '\0';
			return false;
		}
	}
	else
		append_csv_field(&st->pending, m->payload, m->len, true);

	if (st->include_metadata)
	{
		rd_kafka_timestamp_type_t tstype;
		int64		ms = rd_kafka_message_timestamp(m, &tstype);
		char	   *s;

		append_csv_field(&st->pending, st->topic, strlen(st->topic), false);
		s = psprintf("%d", m->partition);
		append_csv_field(&st->pending, s, strlen(s), false);
		s = psprintf(INT64_FORMAT, m->offset);
		append_csv_field(&st->pending, s, strlen(s), false);
		s = NULL;
		if (ms >= 0 && ms <= INT64CONST(253402300799999))	/* up to 9999-12-31: else NULL */
			s = DatumGetCString(DirectFunctionCall1(timestamptz_out,
													TimestampTzGetDatum(time_t_to_timestamptz(ms / 1000) +
																		(ms % 1000) * 1000)));
		append_csv_field(&st->pending, s, s ? strlen(s) : 0, false);
		append_csv_field(&st->pending, m->key, m->key_len, false);
	}
	appendStringInfoChar(&st->pending, '\n');

	/*
	 * COPY counts a line break inside quotes as a line too (PostgreSQL 15:
	 * once it has seen a record end, so not in the first record): every
	 * line of this record maps to this message.
	 */
	for (int i = st->nlines == 0 ? st->pending.len - 1 : mark; i < st->pending.len; i++)
	{
		if (st->pending.data[i] != '\n')
			continue;
		if (st->nlines == st->maxlines)
		{
			st->maxlines = Max(1024, st->maxlines * 2);
			st->line_partition = repalloc_huge(st->line_partition, sizeof(int32) * st->maxlines);
			st->line_offset = repalloc_huge(st->line_offset, sizeof(int64) * st->maxlines);
		}
		st->line_partition[st->nlines] = m->partition;
		st->line_offset[st->nlines++] = m->offset;
	}
	st->bytes += m->len;
	return true;
}

/* The next message from the consumer's queue, taken in batches; NULL after a wait in vain. */
static rd_kafka_message_t *
kafka_take(KafkaState *st)
{
	if (st->next_taken == st->ntaken)
	{
		ssize_t		n;

		CHECK_FOR_INTERRUPTS();
		/* what is there; a batch call that waits would wait for a full batch */
		n = rd_kafka_consume_batch_queue(st->queue, 0, st->taken, KAFKA_TAKE);
		if (n <= 0 && (st->taken[0] = rd_kafka_consume_queue(st->queue, KAFKA_POLL_MS)) != NULL)
			n = 1;
		st->ntaken = (int) Max(n, 0);
		st->next_taken = 0;
		if (st->ntaken == 0)
			return NULL;
	}
	return st->taken[st->next_taken++];
}

/* Destroy the messages taken but not handled (after an error). */
static void
kafka_drop_taken(KafkaState *st)
{
	if (st->current)
		rd_kafka_message_destroy(st->current);
	st->current = NULL;
	while (st->next_taken < st->ntaken)
		rd_kafka_message_destroy(st->taken[st->next_taken++]);
	st->ntaken = st->next_taken = 0;
}

/*
 * Wait for the next message of the slice; false once every partition has
 * reached its end offset.
 */
static bool
kafka_next_message(KafkaState *st)
{
	int			idle = 0;
	bool		added;

	while (st->ndone < st->nparts)
	{
		rd_kafka_message_t *m = kafka_take(st);
		KafkaPartition *kp;

		if (m == NULL)
		{
			rd_kafka_poll(st->rk, 0);	/* serves the error callback */
			if (++idle * KAFKA_POLL_MS >= KAFKA_READ_TIMEOUT_MS)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("no messages from Kafka topic \"%s\" for %d seconds", st->topic,
								KAFKA_READ_TIMEOUT_MS / 1000),
						 st->last_error[0] ? errdetail("%s", st->last_error) : 0,
						 errhint("The batch will be tried again.")));
			continue;
		}
		kp = kafka_find_partition(st, m->partition);
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
		{
			/* the partition's end: past aborted records and transaction markers */
			if (kp && m->offset >= kp->end)
			{
				kafka_partition_done(st, kp);
				idle = 0;
			}
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			char	   *why = pstrdup(rd_kafka_message_errstr(m));
			rd_kafka_resp_err_t err = m->err;

			rd_kafka_message_destroy(m);
			if (err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET || err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE)
				ereport(ERROR,
						(errcode(ERRCODE_DATA_CORRUPTED),
						 errmsg("messages of Kafka topic \"%s\" that the batch plans to read are no longer on the brokers",
								st->topic),
						 errdetail("%s", why)));
			/* a broker down, a leader moving: librdkafka goes on by itself */
			strlcpy(st->last_error, why, sizeof(st->last_error));
			continue;
		}
		if (kp == NULL || kp->done || m->offset < kp->start)
		{
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->offset >= kp->end)
		{
			kafka_partition_done(st, kp);
			idle = 0;
			rd_kafka_message_destroy(m);
			continue;
		}
		st->current = m;		/* destroyed by kafka_drop_taken() if this fails */
		added = kafka_add_message(st, m);
		st->current = NULL;
		idle = 0;
		if (m->offset == kp->end - 1)
			kafka_partition_done(st, kp);
		rd_kafka_message_destroy(m);
		if (added)
			return true;
	}
	return false;
}

/* COPY's data source: whole messages, one per line. */
static int
kafka_copy_data(void *outbuf, int minread, int maxread)
{
	KafkaState *st = reading;
	int			n = 0;

	while (n < minread)
	{
		int			avail = st->pending.len - st->pending_off;

		if (avail == 0)
		{
			resetStringInfo(&st->pending);
			st->pending_off = 0;
			/* take several messages at once, as COPY takes 64 kB */
			while (st->pending.len < maxread && kafka_next_message(st))
				;
			if (st->pending.len == 0)
				break;
			continue;
		}
		avail = Min(avail, maxread - n);
		memcpy((char *) outbuf + n, st->pending.data + st->pending_off, avail);
		st->pending_off += avail;
		n += avail;
	}
	return n;
}

/* "message at offset 12 of partition 3": where COPY's current line came from */
static void
kafka_error_context(void *arg)
{
	KafkaState *st = arg;
	uint64		line = st->cstate ? st->cstate->cur_lineno : 0;

	if (line >= 1 && line <= st->nlines)
		errcontext("Kafka topic \"%s\", partition %d, offset " INT64_FORMAT,
				   st->topic, st->line_partition[line - 1], st->line_offset[line - 1]);
}

/*
 * COPY the slice into a relation through the callback, with the checks
 * DoCopy() makes: INSERT on the columns, no row-level security; or parse
 * it and hand the rows to dest.
 */
static uint64
kafka_copy(KafkaState *st, Oid into, DestReceiver *dest)
{
	Relation	rel = table_open(into, RowExclusiveLock);
	ParseState *pstate = make_parsestate(NULL);
	ParseNamespaceItem *nsitem;
	RangeTblEntry *rte;
	ListCell   *lc;
	ErrorContextCallback callback;
	uint64		rows;

	pstate->p_sourcetext = psprintf("COPY %s FROM Kafka topic %s",
									RelationGetRelationName(rel), quote_identifier(st->topic));
	nsitem = addRangeTableEntryForRelation(pstate, rel, RowExclusiveLock, NULL, false, false);
	rte = nsitem->p_rte;
	rte->requiredPerms = ACL_INSERT;
	foreach(lc, CopyGetAttnums(RelationGetDescr(rel), rel, st->attnames))
		rte->insertedCols = bms_add_member(rte->insertedCols,
										   lfirst_int(lc) - FirstLowInvalidHeapAttributeNumber);
	ExecCheckRTPerms(pstate->p_rtable, true);
	if (check_enable_rls(into, InvalidOid, false) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("COPY FROM not supported with row-level security"),
				 errhint("Use INSERT statements instead.")));

	callback.callback = kafka_error_context;
	callback.arg = st;
	callback.previous = error_context_stack;
	error_context_stack = &callback;
	reading = st;
	if (st->rj)
	{
		/* row by row into the staging table, setting bad rows aside (rejects.c) */
		List	   *names = NIL;
		ListCell   *lc2;

		foreach(lc2, st->attnames)
			names = lappend(names, strVal(lfirst(lc2)));
		st->rj->locate = kafka_locate;
		st->rj->locate_arg = st;
		table_close(rel, NoLock);
		rel = NULL;
		rows = rejects_copy_file(st->rj, into, names, st->copy_options, NULL, kafka_copy_data);
		if (st->ndone < st->nparts || st->pending_off < st->pending.len)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("COPY stopped before the end of the batch's slice of Kafka topic \"%s\"", st->topic)));
		reading = NULL;
		error_context_stack = callback.previous;
		free_parsestate(pstate);
		return rows;
	}
	st->cstate = BeginCopyFrom(pstate, rel, NULL, NULL, false, kafka_copy_data, st->attnames,
							   st->copy_options);
	rows = dest ? copy_to_receiver(st->cstate, rel, dest) : CopyFrom(st->cstate);
	/* COPY stops only where the slice ends (no message is its end-of-data marker) */
	if (st->ndone < st->nparts || st->pending_off < st->pending.len)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("COPY stopped before the end of the batch's slice of Kafka topic \"%s\"", st->topic)));
	EndCopyFrom(st->cstate);
	st->cstate = NULL;
	reading = NULL;
	error_context_stack = callback.previous;
	table_close(rel, NoLock);
	free_parsestate(pstate);
	return rows;
}

static void
kafka_read(void *state, Pipeline *p, Batch *b, Oid into, Rejects *rj)
{
	KafkaState *st = state;

	kafka_check_privilege();
	kafka_load_slice(st, p, b);
	for (int i = 0; i < st->nparts; i++)
		b->size += st->parts[i].end - st->parts[i].start;
	st->rj = rj;
	st->nset_aside = 0;
	st->ndone = 0;
	for (int i = 0; i < st->nparts; i++)
		if (st->parts[i].start >= st->parts[i].end)
			kafka_partition_done(st, &st->parts[i]);
	st->nlines = st->maxlines = 0;
	st->line_partition = palloc(sizeof(int32));
	st->line_offset = palloc(sizeof(int64));
	st->bytes = 0;
	resetStringInfo(&st->pending);
	st->pending_off = 0;

	b->unit = psprintf("Kafka topic \"%s\"", st->topic);
	pgstat_report_activity(STATE_RUNNING, psprintf("batch " INT64_FORMAT ": reading Kafka topic %s",
												   b->id, st->topic));
	PG_TRY();
	{
		/* fetch each partition from where the batch starts, into one queue */
		for (int i = 0; i < st->nparts; i++)
			if (!st->parts[i].done &&
				rd_kafka_consume_start_queue(st->rkt, st->parts[i].partition, st->parts[i].start, st->queue) < 0)
				ereport(ERROR,
						(errcode(ERRCODE_CONNECTION_FAILURE),
						 errmsg("could not read partition %d of Kafka topic \"%s\"",
								st->parts[i].partition, st->topic),
						 errdetail("%s", rd_kafka_err2str(rd_kafka_last_error()))));
		b->rows += kafka_copy(st, into, b->dest) + st->nset_aside;	/* every message, good or bad */
	}
	PG_FINALLY();
	{
		reading = NULL;
		st->cstate = NULL;
		st->rj = NULL;
		kafka_drop_taken(st);
		/* stop fetching until the next batch */
		for (int i = 0; i < st->nparts; i++)
			if (st->parts[i].end > st->parts[i].start)
				rd_kafka_consume_stop(st->rkt, st->parts[i].partition);
		/* what was fetched past the slice's end is not kept until the next batch */
		while ((st->ntaken = (int) Max(rd_kafka_consume_batch_queue(st->queue, 0, st->taken, KAFKA_TAKE), 0)) > 0)
		{
			st->next_taken = 0;
			kafka_drop_taken(st);
		}
	}
	PG_END_TRY();
	b->bytes += st->bytes;
	crash_point("after_read", b->attempts);
}

/* Advance each partition's offset from where the batch started to where it ended. */
static void
kafka_commit(void *state, Pipeline *p, Batch *b)
{
	KafkaState *st = state;
	Datum		values[3] = {Int32GetDatum(p->id), Int64GetDatum(b->id), CStringGetTextDatum(st->topic)};
	uint64		n;

	n = catalog_exec("UPDATE sluice.kafka_offset o SET next_offset = (b.slice->'end'->$3->>s.key)::int8"
					 " FROM sluice.batch b, jsonb_each(b.slice->'start'->$3) AS s"
					 " WHERE b.pipeline_id = $1 AND b.batch_id = $2"
					 "   AND o.pipeline_id = $1 AND o.topic = $3 AND o.partition = s.key::int"
					 "   AND o.next_offset = s.value::text::int8",
					 3, (Oid[]) {INT4OID, INT8OID, TEXTOID}, values, NULL, SPI_OK_UPDATE);
	if (n != (uint64) st->nparts)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("the offsets of Kafka topic \"%s\" moved while batch " INT64_FORMAT " of pipeline \"%s\" read it",
						st->topic, b->id, p->name)));
}

/* Committed batches, but no offsets: pg_restore has not loaded them yet. */
static bool
kafka_offsets_missing(int32 pipeline_id)
{
	Datum		value = Int32GetDatum(pipeline_id);

	catalog_exec("SELECT 1 FROM sluice.pipeline p WHERE p.id = $1 AND p.committed_batch > 0"
				 " AND NOT EXISTS (SELECT 1 FROM sluice.kafka_offset o WHERE o.pipeline_id = p.id)",
				 1, (Oid[]) {INT4OID}, &value, NULL, SPI_OK_SELECT);
	return SPI_processed > 0;
}

/* The end offsets of a batch, as Spark shows them: {"topic": {"0": 1200}}. */
static Jsonb *
kafka_describe(int32 pipeline_id, int64 batch_id)
{
	Datum		values[2] = {Int32GetDatum(pipeline_id), Int64GetDatum(batch_id)};
	bool		isnull;
	Datum		d;

	pinned_exec("SELECT slice->'end' FROM sluice.batch WHERE pipeline_id = $1 AND batch_id = $2",
				2, (Oid[]) {INT4OID, INT8OID}, values, NULL, SPI_OK_SELECT);
	d = SPI_processed > 0 ? spi_datum(0, 1, &isnull) : (Datum) 0;
	if (SPI_processed == 0 || isnull)
		return NULL;
	return DatumGetJsonbPCopy(d);
}

const SourceRoutine kafka_source_routine = {
	.type = "kafka",
	.open = kafka_open,
	.plan = kafka_plan,
	.read = kafka_read,
	.commit = kafka_commit,
	.describe = kafka_describe,
	.offsets_missing = kafka_offsets_missing,
	.owner_refused = kafka_owner_refused,
	.initial_size = 100,		/* offsets */
};

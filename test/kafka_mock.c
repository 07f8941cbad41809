/*
 * kafka_mock: a Kafka cluster for the tests, librdkafka's mock cluster (a
 * real Kafka protocol peer on loopback ports), driven by commands on stdin.
 *
 *	kafka_mock [-b brokers] [-f file]
 *
 * Starts the cluster (3 brokers by default), prints "bootstrap <servers>"
 * (also into file, if given) and then answers each command line with "ok"
 * or "error <why>", until "quit" or the end of stdin:
 *
 *	topic <name> <partitions>			create a topic (replication 3, or fewer brokers)
 *	down <broker> | up <broker>			a broker drops its connections and refuses new
 *										ones, or accepts them again (-1: all)
 *	leader <topic> <partition> <broker>	move a partition's leader
 *	errors <api key> <error code> <count>	fail the next count requests of that
 *										kind (e.g. 1 = Fetch) with that error
 *	produce <topic> <partition> <file> [commit|abort]
 *										each line of file becomes one message (\n in
 *										it a line break), or all of them one
 *										transaction, committed or aborted; "ok <count>"
 *										once all are acknowledged
 *
 * The mock keeps about 100,000 messages per partition: older ones go, as
 * retention would take them.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static rd_kafka_mock_cluster_t *mcluster;
static const char *bootstraps;
static int	transactions = 0;

static rd_kafka_t *
new_producer(const char *transactional_id, char *err, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;

	if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstraps, err, errlen) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.idempotence", "true", err, errlen) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "linger.ms", "5", err, errlen) != RD_KAFKA_CONF_OK ||
		(transactional_id &&
		 rd_kafka_conf_set(conf, "transactional.id", transactional_id, err, errlen) != RD_KAFKA_CONF_OK))
	{
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, errlen);
	if (rk == NULL)
		rd_kafka_conf_destroy(conf);
	return rk;
}

static int
txn_check(rd_kafka_error_t *error, char *err, size_t errlen)
{
	if (error == NULL)
		return 0;
	snprintf(err, errlen, "%s", rd_kafka_error_string(error));
	rd_kafka_error_destroy(error);
	return -1;
}

/* Produce each line of path as one message to topic/partition; returns the count or -1. */
static long
produce(const char *topic, int partition, const char *path, const char *txn, char *err, size_t errlen)
{
	char		txn_id[64];
	rd_kafka_t *rk;
	FILE	   *f;
	char	   *line = NULL;
	size_t		cap = 0;
	ssize_t		len;
	long		n = 0;

	snprintf(txn_id, sizeof(txn_id), "kafka_mock-%d", ++transactions);
	if ((f = fopen(path, "r")) == NULL)
	{
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if ((rk = new_producer(txn ? txn_id : NULL, err, errlen)) == NULL)
	{
		fclose(f);
		return -1;
	}
	if (txn && (txn_check(rd_kafka_init_transactions(rk, 30000), err, errlen) < 0 ||
				txn_check(rd_kafka_begin_transaction(rk), err, errlen) < 0))
		n = -1;
	while (n >= 0 && (len = getline(&line, &cap, f)) >= 0)
	{
		rd_kafka_resp_err_t rc;

		if (len > 0 && line[len - 1] == '\n')
			len--;
		/* a backslash and an n in a line: a line break in the message */
		{
			ssize_t		j = 0;

			for (ssize_t i = 0; i < len; i++, j++)
			{
				if (line[i] == '\\' && i + 1 < len && line[i + 1] == 'n')
				{
					line[j] = '\n';
					i++;
				}
				else
					line[j] = line[i];
			}
			len = j;
		}
		while ((rc = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
									   RD_KAFKA_V_VALUE(line, (size_t) len),
									   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
									   RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
			rd_kafka_poll(rk, 100);
		if (rc != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			snprintf(err, errlen, "produce: %s", rd_kafka_err2str(rc));
			n = -1;
			break;
		}
		n++;
		rd_kafka_poll(rk, 0);
	}
	free(line);
	fclose(f);
	if (n >= 0 && txn && strcmp(txn, "commit") == 0 &&
		txn_check(rd_kafka_commit_transaction(rk, 30000), err, errlen) < 0)
		n = -1;
	else if (n >= 0 && txn && strcmp(txn, "abort") == 0 &&
			 txn_check(rd_kafka_abort_transaction(rk, 30000), err, errlen) < 0)
		n = -1;
	if (n >= 0 && rd_kafka_flush(rk, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		snprintf(err, errlen, "flush timed out");
		n = -1;
	}
	rd_kafka_destroy(rk);
	return n;
}

static void
answer(rd_kafka_resp_err_t rc)
{
	if (rc == RD_KAFKA_RESP_ERR_NO_ERROR)
		printf("ok\n");
	else
		printf("error %s\n", rd_kafka_err2str(rc));
}

int
main(int argc, char **argv)
{
	int			brokers = 3;
	const char *file = NULL;
	char		err[5120];
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk;
	char	   *line = NULL;
	size_t		cap = 0;
	int			opt;

	while ((opt = getopt(argc, argv, "b:f:")) != -1)
	{
		if (opt == 'b')
			brokers = atoi(optarg);
		else if (opt == 'f')
			file = optarg;
		else
		{
			fprintf(stderr, "usage: kafka_mock [-b brokers] [-f file]\n");
			return 2;
		}
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);

	/* the cluster needs a client handle for its book keeping */
	conf = rd_kafka_conf_new();
	rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));	/* no warning that it has no brokers */
	if ((rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err))) == NULL)
	{
		fprintf(stderr, "kafka_mock: %s\n", err);
		return 1;
	}
	if ((mcluster = rd_kafka_mock_cluster_new(rk, brokers)) == NULL)
	{
		fprintf(stderr, "kafka_mock: could not create the mock cluster\n");
		return 1;
	}
	bootstraps = rd_kafka_mock_cluster_bootstraps(mcluster);
	if (file)
	{
		FILE	   *f = fopen(file, "w");

		if (f == NULL || fprintf(f, "%s\n", bootstraps) < 0 || fclose(f) != 0)
		{
			fprintf(stderr, "kafka_mock: %s: %s\n", file, strerror(errno));
			return 1;
		}
	}
	printf("bootstrap %s\n", bootstraps);

	while (getline(&line, &cap, stdin) >= 0)
	{
		char		a[256], c[4096], d[16];
		int			x, y;
		int			n;

		line[strcspn(line, "\r\n")] = '\0';
		if (line[0] == '\0')
			continue;
		if (strcmp(line, "quit") == 0)
			break;
		if (sscanf(line, "topic %255s %d", a, &x) == 2)
			answer(rd_kafka_mock_topic_create(mcluster, a, x, brokers < 3 ? brokers : 3));
		else if (sscanf(line, "down %d", &x) == 1)
			answer(rd_kafka_mock_broker_set_down(mcluster, x));
		else if (sscanf(line, "up %d", &x) == 1)
			answer(rd_kafka_mock_broker_set_up(mcluster, x));
		else if (sscanf(line, "leader %255s %d %d", a, &x, &y) == 3)
			answer(rd_kafka_mock_partition_set_leader(mcluster, a, x, y));
		else if (sscanf(line, "errors %d %d %d", &x, &y, &n) == 3 && n > 0)
		{
			rd_kafka_resp_err_t *errs = calloc(n, sizeof(*errs));

			for (int i = 0; i < n; i++)
				errs[i] = (rd_kafka_resp_err_t) y;
			rd_kafka_mock_push_request_errors_array(mcluster, (int16_t) x, (size_t) n, errs);
			free(errs);
			answer(RD_KAFKA_RESP_ERR_NO_ERROR);
		}
		else if ((n = sscanf(line, "produce %255s %d %4095s %15s", a, &x, c, d)) >= 3 &&
				 (n == 3 || strcmp(d, "commit") == 0 || strcmp(d, "abort") == 0))
		{
			long		count = produce(a, x, c, n == 4 ? d : NULL, err, sizeof(err));

			if (count < 0)
				printf("error %s\n", err);
			else
				printf("ok %ld\n", count);
		}
		else
			printf("error unknown command: %s\n", line);
	}
	free(line);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(rk);
	return 0;
}

/*
 * kafka_mock: a Kafka cluster for the tests, librdkafka's mock cluster (a
 * real Kafka protocol peer on loopback ports), driven by commands on stdin.
 *
 *	kafka_mock [-b brokers] [-f file] [-p]
 *
 * Starts the cluster (3 brokers by default), prints "bootstrap <servers>"
 * (also into file, if given) and then answers each command line with "ok"
 * or "error <why>", until "quit" or the end of stdin.  With -p, clients
 * reach each broker through a proxy of this program's own, which can hide
 * partitions (the mock cannot add partitions to a topic, a proxy can make
 * one appear); the servers printed are the proxy's.  Commands:
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
 *	partitions <topic> <count>			with -p: clients see only the first count
 *										partitions of topic (-1: all of them)
 *
 * The mock keeps about 100,000 messages per partition: older ones go, as
 * retention would take them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

/*
 * The proxy: for each broker a listener on a loopback port; each client
 * connection gets its own connection to the broker and two threads that copy
 * whole Kafka frames (a 4-byte length, then that many bytes) each way.
 * Metadata responses are rewritten: brokers are advertised at the proxy's
 * ports, and partitions of the hidden topic past the count shown are left
 * out.  Metadata is capped at version 4 (see main), whose layout is:
 *
 *	correlation id, [throttle ms (v3+)], brokers [node, host, port, rack (v1+)],
 *	cluster id (v2+), controller (v1+), topics [error, name, internal (v1+),
 *	partitions [error, index, leader, replicas [node], isr [node]]]
 */
#define MAX_BROKERS 16
#define METADATA 3

static int	proxied = 0;			/* brokers behind the proxy */
static int	broker_port[MAX_BROKERS];	/* the mock's port of each */
static int	proxy_port[MAX_BROKERS];
static int	listen_fd[MAX_BROKERS];
static pthread_mutex_t proxy_lock = PTHREAD_MUTEX_INITIALIZER;
static char hidden_topic[256];
static int	shown_partitions = -1;

typedef struct Conn
{
	int			client;
	int			broker;
	int			refs;			/* threads still using it */
	int32_t		metadata_id[64];	/* correlation ids of Metadata requests in flight */
	int16_t		metadata_version[64];
	int			nmetadata;
} Conn;

typedef struct Buf
{
	unsigned char *data;
	size_t		len;
	size_t		cap;
} Buf;

/* read or write all n bytes; -1 at the end of the connection */
static int
io_full(int fd, void *p, size_t n, int out)
{
	for (size_t done = 0; done < n;)
	{
		ssize_t		r = out ? write(fd, (char *) p + done, n - done) : read(fd, (char *) p + done, n - done);

		if (r <= 0 && !(r < 0 && errno == EINTR))
			return -1;
		if (r > 0)
			done += (size_t) r;
	}
	return 0;
}

/* one frame into buf (without its length); -1 at the end of the connection */
static int
read_frame(int fd, Buf *buf)
{
	uint32_t	len;

	if (io_full(fd, &len, 4, 0) < 0)
		return -1;
	len = ntohl(len);
	if (len > 256 * 1024 * 1024)
		return -1;
	if (len > buf->cap)
	{
		buf->cap = len;
		buf->data = realloc(buf->data, len);
	}
	buf->len = len;
	return io_full(fd, buf->data, len, 0);
}

static int
write_frame(int fd, const Buf *buf)
{
	uint32_t	len = htonl((uint32_t) buf->len);

	return io_full(fd, &len, 4, 1) < 0 ? -1 : io_full(fd, buf->data, buf->len, 1);
}

static void
conn_release(Conn *c)
{
	int			last;

	/* wake the other thread, then let the last one free the connection */
	shutdown(c->client, SHUT_RDWR);
	shutdown(c->broker, SHUT_RDWR);
	pthread_mutex_lock(&proxy_lock);
	last = --c->refs == 0;
	pthread_mutex_unlock(&proxy_lock);
	if (last)
	{
		close(c->client);
		close(c->broker);
		free(c);
	}
}

/* Reading a frame: each returns -1 once the frame ends too soon. */
typedef struct Reader
{
	const unsigned char *p;
	const unsigned char *end;
	int			bad;
} Reader;

static const unsigned char *
take(Reader *r, size_t n)
{
	const unsigned char *p = r->p;

	if (r->bad || (size_t) (r->end - r->p) < n)
	{
		r->bad = 1;
		return NULL;
	}
	r->p += n;
	return p;
}

static int32_t
get32(Reader *r)
{
	const unsigned char *p = take(r, 4);

	return p ? (int32_t) ((uint32_t) p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]) : -1;
}

static int16_t
get16(Reader *r)
{
	const unsigned char *p = take(r, 2);

	return p ? (int16_t) (p[0] << 8 | p[1]) : -1;
}

static void
put(Buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap)
	{
		b->cap = (b->len + n) * 2;
		b->data = realloc(b->data, b->cap);
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void
put32(Buf *b, int32_t v)
{
	uint32_t	n = htonl((uint32_t) v);

	put(b, &n, 4);
}

static void
put16(Buf *b, int16_t v)
{
	uint16_t	n = htons((uint16_t) v);

	put(b, &n, 2);
}

/* copy n bytes as they are */
static void
copy(Reader *r, Buf *out, size_t n)
{
	const unsigned char *p = take(r, n);

	if (p)
		put(out, p, n);
}

/* copy a string (or a nullable one), returning it in name if given */
static void
copy_string(Reader *r, Buf *out, char *name, size_t namelen)
{
	int16_t		len = get16(r);
	const unsigned char *p;

	put16(out, len);
	if (len <= 0)
		return;
	p = take(r, (size_t) len);
	if (p == NULL)
		return;
	put(out, p, (size_t) len);
	if (name)
		snprintf(name, namelen, "%.*s", (int) len, (const char *) p);
}

/* A Metadata response of the given version, rewritten; 0 or -1 if it does not parse. */
static int
rewrite_metadata(const Buf *in, int16_t version, Buf *out)
{
	Reader		r = {in->data, in->data + in->len, 0};
	int32_t		n;

	out->len = 0;
	copy(&r, out, version >= 3 ? 8 : 4);	/* correlation id, throttle */
	put32(out, n = get32(&r));
	for (int i = 0; i < n && !r.bad; i++)
	{
		int32_t		port;

		copy(&r, out, 4);
		copy_string(&r, out, NULL, 0);
		port = get32(&r);
		for (int b = 0; b < proxied; b++)
			if (broker_port[b] == port)
				port = proxy_port[b];
		put32(out, port);
		if (version >= 1)
			copy_string(&r, out, NULL, 0);
	}
	if (version >= 2)
		copy_string(&r, out, NULL, 0);
	if (version >= 1)
		copy(&r, out, 4);
	put32(out, n = get32(&r));
	for (int i = 0; i < n && !r.bad; i++)
	{
		char		name[256] = "";
		size_t		count_at;
		int32_t		parts,
					shown = 0,
					limit;

		copy(&r, out, 2);
		copy_string(&r, out, name, sizeof(name));
		if (version >= 1)
			copy(&r, out, 1);
		pthread_mutex_lock(&proxy_lock);
		limit = strcmp(name, hidden_topic) == 0 ? shown_partitions : -1;
		pthread_mutex_unlock(&proxy_lock);
		count_at = out->len;
		put32(out, 0);			/* the count, set below */
		parts = get32(&r);
		for (int j = 0; j < parts && !r.bad; j++)
		{
			size_t		at = out->len;
			int32_t		index;
			int32_t		nodes;

			copy(&r, out, 2);
			put32(out, index = get32(&r));
			copy(&r, out, 4);
			for (int list = 0; list < 2; list++)
			{
				put32(out, nodes = get32(&r));
				copy(&r, out, 4 * (size_t) (nodes > 0 ? nodes : 0));
			}
			if (limit >= 0 && index >= limit)
				out->len = at;	/* left out */
			else
				shown++;
		}
		{
			uint32_t	be = htonl((uint32_t) shown);

			memcpy(out->data + count_at, &be, 4);
		}
	}
	return r.bad || r.p != r.end ? -1 : 0;
}

/* client to broker, noting the correlation id and version of each Metadata request */
static void *
proxy_requests(void *arg)
{
	Conn	   *c = arg;
	Buf			buf = {0};

	while (read_frame(c->client, &buf) == 0 && buf.len >= 8)
	{
		int16_t		key = (int16_t) (buf.data[0] << 8 | buf.data[1]);
		int16_t		version = (int16_t) (buf.data[2] << 8 | buf.data[3]);
		int32_t		id;

		memcpy(&id, buf.data + 4, 4);
		if (key == METADATA)
		{
			pthread_mutex_lock(&proxy_lock);
			if (c->nmetadata < 64)
			{
				c->metadata_id[c->nmetadata] = (int32_t) ntohl((uint32_t) id);
				c->metadata_version[c->nmetadata++] = version;
			}
			pthread_mutex_unlock(&proxy_lock);
		}
		if (write_frame(c->broker, &buf) < 0)
			break;
	}
	free(buf.data);
	conn_release(c);
	return NULL;
}

/* broker to client, rewriting Metadata responses */
static void *
proxy_responses(void *arg)
{
	Conn	   *c = arg;
	Buf			buf = {0};
	Buf			out = {0};

	while (read_frame(c->broker, &buf) == 0 && buf.len >= 4)
	{
		int32_t		id;
		int			version = -1;
		const Buf  *send = &buf;

		memcpy(&id, buf.data, 4);
		id = (int32_t) ntohl((uint32_t) id);
		pthread_mutex_lock(&proxy_lock);
		for (int i = 0; i < c->nmetadata; i++)
			if (c->metadata_id[i] == id)
			{
				version = c->metadata_version[i];
				c->metadata_id[i] = c->metadata_id[--c->nmetadata];
				c->metadata_version[i] = c->metadata_version[c->nmetadata];
				break;
			}
		pthread_mutex_unlock(&proxy_lock);
		if (version >= 0)
		{
			if (rewrite_metadata(&buf, (int16_t) version, &out) < 0)
			{
				fprintf(stderr, "kafka_mock: a Metadata v%d response that does not parse\n", version);
				break;
			}
			send = &out;
		}
		if (write_frame(c->client, send) < 0)
			break;
	}
	free(buf.data);
	free(out.data);
	conn_release(c);
	return NULL;
}

static void *
proxy_accept(void *arg)
{
	int			b = (int) (intptr_t) arg;

	for (;;)
	{
		int			fd = accept(listen_fd[b], NULL, NULL);
		struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t) broker_port[b])};
		Conn	   *c;
		pthread_t	t;

		if (fd < 0)
			continue;
		c = calloc(1, sizeof(Conn));
		c->client = fd;
		c->refs = 2;
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		/* a broker that is down refuses: so does its proxy */
		if ((c->broker = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
			connect(c->broker, (struct sockaddr *) &addr, sizeof(addr)) < 0)
		{
			close(fd);
			if (c->broker >= 0)
				close(c->broker);
			free(c);
			continue;
		}
		/* a frame is written as its length, then its body: no Nagle delay in between */
		setsockopt(c->client, IPPROTO_TCP, TCP_NODELAY, &(int) {1}, sizeof(int));
		setsockopt(c->broker, IPPROTO_TCP, TCP_NODELAY, &(int) {1}, sizeof(int));
		pthread_create(&t, NULL, proxy_requests, c);
		pthread_detach(t);
		pthread_create(&t, NULL, proxy_responses, c);
		pthread_detach(t);
	}
	return NULL;
}

/* Start a proxy for each broker of the mock's bootstraps; returns the proxy's bootstraps. */
static char *
proxy_start(const char *mock_bootstraps)
{
	static char servers[MAX_BROKERS * 24];
	const char *s = mock_bootstraps;

	servers[0] = '\0';
	while (proxied < MAX_BROKERS && (s = strchr(s, ':')) != NULL)
	{
		struct sockaddr_in addr = {.sin_family = AF_INET};
		socklen_t	len = sizeof(addr);
		int			b = proxied++;
		pthread_t	t;

		broker_port[b] = atoi(++s);
		addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if ((listen_fd[b] = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
			bind(listen_fd[b], (struct sockaddr *) &addr, sizeof(addr)) < 0 ||
			listen(listen_fd[b], 64) < 0 ||
			getsockname(listen_fd[b], (struct sockaddr *) &addr, &len) < 0)
			return NULL;
		proxy_port[b] = ntohs(addr.sin_port);
		snprintf(servers + strlen(servers), sizeof(servers) - strlen(servers), "%s127.0.0.1:%d",
				 b > 0 ? "," : "", proxy_port[b]);
		pthread_create(&t, NULL, proxy_accept, (void *) (intptr_t) b);
		pthread_detach(t);
	}
	return servers;
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
	int			proxy = 0;
	const char *servers;

	while ((opt = getopt(argc, argv, "b:f:p")) != -1)
	{
		if (opt == 'b')
			brokers = atoi(optarg);
		else if (opt == 'f')
			file = optarg;
		else if (opt == 'p')
			proxy = 1;
		else
		{
			fprintf(stderr, "usage: kafka_mock [-b brokers] [-f file] [-p]\n");
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
	/* the producers of the produce command reach the brokers directly */
	servers = bootstraps = rd_kafka_mock_cluster_bootstraps(mcluster);
	if (proxy)
	{
		/* a Metadata layout the proxy knows (librdkafka 2.0 asks for v4 at most anyway) */
		rd_kafka_mock_set_apiversion(mcluster, METADATA, 0, 4);
		if ((servers = proxy_start(bootstraps)) == NULL)
		{
			fprintf(stderr, "kafka_mock: could not start the proxy: %s\n", strerror(errno));
			return 1;
		}
	}
	if (file)
	{
		FILE	   *f = fopen(file, "w");

		if (f == NULL || fprintf(f, "%s\n", servers) < 0 || fclose(f) != 0)
		{
			fprintf(stderr, "kafka_mock: %s: %s\n", file, strerror(errno));
			return 1;
		}
	}
	printf("bootstrap %s\n", servers);

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
		else if (sscanf(line, "partitions %255s %d", a, &x) == 2 && proxy)
		{
			pthread_mutex_lock(&proxy_lock);
			snprintf(hidden_topic, sizeof(hidden_topic), "%s", a);
			shown_partitions = x;
			pthread_mutex_unlock(&proxy_lock);
			answer(RD_KAFKA_RESP_ERR_NO_ERROR);
		}
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

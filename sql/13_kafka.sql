--
-- 13_kafka: the Kafka source's constructor and its errors, and one pipeline
-- end to end, against the tests' Kafka cluster (librdkafka's mock cluster,
-- test/kafka_mock), which scripts/test starts with topic regress_k of 2
-- partitions and 3 messages in partition 0; its brokers are in
-- $SLUICE_KAFKA_BROKERS.
--
\getenv brokers SLUICE_KAFKA_BROKERS
\set VERBOSITY default
\set SHOW_CONTEXT never

-- what a source holds (its brokers differ from run to run)
SELECT jsonb_pretty(sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text') - 'brokers') AS source;
SELECT jsonb_pretty(sluice.kafka_source(:'brokers', 'regress_k', 'doc text', format => 'text',
                                        starting_offsets => '{"1": -1, "0": 2}', max_offsets_per_trigger => 100,
                                        partitions => '{1, 0}', include_metadata => true,
                                        options => '{"fetch.wait.max.ms": 50, "check.crcs": true}')
                    - 'brokers') AS source;

-- the topic and the brokers
SELECT sluice.kafka_source(:'brokers', 'no_such_topic', 'id int');
SELECT sluice.kafka_source(:'brokers', 'bad topic!', 'id int');
SELECT sluice.kafka_source(:'brokers', '..', 'id int');
SELECT clock_timestamp() AS t0 \gset
SELECT sluice.kafka_source('127.0.0.1:1', 'regress_k', 'id int');
SELECT clock_timestamp() - :'t0'::timestamptz < interval '10 seconds' AS refused_within_10_seconds;
SELECT sluice.kafka_source(' ', 'regress_k', 'id int');
-- at most 64 bootstrap brokers (librdkafka starts a thread for each)
SELECT sluice.kafka_source(array_to_string(array_fill('127.0.0.1:1'::text, ARRAY[65]), ','), 'regress_k', 'id int');

-- formats and columns
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', format => 'avro');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'a text, b text', format => 'text');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'a int', format => 'text');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', delimiter => ';;');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int, kafka_key text', include_metadata => true);
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int, id text');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id nosuchtype');

-- offsets, limits and partitions
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => 'middle');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{"0": "x", "1": 0}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{"a": 1}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{"0": -3, "1": 0}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{"0": 1, "5": 2}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{"0": 1}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', starting_offsets => '{"0": 1, "1": 1}', partitions => '{0}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', max_offsets_per_trigger => 0);
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', max_rate_per_partition => 0);
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', min_offsets_per_trigger => 0);
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', max_trigger_delay => '-1 second');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', max_trigger_delay => '2 years');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', max_trigger_delay => NULL);
SELECT s->'max_rate_per_partition' AS rate, s->'min_offsets_per_trigger' AS min, s->'max_trigger_delay_ms' AS delay_ms
  FROM sluice.kafka_source(:'brokers', 'regress_k', 'id int', max_rate_per_partition => 500,
                           min_offsets_per_trigger => 1000, max_trigger_delay => '90 seconds') AS s;
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', partitions => '{0, 0}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', partitions => '{-1}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', partitions => '{}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', partitions => '{0, NULL}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', partitions => '{7}');

-- librdkafka options: checked by librdkafka, never echoed (they may hold secrets)
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '[]');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"sasl.password": {"nested": 1}}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"no.such.option": "1"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"fetch.wait.max.ms": "TOPSECRET"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"group.id": "mine"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"isolation.level": "read_uncommitted"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"plugin.library.paths": "/tmp/x.so"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"sasl.kerberos.kinit.cmd": "touch /tmp/x"}');
-- only settings of security, authentication, TLS, sockets and fetch timing
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"sasl.kerberos.principal": "x;touch /tmp/x;#"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"ssl.providers": "/tmp/x.so"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"offset.store.method": "file"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"test.mock.num.brokers": 10000}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"queued.max.messages.kbytes": 2097151}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"sasl.mechanism": "GSSAPI"}');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"sasl.mechanisms": "oauthbearer"}');
SELECT sluice.kafka_source(repeat('127.0.0.1:1,', 64) || '127.0.0.1:1', 'regress_k', 'id int');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int',
                           options => '{"security.protocol": "plaintext", "sasl.mechanism": "SCRAM-SHA-256", "socket.timeout.ms": 5000}') ->> 'type' AS allowed;

-- on_error and nulls
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', on_error => 'bogus');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', on_error => 'reject') ->> 'on_error' AS on_error;
SELECT sluice.kafka_source(NULL, 'regress_k', 'id int');
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => NULL);

-- who may: EXECUTE on kafka_source(), which PUBLIC does not have
CREATE ROLE regress_kafka_user LOGIN;
CREATE SCHEMA regress_kafka AUTHORIZATION regress_kafka_user;
SET ROLE regress_kafka_user;
CREATE TABLE regress_kafka.t (id int, v text);
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text');
-- nor through its helper (which would connect the server to any address)
SELECT sluice._kafka_check('127.0.0.1:1', 'regress_k', '{}');
-- nor by hand
SELECT sluice.create_pipeline('regress_kafka_p',
    jsonb_build_object('type', 'kafka', 'brokers', :'brokers', 'topic', 'regress_k',
                       'columns', '[{"name": "id", "type": "integer"}, {"name": "v", "type": "text"}]'::jsonb,
                       'format', 'csv', 'starting_offsets', 'earliest', 'options', '{}'::jsonb,
                       'on_error', 'fail', 'fail_on_data_loss', true, 'include_metadata', false),
    sluice.append_sink('regress_kafka.t'));
RESET ROLE;
GRANT EXECUTE ON FUNCTION sluice.kafka_source TO regress_kafka_user;
SET ROLE regress_kafka_user;
-- options naming server files take pg_read_server_files
SELECT sluice.kafka_source(:'brokers', 'regress_k', 'id int', options => '{"ssl.ca.location": "/etc/ssl/certs"}');

-- end to end: the 3 messages of partition 0, exactly once
SELECT sluice.create_pipeline('regress_kafka_p', sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text'),
                              sluice.append_sink('regress_kafka.t'));
SELECT sluice.run_once('regress_kafka_p') AS batches;
SELECT * FROM regress_kafka.t ORDER BY id;
SELECT sluice.run_once('regress_kafka_p') AS batches;
SELECT count(*) AS rows FROM regress_kafka.t;
SELECT partition, next_offset FROM sluice.kafka_offset ORDER BY partition;
SELECT batch_id, status, input_rows, files, start_offset, end_offset FROM sluice.progress('regress_kafka_p');
-- progress_json: Spark's Kafka source, its offsets, and what was left behind
SELECT j->'sources'->0->>'description' AS description, j->'sources'->0->'startOffset' AS start_offset,
       j->'sources'->0->'endOffset' AS end_offset, j->'sources'->0->'latestOffset' AS latest_offset,
       j->'sources'->0->'metrics' AS metrics
  FROM sluice.progress_json('regress_kafka_p') AS j;
-- a second pipeline from the latest offsets reads nothing of what is there
CREATE TABLE regress_kafka.latest (id int, v text);
SELECT sluice.create_pipeline('regress_kafka_latest',
    sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text', starting_offsets => 'latest'),
    sluice.append_sink('regress_kafka.latest'));
SELECT sluice.run_once('regress_kafka_latest') AS batches;
SELECT p.name, o.partition, o.next_offset FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id
 WHERE p.name = 'regress_kafka_latest' ORDER BY 2;
-- the options are the owner's: another role sees neither the pipeline nor its offsets
RESET ROLE;
CREATE ROLE regress_kafka_other LOGIN;
SET ROLE regress_kafka_other;
SELECT count(*) AS pipelines, (SELECT count(*) FROM sluice.kafka_offset) AS offsets FROM sluice.pipeline;
RESET ROLE;

-- the owner loses EXECUTE: the worker refuses to read
REVOKE EXECUTE ON FUNCTION sluice.kafka_source FROM regress_kafka_user;
SET ROLE regress_kafka_user;
SELECT sluice.run_once('regress_kafka_p');
RESET ROLE;

SELECT sluice.drop_pipeline('regress_kafka_p'), sluice.drop_pipeline('regress_kafka_latest');
SELECT count(*) AS offsets_left FROM sluice.kafka_offset;
DROP SCHEMA regress_kafka CASCADE;
DROP ROLE regress_kafka_user;
DROP ROLE regress_kafka_other;

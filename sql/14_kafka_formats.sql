--
-- 14_kafka_formats: what a Kafka source makes of its messages, in each
-- format, with metadata, and what it refuses; and each kind of sink on a
-- Kafka source.  The topics (scripts/test, kafka_regress_topics) hold:
--   regress_k            partition 0: 1,one  2,"two, quoted"  3,
--   regress_json         {"id": 1, "v": "one", "extra": 5}  {"id": 2}  {"v": "three", "id": 3}
--                        {"id": 4, "v": {"a": [1, 2]}}
--   regress_text         hello  wörld, "quoted"
--   regress_open_quote   1,one  2,"open  3,three
--   regress_two_records  1,one  and one message of two lines, 2,two and 3,three
--   regress_bad_int      1,one  x,two
--   regress_json_array   [1, 2]
--   regress_quoted_nl    1,"two<line break>lines"  2,"two<line break>more"  x,three  4,four
--   regress_wide         10,001 empty partitions
--
\getenv brokers SLUICE_KAFKA_BROKERS
\set VERBOSITY default
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE SCHEMA regress_kf;
SET search_path = regress_kf, public;

CREATE FUNCTION regress_kf.make(name text, topic text, columns text, target text, VARIADIC opts text[] DEFAULT '{}')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I (%s)', target, columns);
    EXECUTE format('SELECT sluice.create_pipeline(%L, sluice.kafka_source(%L, %L, %L%s), sluice.append_sink(%L))',
                   name, current_setting('regress.brokers'), topic, columns,
                   (SELECT string_agg(', ' || o, '') FROM unnest(opts) AS o), target);
END
$$;
SELECT set_config('regress.brokers', :'brokers', false) IS NOT NULL AS brokers_set;

-- json: keys are the columns; missing keys are NULL, others are left out, objects stay JSON
SELECT make('kf_json', 'regress_json', 'id int, v text', 'json_t', 'format => ''json''');
SELECT sluice.run_once('kf_json') AS batches;
SELECT * FROM json_t ORDER BY id;

-- text: the whole message in one column
SELECT make('kf_text', 'regress_text', 'line text', 'text_t', 'format => ''text''');
SELECT sluice.run_once('kf_text') AS batches;
SELECT * FROM text_t ORDER BY line;

-- metadata columns
CREATE TABLE meta_t (id int, v text, kafka_topic text, kafka_partition int, kafka_offset bigint,
                     kafka_timestamp timestamptz, kafka_key text);
SELECT sluice.create_pipeline('kf_meta',
    sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text', include_metadata => true),
    sluice.append_sink('meta_t'));
SELECT sluice.run_once('kf_meta') AS batches;
SELECT id, v, kafka_topic, kafka_partition, kafka_offset, kafka_key,
       kafka_timestamp BETWEEN now() - interval '1 day' AND now() AS timestamp_is_recent
  FROM meta_t ORDER BY id;

-- what is refused: the batch fails, naming the message, and nothing is written
SELECT make('kf_open', 'regress_open_quote', 'id int, v text', 'open_t');
SELECT sluice.run_once('kf_open');
SELECT make('kf_two', 'regress_two_records', 'id int, v text', 'two_t');
SELECT sluice.run_once('kf_two');
SELECT make('kf_int', 'regress_bad_int', 'id int, v text', 'int_t');
\set SHOW_CONTEXT always
SELECT sluice.run_once('kf_int');
\set SHOW_CONTEXT never
SELECT make('kf_array', 'regress_json_array', 'id int', 'array_t', 'format => ''json''');
SELECT sluice.run_once('kf_array');
-- more partitions than a pipeline reads: the batch fails before it plans anything
SELECT make('kf_wide', 'regress_wide', 'id int', 'wide_t');
SELECT sluice.run_once('kf_wide');
SELECT count(*) AS wide_offsets FROM sluice.kafka_offset o JOIN sluice.pipeline p ON p.id = o.pipeline_id
 WHERE p.name = 'kf_wide';
SELECT (SELECT count(*) FROM open_t) AS open_rows, (SELECT count(*) FROM two_t) AS two_rows,
       (SELECT count(*) FROM int_t) AS int_rows, (SELECT count(*) FROM array_t) AS array_rows;
SELECT pipeline, message FROM sluice.errors WHERE pipeline LIKE 'kf\_%' ORDER BY pipeline;
SELECT p.name, coalesce(sum(o.next_offset), 0) AS offsets
  FROM sluice.pipeline p LEFT JOIN sluice.kafka_offset o ON o.pipeline_id = p.id
 WHERE p.name IN ('kf_open', 'kf_two', 'kf_int', 'kf_array') GROUP BY p.name ORDER BY 1;

-- on_error => 'reject': a bad message, a message that does not parse and a
-- row the target refuses go to sluice.rejects with their topic, partition
-- and offset; every other message goes in.  'skip' only counts them.
SELECT make('kf_rej_open', 'regress_open_quote', 'id int, v text', 'rej_open', 'on_error => ''reject''');
SELECT make('kf_rej_int', 'regress_bad_int', 'id int, v text', 'rej_int', 'on_error => ''reject''');
CREATE TABLE rej_pk (id int PRIMARY KEY, v text);
INSERT INTO rej_pk VALUES (2, 'already');
SELECT sluice.create_pipeline('kf_rej_pk', sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text', on_error => 'reject'),
                              sluice.append_sink('rej_pk'));
SELECT make('kf_skip', 'regress_json_array', 'id int', 'skip_t', 'format => ''json''', 'on_error => ''skip''');
-- a line break inside quotes is a line for COPY: the reject still names its own message
SELECT make('kf_rej_nl', 'regress_quoted_nl', 'id int, v text', 'rej_nl', 'on_error => ''reject''');
SELECT sluice.run_once('kf_rej_nl') AS nl_batches;
SELECT id, v FROM rej_nl ORDER BY id;
SELECT sluice.run_once('kf_rej_open') AS open_batches, sluice.run_once('kf_rej_int') AS int_batches,
       sluice.run_once('kf_rej_pk') AS pk_batches, sluice.run_once('kf_skip') AS skip_batches;
SELECT 'rej_open' AS t, * FROM rej_open UNION ALL SELECT 'rej_int', * FROM rej_int UNION ALL SELECT 'rej_pk', * FROM rej_pk
 ORDER BY 1, 2;
SELECT pipeline, file, line, position, raw_line, sqlstate, message FROM sluice.rejects
 WHERE pipeline LIKE 'kf\_%' ORDER BY pipeline;
SELECT p.name, b.input_rows, b.rejected_rows, b.status
  FROM sluice.pipeline p, sluice.progress(p.name) b WHERE p.name IN ('kf_rej_open', 'kf_rej_int', 'kf_rej_pk', 'kf_skip')
 ORDER BY 1;

-- each kind of sink, on regress_k
CREATE TABLE merge_t (id int PRIMARY KEY, v text);
INSERT INTO merge_t VALUES (2, 'old'), (9, 'untouched');
SELECT sluice.create_pipeline('kf_merge', sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text'),
                              sluice.merge_sink('merge_t', '{id}'));
SELECT sluice.run_once('kf_merge') AS batches;
SELECT * FROM merge_t ORDER BY id;

CREATE TABLE fn_log (batch_id bigint, n bigint, ids text);
CREATE FUNCTION fn_record(batch_id bigint, batch regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO regress_kf.fn_log SELECT %s, count(*), string_agg(id::text, %L ORDER BY id) FROM %s',
                   batch_id, ',', batch);
END
$$;
SELECT sluice.create_pipeline('kf_fn', sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text'),
                              sluice.function_sink('fn_record(bigint, regclass)'));
SELECT sluice.run_once('kf_fn') AS batches;
SELECT * FROM fn_log;

-- a window over the messages' Kafka timestamps, and a transform before it
CREATE TABLE win_t (window_start timestamptz, window_end timestamptz, n bigint, total bigint);
SELECT sluice.create_pipeline('kf_win',
    sluice.kafka_source(:'brokers', 'regress_k', 'id int, v text', include_metadata => true),
    sluice.window_sink('win_t', '1 day', aggregates => '{count(*) AS n, sum(id) AS total}', output_mode => 'complete'),
    transform => 'SELECT id, kafka_timestamp AS ts FROM batch WHERE id > 1',
    event_time => 'ts', watermark_delay => '1 hour');
SELECT sluice.run_once('kf_win') AS batches;
SELECT window_end - window_start AS size, n, total,
       now() BETWEEN window_start AND window_end + interval '1 minute' AS window_is_today FROM win_t;

SELECT sluice.drop_pipeline(name) FROM sluice.pipeline WHERE name LIKE 'kf\_%';
DROP SCHEMA regress_kf CASCADE;

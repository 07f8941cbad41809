\echo Use "ALTER EXTENSION sluice UPDATE TO '0.3'" to load this file. \quit

-- 0.2 -> 0.3: a Kafka source.  Its offsets are a table of their own; a
-- batch's row keeps the slice a stream's plan claimed.

ALTER TABLE sluice.batch ADD COLUMN slice jsonb;
ALTER TABLE sluice.reject ADD COLUMN position jsonb;
CREATE OR REPLACE VIEW sluice.rejects WITH (security_invoker = true) AS
SELECT p.name AS pipeline, r.batch_id, r.file, r.line, r.raw_line, r.sqlstate, r.message, r.at AS time,
       r.position
  FROM sluice.reject AS r JOIN sluice.pipeline AS p ON p.id = r.pipeline_id;

-- a Kafka source's next offset per partition, advanced in each batch's transaction
CREATE TABLE sluice.kafka_offset (
    pipeline_id int NOT NULL REFERENCES sluice.pipeline ON DELETE CASCADE,
    topic       text NOT NULL,
    partition   int NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (pipeline_id, topic, partition)
);
ALTER TABLE sluice.kafka_offset ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON sluice.kafka_offset FOR SELECT USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
GRANT SELECT ON sluice.kafka_offset TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('sluice.kafka_offset', '');

-- what a Kafka source needs checked in C: its librdkafka options, and the
-- brokers and the topic, reached within a few seconds; returns the topic's
-- partition count
CREATE FUNCTION sluice._kafka_check(brokers text, topic text, options jsonb)
RETURNS int LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sluice_kafka_check';

CREATE FUNCTION sluice.kafka_source(
    brokers text,
    topic text,
    columns text,
    format text DEFAULT 'csv',
    delimiter text DEFAULT ',',
    starting_offsets text DEFAULT 'earliest',
    max_offsets_per_trigger bigint DEFAULT NULL,
    partitions int[] DEFAULT NULL,
    options jsonb DEFAULT '{}',
    on_error text DEFAULT 'fail',
    fail_on_data_loss boolean DEFAULT true,
    include_metadata boolean DEFAULT false)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    meta constant text[] := ARRAY['kafka_topic', 'kafka_partition', 'kafka_offset', 'kafka_timestamp', 'kafka_key'];
    cols jsonb;
    starting jsonb;
    npart int;
    k text;
BEGIN
    IF brokers IS NULL OR topic IS NULL OR columns IS NULL OR format IS NULL OR starting_offsets IS NULL
       OR options IS NULL OR fail_on_data_loss IS NULL OR include_metadata IS NULL THEN
        RAISE EXCEPTION 'brokers, topic, columns, format, starting_offsets, options, fail_on_data_loss and include_metadata of a Kafka source must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF brokers !~ '\S' THEN
        RAISE EXCEPTION 'brokers of a Kafka source must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give host:port of one or more brokers, separated by commas.';
    END IF;
    IF topic !~ '^[A-Za-z0-9._-]{1,249}$' OR topic IN ('.', '..') THEN
        RAISE EXCEPTION 'invalid Kafka topic name "%"', topic
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A topic name has 1 to 249 letters, digits, ".", "_" or "-".';
    END IF;
    IF format NOT IN ('csv', 'json', 'text') THEN
        RAISE EXCEPTION 'invalid format "%" of a Kafka source', format
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''csv'' (each message one CSV record), ''json'' (each message a JSON object whose keys are the columns) or ''text'' (each message one text column).';
    END IF;
    IF on_error IS NULL OR on_error NOT IN ('fail', 'reject', 'skip') THEN
        RAISE EXCEPTION 'invalid on_error "%"', on_error
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''fail'' (the batch rolls back), ''reject'' (bad rows go to sluice.rejects) or ''skip'' (bad rows are counted).';
    END IF;
    IF max_offsets_per_trigger < 1 THEN
        RAISE EXCEPTION 'max_offsets_per_trigger must be at least 1, not %', max_offsets_per_trigger
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_position(partitions, NULL) IS NOT NULL OR EXISTS (SELECT 1 FROM unnest(partitions) AS n WHERE n < 0)
       OR cardinality(partitions) = 0
       OR (SELECT count(DISTINCT n) FROM unnest(partitions) AS n) <> cardinality(partitions) THEN
        RAISE EXCEPTION 'invalid partitions %', partitions
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Give distinct partition numbers, 0 or more, or NULL for all partitions.';
    END IF;
    IF jsonb_typeof(options) <> 'object'
       OR EXISTS (SELECT 1 FROM jsonb_each(options) AS o WHERE jsonb_typeof(o.value) NOT IN ('string', 'number', 'boolean')) THEN
        RAISE EXCEPTION 'invalid options of a Kafka source'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Give a JSON object of librdkafka settings whose values are strings, numbers or booleans.',
                  HINT = 'For example ''{"security.protocol": "sasl_ssl", "sasl.mechanism": "PLAIN"}''.';
    END IF;

    -- the columns, and what fills them
    SELECT jsonb_agg(jsonb_build_object('name', c.name, 'type', c.type))
      INTO cols FROM sluice._parse_columns(columns) AS c;
    IF format = 'text' AND (jsonb_array_length(cols) <> 1 OR cols->0->>'type' <> 'text') THEN
        RAISE EXCEPTION 'a Kafka source of format ''text'' has one column, of type text'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The columns are %s.', columns);
    END IF;
    IF format = 'csv' THEN
        PERFORM sluice._check_csv_options(false, delimiter, NULL, NULL, NULL, NULL);
    END IF;
    IF include_metadata THEN
        SELECT c->>'name' INTO k FROM jsonb_array_elements(cols) AS c WHERE c->>'name' = ANY (meta) LIMIT 1;
        IF k IS NOT NULL THEN
            RAISE EXCEPTION 'column "%" is one of the metadata columns of a Kafka source', k
                USING ERRCODE = 'duplicate_column',
                      HINT = 'Rename the column, or leave include_metadata false.';
        END IF;
        cols := cols || '[{"name": "kafka_topic", "type": "text"}, {"name": "kafka_partition", "type": "integer"},
                          {"name": "kafka_offset", "type": "bigint"},
                          {"name": "kafka_timestamp", "type": "timestamp with time zone"},
                          {"name": "kafka_key", "type": "text"}]'::jsonb;
    END IF;

    -- 'earliest', 'latest', or an offset per partition as in Spark (-2 earliest, -1 latest)
    IF starting_offsets IN ('earliest', 'latest') THEN
        starting := to_jsonb(starting_offsets);
    ELSE
        BEGIN
            starting := starting_offsets::jsonb;
        EXCEPTION WHEN OTHERS THEN
            starting := NULL;
        END;
        IF jsonb_typeof(starting) IS DISTINCT FROM 'object' OR starting = '{}'
           OR EXISTS (SELECT 1 FROM jsonb_each(starting) AS o
                       WHERE o.key !~ '^[0-9]{1,9}$' OR jsonb_typeof(o.value) <> 'number'
                          OR o.value::text !~ '^-?[0-9]{1,18}$' OR o.value::text::bigint < -2) THEN
            RAISE EXCEPTION 'invalid starting_offsets "%"', starting_offsets
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use ''earliest'', ''latest'' or a JSON object of an offset per partition, as in ''{"0": 42, "1": -2}'' (-2: earliest, -1: latest).';
        END IF;
        starting := (SELECT jsonb_object_agg(o.key::int::text, o.value) FROM jsonb_each(starting) AS o);
    END IF;

    npart := sluice._kafka_check(brokers, topic, options);
    SELECT n INTO k FROM unnest(partitions) AS n WHERE n >= npart LIMIT 1;
    IF k IS NOT NULL THEN
        RAISE EXCEPTION 'Kafka topic "%" has no partition %', topic, k
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It has %s partitions, numbered from 0.', npart);
    END IF;
    IF jsonb_typeof(starting) = 'object' THEN
        SELECT o.key INTO k FROM jsonb_each(starting) AS o
         WHERE o.key::int >= npart OR NOT (partitions IS NULL OR o.key::int = ANY (partitions)) LIMIT 1;
        IF k IS NOT NULL THEN
            RAISE EXCEPTION 'starting_offsets names partition %, which the pipeline does not read', k
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('Topic "%s" has %s partitions%s.', topic, npart,
                                      CASE WHEN partitions IS NOT NULL
                                           THEN format('; the pipeline reads %s', array_to_string(partitions, ', ')) END);
        END IF;
        SELECT n INTO k FROM generate_series(0, npart - 1) AS n
         WHERE (partitions IS NULL OR n = ANY (partitions)) AND NOT starting ? n::text LIMIT 1;
        IF k IS NOT NULL THEN
            RAISE EXCEPTION 'starting_offsets gives no offset for partition %', k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Give an offset for every partition the pipeline reads (-2: earliest, -1: latest); partitions added later start at the earliest.';
        END IF;
    END IF;

    RETURN jsonb_build_object(
        'type', 'kafka',
        'brokers', brokers,
        'topic', topic,
        'columns', cols,
        'format', format,
        'delimiter', CASE WHEN format = 'csv' THEN delimiter END,
        'starting_offsets', starting,
        'max_offsets_per_trigger', max_offsets_per_trigger,
        'partitions', (SELECT jsonb_agg(n ORDER BY n) FROM unnest(partitions) AS n),
        'options', options,
        'on_error', on_error,
        'fail_on_data_loss', fail_on_data_loss,
        'include_metadata', include_metadata);
END
$$;
COMMENT ON FUNCTION sluice.kafka_source IS 'a source reading a Kafka topic, exactly once: its offsets commit with each batch';
-- connecting the server to brokers is granted, as reading its files is
REVOKE EXECUTE ON FUNCTION sluice.kafka_source FROM PUBLIC;

-- A source description built again by its function, as the caller, with the
-- checks its kind needs: one written by hand is checked the same.
CREATE FUNCTION sluice._rebuild_source(name text, source jsonb)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols jsonb := source->'columns';
    msg text;
BEGIN
    IF source->>'type' IS NULL OR source->>'type' NOT IN ('csv', 'kafka') THEN
        RAISE EXCEPTION 'invalid source for pipeline "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Describe the source with sluice.csv_source() or sluice.kafka_source().';
    END IF;
    BEGIN
        -- a Kafka source's metadata columns come from include_metadata, not from the list
        msg := (SELECT string_agg(format('%I %s', c->>'name', c->>'type'), ', ')
                  FROM jsonb_array_elements(cols) AS c
                 WHERE NOT (source->>'type' = 'kafka' AND (source->>'include_metadata')::boolean
                            AND c->>'name' IN ('kafka_topic', 'kafka_partition', 'kafka_offset',
                                               'kafka_timestamp', 'kafka_key')));
    EXCEPTION WHEN OTHERS THEN
        msg := NULL;
    END;
    IF msg IS NULL THEN
        RAISE EXCEPTION 'invalid source for pipeline "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The source has no list of columns.',
                  HINT = 'Describe the source with sluice.csv_source() or sluice.kafka_source().';
    END IF;

    IF source->>'type' = 'kafka' THEN
        IF NOT has_function_privilege('sluice.kafka_source(text, text, text, text, text, text, bigint, integer[], jsonb, text, boolean, boolean)', 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied to create pipeline "%"', name
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'Reading Kafka topics takes EXECUTE on sluice.kafka_source().',
                      HINT = format('A superuser can GRANT EXECUTE ON FUNCTION sluice.kafka_source TO %I.', current_user);
        END IF;
        RETURN sluice.kafka_source(source->>'brokers', source->>'topic', msg, source->>'format',
                                   source->>'delimiter', source->>'starting_offsets',
                                   (source->>'max_offsets_per_trigger')::bigint,
                                   CASE WHEN jsonb_typeof(source->'partitions') = 'array'
                                        THEN ARRAY(SELECT jsonb_array_elements_text(source->'partitions'))::int[] END,
                                   source->'options', source->>'on_error',
                                   (source->>'fail_on_data_loss')::boolean,
                                   (source->>'include_metadata')::boolean);
    END IF;

    source := sluice.csv_source(source->>'dir', msg, (source->>'header')::boolean, source->>'delimiter',
                                source->>'pattern', (source->>'max_files_per_trigger')::int,
                                source->>'quote', source->>'escape', source->>'null', source->>'encoding',
                                source->>'on_error', source->>'after', source->>'archive_dir',
                                (source->>'settle_ms')::bigint * interval '1 millisecond');
    IF NOT pg_has_role(current_user, 'pg_read_server_files', 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to create pipeline "%"', name
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Reading server files takes the privileges of the pg_read_server_files role.',
                  HINT = format('A superuser can GRANT pg_read_server_files TO %I.', current_user);
    END IF;
    PERFORM sluice._check_directory(source->>'dir');
    IF source->>'after' IN ('delete', 'archive')
       AND NOT pg_has_role(current_user, 'pg_write_server_files', 'USAGE') THEN
        RAISE EXCEPTION 'permission denied to create pipeline "%"', name
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Deleting or moving processed files takes the privileges of the pg_write_server_files role.',
                  HINT = format('A superuser can GRANT pg_write_server_files TO %I.', current_user);
    END IF;
    IF source->>'after' = 'archive' THEN
        PERFORM sluice._check_directory(source->>'archive_dir');
    END IF;
    RETURN source;
END
$$;

CREATE OR REPLACE FUNCTION sluice._pipeline_row(name text, source jsonb, sink jsonb, trigger text, transform text,
                                     event_time text, watermark_delay interval,
                                     OUT new_source jsonb, OUT new_sink jsonb, OUT target regclass,
                                     OUT late_rows regclass, OUT sink_function text, OUT cols jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
BEGIN
    IF name IS NULL OR source IS NULL OR sink IS NULL OR trigger IS NULL THEN
        RAISE EXCEPTION 'name, source, sink and trigger of a pipeline must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF name = '' OR length(name) > 63 THEN
        RAISE EXCEPTION 'invalid pipeline name "%"', name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A pipeline name has 1 to 63 characters.';
    END IF;
    IF current_database() <> current_setting('sluice.database') THEN
        RAISE EXCEPTION 'sluice pipelines run only in database "%"', current_setting('sluice.database')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set sluice.database in postgresql.conf and restart the server.';
    END IF;
    IF NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'role "%" cannot own a pipeline because it cannot log in', current_user
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Pipeline workers connect as the pipeline''s owner.',
                  HINT = 'Create the pipeline as a role with LOGIN.';
    END IF;
    IF trigger <> 'available_now' THEN
        BEGIN
            IF trigger::interval < '0'::interval THEN
                RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value';
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'invalid trigger "%" for pipeline "%"', trigger, name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Give an interval such as ''10 seconds'', or ''available_now''.';
        END;
    END IF;

    source := sluice._rebuild_source(name, source);
    cols := source->'columns';

    IF transform IS NOT NULL THEN
        cols := sluice._transform_columns(name, source, transform);
    END IF;

    sink := CASE
        WHEN sink->>'type' = 'append' AND sink ? 'relid' THEN
            sluice.append_sink((sink->>'relid')::oid::regclass)
        WHEN sink->>'type' = 'merge' AND sink ? 'relid' AND jsonb_typeof(sink->'key') = 'array' THEN
            sluice.merge_sink((sink->>'relid')::oid::regclass, ARRAY(SELECT jsonb_array_elements_text(sink->'key')),
                              sink->>'on_match')
        WHEN sink->>'type' = 'function' AND sink ? 'fnoid' THEN
            sluice.function_sink((sink->>'fnoid')::oid::regprocedure)
        WHEN sink->>'type' = 'window' AND sink ? 'relid' AND jsonb_typeof(sink->'group_by') = 'array'
             AND jsonb_typeof(sink->'aggregates') = 'array' THEN
            sluice.window_sink((sink->>'relid')::oid::regclass, (sink->>'size')::interval, (sink->>'slide')::interval,
                               ARRAY(SELECT jsonb_array_elements_text(sink->'group_by')),
                               ARRAY(SELECT format('%s(%s) AS %I', a->>'fn', coalesce(quote_ident(a->>'arg'), '*'),
                                                   a->>'alias')
                                       FROM jsonb_array_elements(sink->'aggregates') AS a),
                               sink->>'output_mode', (sink->>'late_relid')::oid::regclass) END;

    CASE
    WHEN sink->>'type' = 'append' AND sink ? 'relid'
      OR sink->>'type' = 'merge' AND sink ? 'relid' AND jsonb_typeof(sink->'key') = 'array' THEN
        PERFORM sluice._check_target(name, sink, cols);
    WHEN sink->>'type' = 'window' AND sink ? 'relid' THEN
        PERFORM sluice._check_window(name, sink, cols, event_time, watermark_delay);
    WHEN sink->>'type' = 'function' AND sink ? 'fnoid' THEN
        IF NOT has_function_privilege((sink->>'fnoid')::oid, 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied for function %', sink->>'function'
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('Pipeline "%s" calls it as %I.', name, current_user);
        END IF;
    ELSE
        RAISE EXCEPTION 'invalid sink for pipeline "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Describe the sink with sluice.append_sink(), sluice.merge_sink(), sluice.function_sink() or sluice.window_sink().';
    END CASE;
    IF (event_time IS NOT NULL OR watermark_delay IS NOT NULL) AND sink->>'type' IS DISTINCT FROM 'window' THEN
        RAISE EXCEPTION 'event_time and watermark_delay of pipeline "%" need a window sink', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    new_source := source;
    target := (sink->>'relid')::oid::regclass;
    late_rows := (sink->>'late_relid')::oid::regclass;
    sink_function := (sink->>'fnoid')::oid::regprocedure::text;
    new_sink := sink - ARRAY['target', 'relid', 'late_rows', 'late_relid', 'function', 'fnoid'];
END
$$;

CREATE OR REPLACE FUNCTION sluice.progress(name text, n int DEFAULT 10)
RETURNS TABLE (batch_id bigint, status text, attempts int, files int, input_rows bigint,
               sink_rows bigint, rejected_rows bigint, bytes bigint,
               num_rows_dropped_by_watermark bigint, watermark timestamptz,
               next_watermark timestamptz, event_time_min timestamptz, event_time_max timestamptz,
               state_rows_total bigint, state_rows_updated bigint, state_rows_removed bigint, rows_per_second numeric, duration_ms jsonb,
               start_offset jsonb, end_offset jsonb,
               planned_at timestamptz, committed_at timestamptz)
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    pid int;
BEGIN
    SELECT p.id INTO pid FROM sluice.pipeline AS p WHERE p.name = progress.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline "%" does not exist', progress.name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN QUERY
    SELECT b.batch_id, b.status, b.attempts, b.files, b.input_rows, b.sink_rows, b.rejected_rows, b.bytes,
           b.num_rows_dropped_by_watermark, b.watermark, b.next_watermark, b.event_time_min, b.event_time_max,
           b.state_rows_total, b.state_rows_updated, b.state_rows_removed,
           round(b.input_rows * 1000.0 / nullif((b.durations->>'total')::numeric, 0), 1),
           b.durations,
           coalesce(b.slice->'start', jsonb_build_object('log_offset', b.batch_id - 1)),
           sluice._batch_offsets(b.pipeline_id, b.batch_id),
           b.planned_at, b.committed_at
      FROM sluice.batch AS b
     WHERE b.pipeline_id = pid
     ORDER BY b.batch_id DESC
     LIMIT progress.n;
END
$$;

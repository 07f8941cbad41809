\echo Use "ALTER EXTENSION sluice UPDATE TO '0.4'" to load this file. \quit

-- 0.3 -> 0.4: limits per trigger, backpressure, autoscaling and retries with backoff.  csv_source() takes
-- max_bytes_per_trigger; kafka_source() takes max_rate_per_partition,
-- min_offsets_per_trigger and max_trigger_delay; create_pipeline() takes
-- backpressure, and progress() shows each batch's size_limit and backlog.  New
-- parameters and result columns make new functions: the old ones are
-- dropped, and what was granted on them (kafka_source() is granted by a
-- superuser) is given to the new ones as it was.  The ACL is copied rather
-- than granted again: a GRANT in an extension script would count as the
-- extension's own initial privilege, and pg_dump would then leave it out.

-- pipelines made before keep taking what is there at once; new ones get backpressure
ALTER TABLE sluice.pipeline ADD COLUMN backpressure boolean NOT NULL DEFAULT false;
ALTER TABLE sluice.pipeline ALTER COLUMN backpressure SET DEFAULT true;
ALTER TABLE sluice.batch ADD COLUMN size_limit bigint;
-- workers that follow the backlog, one as before unless asked
ALTER TABLE sluice.pipeline ADD COLUMN min_workers int NOT NULL DEFAULT 1,
                            ADD COLUMN max_workers int NOT NULL DEFAULT 1,
                            ADD CHECK (min_workers >= 1 AND max_workers >= min_workers);
-- transient failures in a row before a pipeline fails; NULL: no end
ALTER TABLE sluice.pipeline ADD COLUMN max_retries int CHECK (max_retries >= 0);
-- progress_json(): a stable id for each pipeline, one for each run, and what each plan left
ALTER TABLE sluice.pipeline ADD COLUMN uid uuid NOT NULL DEFAULT gen_random_uuid(),
                            ADD COLUMN run_id uuid;
ALTER TABLE sluice.batch ADD COLUMN run_id uuid, ADD COLUMN backlog bigint, ADD COLUMN event_time_avg timestamptz;
-- streaming deduplication
ALTER TABLE sluice.pipeline ADD COLUMN dedupe text[], ADD COLUMN dedupe_table regclass;
ALTER TABLE sluice.batch ADD COLUMN num_duplicates_dropped bigint, ADD COLUMN dedupe_state_rows bigint;

-- windows are aggregated in C as their rows are read (src/sinks/window.c)
DROP FUNCTION sluice._window_write(bigint, jsonb, regclass, text, interval, timestamptz, regclass);
-- The window sink's batch, aggregated in C as its rows are read
-- (src/sinks/window.c): its table of partial aggregates, as rows of its
-- state table (but sluice_batch), for the statements that write them.
-- which: 'all', 'closed' (the windows the new watermark closes) or 'open'.
-- Only a sluice worker's batch has one: anywhere else it is an error.
CREATE FUNCTION sluice._window_partials(which text)
RETURNS SETOF record LANGUAGE c VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sluice_window_partials';

CREATE TEMPORARY TABLE pg_temp.sluice_acl AS
SELECT p.proname, p.proacl FROM pg_catalog.pg_proc AS p
 WHERE p.oid IN ('sluice.csv_source(text, text, boolean, text, text, integer, text, text, text, text, text, text, text, interval)'::pg_catalog.regprocedure,
                 'sluice.kafka_source(text, text, text, text, text, text, bigint, integer[], jsonb, text, boolean, boolean)'::pg_catalog.regprocedure,
                 'sluice.create_pipeline(text, jsonb, jsonb, text, text, text, interval)'::pg_catalog.regprocedure,
                 'sluice.progress(text, integer)'::pg_catalog.regprocedure,
                 'sluice.window_sink(regclass, interval, interval, text[], text[], text, regclass)'::pg_catalog.regprocedure);

DROP FUNCTION sluice.csv_source(text, text, boolean, text, text, integer, text, text, text, text, text, text, text, interval);
DROP FUNCTION sluice.kafka_source(text, text, text, text, text, text, bigint, integer[], jsonb, text, boolean, boolean);
DROP FUNCTION sluice.create_pipeline(text, jsonb, jsonb, text, text, text, interval);
DROP FUNCTION sluice.progress(text, integer);
DROP FUNCTION sluice.window_sink(regclass, interval, interval, text[], text[], text, regclass);

-- session windows: a session_gap instead of a size
CREATE FUNCTION sluice.window_sink(target regclass, size interval DEFAULT NULL, slide interval DEFAULT NULL,
                                   group_by text[] DEFAULT '{}',
                                   aggregates text[] DEFAULT '{count(*) AS count}',
                                   output_mode text DEFAULT 'append',
                                   late_rows regclass DEFAULT NULL,
                                   session_gap interval DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a text;
    m text[];
    aggs jsonb := '[]';
    fn text;
    arg text;
BEGIN
    IF target IS NULL OR group_by IS NULL OR aggregates IS NULL OR output_mode IS NULL THEN
        RAISE EXCEPTION 'target, group_by, aggregates and output_mode of a window sink must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF size IS NOT NULL AND session_gap IS NOT NULL THEN
        RAISE EXCEPTION 'a window sink takes a size or a session_gap, not both'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give a size (and a slide) for tumbling or sliding windows, a session_gap for session windows.';
    END IF;
    IF size IS NULL AND session_gap IS NULL THEN
        RAISE EXCEPTION 'a window sink needs a size or a session_gap'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Give a size (and a slide) for tumbling or sliding windows, a session_gap for session windows.';
    END IF;
    IF session_gap IS NOT NULL AND slide IS NOT NULL THEN
        RAISE EXCEPTION 'session windows do not slide'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave slide out with a session_gap.';
    END IF;
    IF size <= '0'::interval OR slide <= '0'::interval OR slide > size THEN
        RAISE EXCEPTION 'invalid window size % or slide %', size, slide
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The size must be positive, and a slide positive and at most the size.';
    END IF;
    IF session_gap <= '0'::interval THEN
        RAISE EXCEPTION 'invalid session_gap %', session_gap
            USING ERRCODE = 'invalid_parameter_value', HINT = 'The gap must be positive.';
    END IF;
    IF extract(epoch FROM coalesce(size, session_gap)) <> extract(epoch FROM justify_hours(coalesce(size, session_gap)))
       OR coalesce(size, session_gap) > '1 day'::interval AND coalesce(size, session_gap)::text ~ '(mon|year)' THEN
        RAISE EXCEPTION 'window % % is not a fixed duration', CASE WHEN size IS NULL THEN 'session_gap' ELSE 'size' END,
                        coalesce(size, session_gap)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Give it in days, hours, minutes or seconds.';
    END IF;
    IF output_mode NOT IN ('append', 'update', 'complete') THEN
        RAISE EXCEPTION 'invalid output_mode "%"', output_mode
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''append'', ''update'' or ''complete''.';
    END IF;
    IF cardinality(aggregates) = 0 THEN
        RAISE EXCEPTION 'a window sink needs at least one aggregate' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH a IN ARRAY aggregates LOOP
        m := regexp_match(a, '^\s*(\w+)\s*\(\s*(\*|"[^"]+"|\w+)\s*\)\s+as\s+("[^"]+"|\w+)\s*$', 'i');
        IF m IS NULL THEN
            RAISE EXCEPTION 'invalid aggregate "%"', a
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Write each aggregate as function(column) AS name, as in ''sum(amount) AS total''.';
        END IF;
        fn := lower(m[1]);
        IF fn NOT IN ('count', 'sum', 'min', 'max', 'avg') THEN
            RAISE EXCEPTION 'aggregate function "%" is not supported by window sinks', m[1]
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = 'Window sinks support count, sum, min, max and avg, whose partial results merge exactly.';
        END IF;
        IF m[2] = '*' AND fn <> 'count' THEN
            RAISE EXCEPTION 'invalid aggregate "%"', a
                USING ERRCODE = 'invalid_parameter_value', DETAIL = 'Only count takes *.';
        END IF;
        arg := CASE WHEN m[2] = '*' THEN NULL WHEN m[2] ~ '^"' THEN btrim(m[2], '"') ELSE lower(m[2]) END;
        aggs := aggs || jsonb_build_object('fn', fn, 'arg', arg,
                                           'alias', CASE WHEN m[3] ~ '^"' THEN btrim(m[3], '"') ELSE lower(m[3]) END);
    END LOOP;
    IF session_gap IS NOT NULL THEN
        RETURN jsonb_build_object('type', 'window', 'target', target::text, 'relid', target::oid,
                                  'session_gap', session_gap::text, 'gap_s', extract(epoch FROM session_gap),
                                  'group_by', to_jsonb(group_by), 'aggregates', aggs,
                                  'output_mode', output_mode,
                                  'late_rows', late_rows::text, 'late_relid', late_rows::oid);
    END IF;
    RETURN jsonb_build_object('type', 'window', 'target', target::text, 'relid', target::oid,
                              'size', size::text, 'slide', coalesce(slide, size)::text,
                              'size_s', extract(epoch FROM size), 'slide_s', extract(epoch FROM coalesce(slide, size)),
                              'group_by', to_jsonb(group_by), 'aggregates', aggs,
                              'output_mode', output_mode,
                              'late_rows', late_rows::text, 'late_relid', late_rows::oid);
END
$$;
COMMENT ON FUNCTION sluice.window_sink IS 'a sink aggregating event-time windows (tumbling, sliding or session) with a watermark';


CREATE FUNCTION sluice.csv_source(
    dir text,
    columns text,
    header boolean DEFAULT true,
    delimiter text DEFAULT ',',
    pattern text DEFAULT '*.csv',
    max_files_per_trigger int DEFAULT NULL,
    quote text DEFAULT '"',
    escape text DEFAULT NULL,
    null_string text DEFAULT NULL,
    encoding text DEFAULT NULL,
    on_error text DEFAULT 'fail',
    after text DEFAULT 'keep',
    archive_dir text DEFAULT NULL,
    settle_time interval DEFAULT '0 seconds',
    max_bytes_per_trigger bigint DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols jsonb;
BEGIN
    IF dir IS NULL OR columns IS NULL OR header IS NULL OR pattern IS NULL THEN
        RAISE EXCEPTION 'dir, columns, header and pattern of a CSV source must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF dir !~ '^/' THEN
        RAISE EXCEPTION 'directory "%" is not an absolute path', dir
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_files_per_trigger < 1 THEN
        RAISE EXCEPTION 'max_files_per_trigger must be at least 1, not %', max_files_per_trigger
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_bytes_per_trigger < 1 THEN
        RAISE EXCEPTION 'max_bytes_per_trigger must be at least 1, not %', max_bytes_per_trigger
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF on_error IS NULL OR on_error NOT IN ('fail', 'reject', 'skip') THEN
        RAISE EXCEPTION 'invalid on_error "%"', on_error
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''fail'' (the batch rolls back), ''reject'' (bad rows go to sluice.rejects) or ''skip'' (bad rows are counted).';
    END IF;
    IF after IS NULL OR after NOT IN ('keep', 'delete', 'archive') THEN
        RAISE EXCEPTION 'invalid after "%"', after
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''keep'', ''delete'' or ''archive''.';
    END IF;
    IF (after = 'archive') <> (archive_dir IS NOT NULL) THEN
        RAISE EXCEPTION 'archive_dir must be given exactly when after is ''archive'''
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF archive_dir !~ '^/' THEN
        RAISE EXCEPTION 'directory "%" is not an absolute path', archive_dir
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF settle_time IS NULL OR settle_time < '0'::interval THEN
        RAISE EXCEPTION 'settle_time must not be negative or null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM sluice._check_csv_options(header, delimiter, quote, escape, null_string, encoding);
    SELECT jsonb_agg(jsonb_build_object('name', c.name, 'type', c.type))
      INTO cols FROM sluice._parse_columns(columns) AS c;
    RETURN jsonb_build_object(
        'type', 'csv',
        'dir', CASE WHEN dir = '/' THEN dir ELSE rtrim(dir, '/') END,
        'columns', cols,
        'header', header,
        'delimiter', delimiter,
        'quote', quote,
        'escape', escape,
        'null', null_string,
        'encoding', encoding,
        'pattern', pattern,
        'max_files_per_trigger', max_files_per_trigger,
        'max_bytes_per_trigger', max_bytes_per_trigger,
        'on_error', on_error,
        'after', after,
        'archive_dir', CASE WHEN archive_dir = '/' THEN archive_dir ELSE rtrim(archive_dir, '/') END,
        'settle_ms', (extract(epoch FROM settle_time) * 1000)::bigint);
END
$$;
COMMENT ON FUNCTION sluice.csv_source IS 'a source reading the CSV files of a server directory, oldest first';

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
    include_metadata boolean DEFAULT false,
    max_rate_per_partition int DEFAULT NULL,
    min_offsets_per_trigger bigint DEFAULT NULL,
    max_trigger_delay interval DEFAULT '15 minutes')
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
       OR options IS NULL OR fail_on_data_loss IS NULL OR include_metadata IS NULL OR max_trigger_delay IS NULL THEN
        RAISE EXCEPTION 'brokers, topic, columns, format, starting_offsets, options, fail_on_data_loss, include_metadata and max_trigger_delay of a Kafka source must not be null'
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
    IF max_rate_per_partition < 1 THEN
        RAISE EXCEPTION 'max_rate_per_partition must be at least 1, not %', max_rate_per_partition
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It is messages a second per partition; a batch takes at most that many times the trigger interval in seconds.';
    END IF;
    IF min_offsets_per_trigger < 1 THEN
        RAISE EXCEPTION 'min_offsets_per_trigger must be at least 1, not %', min_offsets_per_trigger
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_trigger_delay < '0'::interval OR max_trigger_delay > '1 year'::interval THEN
        RAISE EXCEPTION 'max_trigger_delay must be between 0 and 1 year, not %', max_trigger_delay
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
        'include_metadata', include_metadata,
        'max_rate_per_partition', max_rate_per_partition,
        'min_offsets_per_trigger', min_offsets_per_trigger,
        'max_trigger_delay_ms', (extract(epoch FROM max_trigger_delay) * 1000)::bigint);
END
$$;
COMMENT ON FUNCTION sluice.kafka_source IS 'a source reading a Kafka topic, exactly once: its offsets commit with each batch';
-- connecting the server to brokers is granted, as reading its files is
REVOKE EXECUTE ON FUNCTION sluice.kafka_source FROM PUBLIC;

-- type names are parsed before they go into CREATE TABLE; a long multibyte
-- pipeline name keeps the id at the end of its state table's name
-- partial-aggregate columns of the state table (typed by the received
-- columns cols), their names, how to compute, merge and finish them
CREATE OR REPLACE FUNCTION sluice._window_aggs(sink jsonb, cols jsonb,
    OUT state_cols text, OUT part_names text, OUT partials text, OUT merges text,
    OUT combines text, OUT finals text, OUT names text)
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(CASE a->>'fn'
                      WHEN 'count' THEN format('a%s_n bigint', o)
                      WHEN 'avg' THEN format('a%s_s numeric, a%s_n bigint', o, o)
                      WHEN 'sum' THEN format('a%s_s numeric', o)
                      ELSE format('a%s_v %s', o, (SELECT x->>'type' FROM jsonb_array_elements(cols) x
                                                  WHERE x->>'name' = a->>'arg'
                                                    AND (x->>'type')::regtype IS NOT NULL)) END, ', ' ORDER BY o),
           string_agg(CASE a->>'fn'
                      WHEN 'count' THEN format('a%s_n', o)
                      WHEN 'avg' THEN format('a%s_s, a%s_n', o, o)
                      WHEN 'sum' THEN format('a%s_s', o)
                      ELSE format('a%s_v', o) END, ', ' ORDER BY o),
           string_agg(CASE a->>'fn'
                      WHEN 'count' THEN format('count(%s)', coalesce(quote_ident(a->>'arg'), '*'))
                      WHEN 'avg' THEN format('sum(%I)::numeric, count(%1$I)', a->>'arg')
                      WHEN 'sum' THEN format('sum(%I)::numeric', a->>'arg')
                      ELSE format('%s(%I)', a->>'fn', a->>'arg') END, ', ' ORDER BY o),
           string_agg(CASE a->>'fn'
                      WHEN 'count' THEN format('a%s_n = s.a%1$s_n + excluded.a%1$s_n', o)
                      WHEN 'avg' THEN format('a%s_s = coalesce(s.a%1$s_s + excluded.a%1$s_s, s.a%1$s_s, excluded.a%1$s_s),'
                                             ' a%1$s_n = s.a%1$s_n + excluded.a%1$s_n', o)
                      WHEN 'sum' THEN format('a%s_s = coalesce(s.a%1$s_s + excluded.a%1$s_s, s.a%1$s_s, excluded.a%1$s_s)', o)
                      WHEN 'min' THEN format('a%s_v = least(s.a%1$s_v, excluded.a%1$s_v)', o)
                      ELSE format('a%s_v = greatest(s.a%1$s_v, excluded.a%1$s_v)', o) END, ', ' ORDER BY o),
           string_agg(CASE a->>'fn'
                      WHEN 'count' THEN format('sum(a%s_n)::bigint', o)
                      WHEN 'avg' THEN format('sum(a%s_s), sum(a%1$s_n)::bigint', o)
                      WHEN 'sum' THEN format('sum(a%s_s)', o)
                      ELSE format('%s(a%s_v)', a->>'fn', o) END, ', ' ORDER BY o),
           string_agg(CASE a->>'fn'
                      WHEN 'count' THEN format('a%s_n', o)
                      WHEN 'avg' THEN format('a%s_s / nullif(a%1$s_n, 0)', o)
                      WHEN 'sum' THEN format('a%s_s', o)
                      ELSE format('a%s_v', o) END, ', ' ORDER BY o),
           string_agg(quote_ident(a->>'alias'), ', ' ORDER BY o)
      FROM jsonb_array_elements(sink->'aggregates') WITH ORDINALITY AS x(a, o)
$$;

-- the state table of a window pipeline, beside its target: one row per
-- window and group, holding partial aggregates (each type given must read
-- as a type name, which create_pipeline's are)
CREATE OR REPLACE FUNCTION sluice._window_create_state(pipeline_id int, pipeline_name text, sink jsonb, cols jsonb)
RETURNS regclass LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl text := format('%I.%I', (SELECT nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
                                  WHERE c.oid = (sink->>'relid')::oid),
                   CASE WHEN octet_length('sluice_state_' || pipeline_name) <= 63 THEN 'sluice_state_' || pipeline_name
                        ELSE format('sluice_state_%s_%s', (SELECT left(pipeline_name, n) FROM generate_series(30, 1, -1) AS n
                                                            WHERE octet_length(left(pipeline_name, n)) <= 30 LIMIT 1),
                                    pipeline_id) END);
    groups text := (SELECT string_agg(format('%I %s, ', g, (SELECT x->>'type' FROM jsonb_array_elements(cols) x
                                                               WHERE x->>'name' = g
                                                                 AND (x->>'type')::regtype IS NOT NULL)), '' ORDER BY o)
                      FROM jsonb_array_elements_text(sink->'group_by') WITH ORDINALITY AS y(g, o));
    keys text := (SELECT string_agg(', ' || quote_ident(g), '' ORDER BY o)
                    FROM jsonb_array_elements_text(sink->'group_by') WITH ORDINALITY AS y(g, o));
BEGIN
    EXECUTE format('CREATE TABLE %s (window_start timestamptz NOT NULL, window_end timestamptz NOT NULL, %s'
                   ' %s, sluice_batch bigint NOT NULL,'
                   ' UNIQUE NULLS NOT DISTINCT (window_start, window_end %s))',
                   tbl, coalesce(groups, ''), (sluice._window_aggs(sink, cols)).state_cols, coalesce(keys, ''));
    RETURN tbl::regclass;
END
$$;

-- Streaming deduplication (see README "Deduplication").

-- event_time and watermark_delay are for a window sink or dedupe; dedupe's
-- key must be among the columns the sink receives
CREATE FUNCTION sluice._check_dedupe(pipeline_name text, sink jsonb, cols jsonb, event_time text,
                                     watermark_delay interval, dedupe text[])
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c text;
    t regtype;
BEGIN
    IF dedupe IS NULL THEN
        IF (event_time IS NOT NULL OR watermark_delay IS NOT NULL) AND sink->>'type' IS DISTINCT FROM 'window' THEN
            RAISE EXCEPTION 'event_time and watermark_delay of pipeline "%" need a window sink or dedupe', pipeline_name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RETURN;
    END IF;
    IF event_time IS NULL OR watermark_delay IS NULL THEN
        RAISE EXCEPTION 'dedupe of pipeline "%" needs an event_time and a watermark_delay', pipeline_name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A key is remembered until the watermark passes its event time.',
                  HINT = 'Give create_pipeline an event_time => ''column'' and a watermark_delay => interval.';
    END IF;
    IF watermark_delay < '0'::interval THEN
        RAISE EXCEPTION 'watermark_delay must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(dedupe) = 0 OR EXISTS (SELECT 1 FROM unnest(dedupe) AS k WHERE k IS NULL) THEN
        RAISE EXCEPTION 'dedupe of pipeline "%" needs at least one column, and no null', pipeline_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT count(DISTINCT k) FROM unnest(dedupe) AS k) < cardinality(dedupe) THEN
        RAISE EXCEPTION 'dedupe of pipeline "%" names a column twice', pipeline_name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    t := (SELECT (x->>'type')::regtype FROM jsonb_array_elements(cols) x WHERE x->>'name' = event_time);
    IF t IS NULL OR t NOT IN ('timestamptz'::regtype, 'timestamp'::regtype) THEN
        RAISE EXCEPTION 'event time column "%" of pipeline "%" is not a timestamp among the columns it receives',
                        event_time, pipeline_name
            USING ERRCODE = 'undefined_column';
    END IF;
    FOREACH c IN ARRAY dedupe LOOP
        IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(cols) x WHERE x->>'name' = c) THEN
            RAISE EXCEPTION 'dedupe column "%" of pipeline "%" is not among the columns it receives', c, pipeline_name
                USING ERRCODE = 'undefined_column';
        END IF;
        IF c IN ('sluice_event_time', 'sluice_batch') THEN
            RAISE EXCEPTION 'dedupe column "%" of pipeline "%" has a name sluice keeps for itself', c, pipeline_name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
END
$$;

-- the keys a dedupe pipeline remembers, beside its target (or its sink
-- function): the key columns, the event time of the row that first had the
-- key, the batch that kept it (each type given must read as a type name,
-- which create_pipeline's are)
CREATE FUNCTION sluice._dedupe_create_state(pipeline_id int, pipeline_name text, sink jsonb, cols jsonb,
                                            dedupe text[])
RETURNS regclass LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nsp name := coalesce((SELECT n.nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
                           WHERE c.oid = (sink->>'relid')::oid),
                         (SELECT n.nspname FROM pg_namespace n JOIN pg_proc f ON f.pronamespace = n.oid
                           WHERE f.oid = (sink->>'fnoid')::oid));
    tbl text := format('%I.%I', nsp,
                   CASE WHEN octet_length('sluice_dedupe_' || pipeline_name) <= 63 THEN 'sluice_dedupe_' || pipeline_name
                        ELSE format('sluice_dedupe_%s', pipeline_id) END);
    msg text;
BEGIN
    EXECUTE format('CREATE TABLE %s (%s, sluice_event_time timestamptz NOT NULL, sluice_batch bigint NOT NULL,'
                   ' UNIQUE NULLS NOT DISTINCT (%s))', tbl,
                   (SELECT string_agg(format('%I %s', k, (SELECT x->>'type' FROM jsonb_array_elements(cols) x
                                                           WHERE x->>'name' = k
                                                             AND (x->>'type')::regtype IS NOT NULL)),
                                      ', ' ORDER BY o)
                      FROM unnest(dedupe) WITH ORDINALITY AS d(k, o)),
                   (SELECT string_agg(quote_ident(k), ', ' ORDER BY o) FROM unnest(dedupe) WITH ORDINALITY AS d(k, o)));
    RETURN tbl::regclass;
EXCEPTION WHEN undefined_object THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
    RAISE EXCEPTION 'cannot dedupe pipeline "%" by %', pipeline_name, array_to_string(dedupe, ', ')
        USING ERRCODE = 'feature_not_supported', DETAIL = msg || '.',
              HINT = 'Its keys are kept in a table with a unique index: a key column needs a type with a default btree operator class.';
END
$$;

CREATE FUNCTION sluice.create_pipeline(name text, source jsonb, sink jsonb,
                                       trigger text DEFAULT '1 second',
                                       transform text DEFAULT NULL,
                                       event_time text DEFAULT NULL,
                                       watermark_delay interval DEFAULT NULL,
                                       backpressure boolean DEFAULT true,
                                       min_workers int DEFAULT 1,
                                       max_workers int DEFAULT 1,
                                       max_retries int DEFAULT NULL,
                                       dedupe text[] DEFAULT NULL)
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_create_pipeline';
COMMENT ON FUNCTION sluice.create_pipeline IS 'create a stopped pipeline from a source, through an optional transform, to a sink';

CREATE FUNCTION sluice.progress(name text, n int DEFAULT 10)
RETURNS TABLE (batch_id bigint, status text, attempts int, files int, input_rows bigint,
               sink_rows bigint, rejected_rows bigint, bytes bigint,
               num_rows_dropped_by_watermark bigint, watermark timestamptz,
               next_watermark timestamptz, event_time_min timestamptz, event_time_max timestamptz,
               state_rows_total bigint, state_rows_updated bigint, state_rows_removed bigint, rows_per_second numeric, duration_ms jsonb,
               start_offset jsonb, end_offset jsonb,
               planned_at timestamptz, committed_at timestamptz, size_limit bigint, backlog bigint,
               event_time_avg timestamptz, num_duplicates_dropped bigint)
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
           CASE WHEN b.state_rows_total IS NOT NULL OR b.dedupe_state_rows IS NOT NULL
                THEN coalesce(b.state_rows_total, 0) + coalesce(b.dedupe_state_rows, 0) END,
           b.state_rows_updated, b.state_rows_removed,
           round(b.input_rows * 1000.0 / nullif((b.durations->>'total')::numeric, 0), 1),
           b.durations,
           coalesce(b.slice->'start', jsonb_build_object('log_offset', b.batch_id - 1)),
           sluice._batch_offsets(b.pipeline_id, b.batch_id),
           b.planned_at, b.committed_at, b.size_limit, b.backlog, b.event_time_avg, b.num_duplicates_dropped
      FROM sluice.batch AS b
     WHERE b.pipeline_id = pid
     ORDER BY b.batch_id DESC
     LIMIT progress.n;
END
$$;
COMMENT ON FUNCTION sluice.progress IS 'the last n batches of a pipeline, newest first, with Spark-like progress fields';

-- Spark's StreamingQueryProgress of the last n batches, newest first, from
-- sluice.batch (what progress() shows, in Spark's names and shape)
CREATE FUNCTION sluice.progress_json(name text, n int DEFAULT 1)
RETURNS SETOF jsonb LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p sluice.pipeline;
BEGIN
    SELECT * INTO p FROM sluice.pipeline AS x WHERE x.name = progress_json.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline "%" does not exist', progress_json.name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN QUERY
    SELECT jsonb_strip_nulls(jsonb_build_object(
               'id', p.uid, 'runId', b.run_id, 'name', p.name,
               'timestamp', to_char(b.planned_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
               'batchId', b.batch_id,
               'numInputRows', b.input_rows,
               'inputRowsPerSecond', b.in_rate,
               'processedRowsPerSecond', b.processed_rate,
               'durationMs', jsonb_build_object('triggerExecution', (b.durations->>'total')::numeric,
                                                'queryPlanning', (b.durations->>'plan')::numeric,
                                                'addBatch', (b.durations->>'write')::numeric),
               'eventTime', CASE WHEN p.event_time IS NOT NULL THEN jsonb_build_object(
                   'min', to_char(b.event_time_min AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   'max', to_char(b.event_time_max AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   'avg', to_char(b.event_time_avg AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                   'watermark', to_char(b.watermark AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')) END,
               'stateOperators', CASE WHEN p.dedupe_table IS NOT NULL THEN jsonb_build_array(jsonb_build_object(
                   'operatorName', 'dedupe',
                   'numRowsTotal', b.dedupe_state_rows,
                   'numDroppedDuplicateRows', b.num_duplicates_dropped,
                   'memoryUsedBytes', pg_total_relation_size(p.dedupe_table))) ELSE '[]' END
                 || CASE WHEN p.state_table IS NOT NULL THEN jsonb_build_array(jsonb_build_object(
                   'operatorName', 'window',
                   'numRowsTotal', b.state_rows_total, 'numRowsUpdated', b.state_rows_updated,
                   'numRowsRemoved', b.state_rows_removed,
                   'numRowsDroppedByWatermark', b.num_rows_dropped_by_watermark,
                   'memoryUsedBytes', pg_total_relation_size(p.state_table))) ELSE '[]' END,
               'sources', jsonb_build_array(jsonb_build_object(
                   'description', CASE p.source->>'type'
                                  WHEN 'kafka' THEN format('KafkaV2[Subscribe[%s]]', p.source->>'topic')
                                  ELSE format('FileStreamSource[%s]', p.source->>'dir') END,
                   'startOffset', coalesce(b.slice->'start', jsonb_build_object('log_offset', b.batch_id - 1)),
                   'endOffset', sluice._batch_offsets(b.pipeline_id, b.batch_id),
                   'latestOffset', coalesce(b.slice->'latest', jsonb_build_object('log_offset', b.batch_id)),
                   'numInputRows', b.input_rows,
                   'inputRowsPerSecond', b.in_rate,
                   'processedRowsPerSecond', b.processed_rate,
                   'metrics', CASE p.source->>'type'
                              WHEN 'kafka' THEN jsonb_build_object('offsetsBehindLatest', b.backlog,
                                  'avgOffsetsBehindLatest',
                                  round(b.backlog::numeric / nullif((SELECT count(*) FROM jsonb_object_keys(b.slice->'end'->(p.source->>'topic'))), 0), 1))
                              ELSE jsonb_build_object('filesBehindLatest', b.backlog) END)),
               'sink', jsonb_build_object(
                   'description', format('%sSink[%s]', initcap(p.sink->>'type'), coalesce(p.target::text, p.sink_function)),
                   'numOutputRows', b.sink_rows)))
      FROM (SELECT y.*, round(y.input_rows / nullif(extract(epoch FROM y.planned_at - y.prev_planned_at), 0), 1) AS in_rate,
                   round(y.input_rows * 1000.0 / nullif((y.durations->>'total')::numeric, 0), 1) AS processed_rate
              FROM (SELECT x.*, lag(x.planned_at) OVER (ORDER BY x.batch_id) AS prev_planned_at
                      FROM sluice.batch AS x
                     WHERE x.pipeline_id = p.id AND x.status = 'committed'
                     ORDER BY x.batch_id DESC LIMIT progress_json.n) AS y) AS b
     ORDER BY b.batch_id DESC
     LIMIT progress_json.n;
END
$$;
COMMENT ON FUNCTION sluice.progress_json IS 'the last n committed batches of a pipeline, newest first, each shaped like Spark''s StreamingQueryProgress';

-- one row of numbers per pipeline the caller may see (her own; all with
-- pg_read_all_stats or pg_monitor), for postgres_exporter
-- (contrib/prometheus/sluice.yaml); never a source's options
CREATE FUNCTION sluice.metrics(OUT pipeline text, OUT running int, OUT failed int,
                               OUT batches_total bigint, OUT input_rows_total bigint,
                               OUT output_rows_total bigint, OUT rejected_rows_total bigint,
                               OUT late_rows_total bigint, OUT failures_total bigint, OUT backlog bigint,
                               OUT watermark_seconds float8, OUT watermark_lag_seconds float8,
                               OUT last_batch_duration_seconds float8, OUT workers int,
                               OUT desired_workers int, OUT state_rows bigint, OUT retry_attempts int)
RETURNS SETOF record LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_metrics';
COMMENT ON FUNCTION sluice.metrics IS 'counters and gauges of each pipeline, for Prometheus (contrib/prometheus/sluice.yaml)';

-- an SVG polyline of vals (NULLs skipped), one point per batch, in a chart
-- at (x, y) of w by h whose top is top
CREATE FUNCTION sluice._svg_line(vals numeric[], x int, y int, w int, h int, top numeric, color text)
RETURNS text LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>', color,
                  coalesce(string_agg(format('%s,%s', round(x + (i - 0.5) * w / cardinality(vals)::numeric, 1),
                                             round(y + h - v * h / top, 1)), ' ' ORDER BY i), ''))
      FROM unnest(vals) WITH ORDINALITY AS u(v, i) WHERE v IS NOT NULL
$$;

-- A picture of the last n batches, like the Streaming tab of Spark's UI: a
-- self-contained SVG (psql -Atc "SELECT sluice.dashboard('p')" > p.svg)
CREATE FUNCTION sluice.dashboard(name text, n int DEFAULT 100)
RETURNS text LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p sluice.pipeline;
    l constant int := 100;          -- left margin, for the value axis
    pw constant int := 780;         -- a chart's width
    ph constant int := 150;         -- and height
    gap constant int := 80;         -- between charts, for titles and the batch axis
    ids bigint[];
    replayed int[];                 -- attempts > 1: after a crash or a failure
    input_rate numeric[];
    processed_rate numeric[];
    plan_ms numeric[];
    write_ms numeric[];
    backlog numeric[];
    wm_at numeric[];              -- seconds after e0, the earliest event time shown
    et_at numeric[];
    e0 timestamptz;
    t0 timestamptz;
    t1 timestamptz;
    k int;
    svg text;
    y int := 90;
    c record;
    top numeric;
    bw numeric;
BEGIN
    SELECT * INTO p FROM sluice.pipeline AS x WHERE x.name = dashboard.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline "%" does not exist', dashboard.name USING ERRCODE = 'undefined_object';
    END IF;
    IF n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'n must be from 1 to 1000' USING ERRCODE = 'invalid_parameter_value',
              DETAIL = 'A chart is 780 points wide.';
    END IF;
    SELECT array_agg(x.batch_id ORDER BY x.batch_id),
           array_agg(x.attempts ORDER BY x.batch_id),
           array_agg(round(x.input_rows / nullif(extract(epoch FROM x.planned_at - x.prev), 0), 1) ORDER BY x.batch_id),
           array_agg(round(x.input_rows * 1000.0 / nullif((x.durations->>'total')::numeric, 0), 1) ORDER BY x.batch_id),
           array_agg((x.durations->>'plan')::numeric ORDER BY x.batch_id),
           array_agg((x.durations->>'write')::numeric ORDER BY x.batch_id),
           array_agg(x.backlog ORDER BY x.batch_id),
           array_agg(extract(epoch FROM x.next_watermark - x.first_event) ORDER BY x.batch_id),
           array_agg(extract(epoch FROM x.event_time_max - x.first_event) ORDER BY x.batch_id),
           min(x.committed_at), max(x.committed_at), count(*), min(x.first_event)
      INTO ids, replayed, input_rate, processed_rate, plan_ms, write_ms, backlog, wm_at, et_at, t0, t1, k, e0
      FROM (SELECT y.*, lag(y.planned_at) OVER (ORDER BY y.batch_id) AS prev,
                   min(least(y.event_time_min, y.next_watermark)) OVER () AS first_event
              FROM (SELECT * FROM sluice.batch AS z WHERE z.pipeline_id = p.id AND z.status = 'committed'
                     ORDER BY z.batch_id DESC LIMIT n) AS y) AS x;

    svg := format('<svg xmlns="http://www.w3.org/2000/svg" width="%s" height="%s" font-family="sans-serif" font-size="12">',
                  l + pw + 40, y + (CASE WHEN p.event_time IS NULL THEN 3 ELSE 4 END) * (ph + gap))
        || '<rect width="100%" height="100%" fill="#ffffff"/>'
        || format('<text x="%s" y="30" font-size="18" font-weight="bold">sluice pipeline %s</text>', l,
                  replace(replace(replace(regexp_replace(p.name, '[[:cntrl:]]', '', 'g'), '&', '&amp;'), '<', '&lt;'), '>', '&gt;'))
        || format('<text x="%s" y="52" fill="#555">state %s; the last %s committed batches%s</text>', l, p.state, k,
                  CASE WHEN k > 0 THEN format(', %s to %s', to_char(t0, 'YYYY-MM-DD HH24:MI:SS'), to_char(t1, 'HH24:MI:SS "UTC"OF'))
                       ELSE '' END);
    IF k = 0 THEN
        RETURN svg || format('<text x="%s" y="%s" fill="#555">no committed batch yet</text></svg>', l, y);
    END IF;
    bw := pw::numeric / k;

    FOR c IN SELECT * FROM (VALUES
            (1, 'Input rate and processing rate', 'rows/s', '#1f77b4', '#ff7f0e', 'input rate', 'processing rate'),
            (2, 'Batch duration by phase (a black mark: replayed)', 'ms', '#2ca02c', '#d62728', 'plan',
             'read, write, commit'),
            (3, 'Backlog after each plan', CASE WHEN p.source->>'type' = 'kafka' THEN 'offsets' ELSE 'files' END,
             '#9467bd', NULL, 'backlog', NULL),
            (4, 'Watermark against the latest event time', 'event time (UTC)', '#8c564b', '#e377c2',
             'watermark', 'max event time'))
            AS v(no, title, unit, c1, c2, s1, s2)
         WHERE v.no < 4 OR p.event_time IS NOT NULL
    LOOP
        top := coalesce(nullif(CASE c.no
            WHEN 1 THEN (SELECT max(v) FROM unnest(input_rate || processed_rate) AS v)
            WHEN 2 THEN (SELECT max(a + b) FROM unnest(plan_ms, write_ms) AS u(a, b))
            WHEN 3 THEN (SELECT max(v) FROM unnest(backlog) AS v)
            ELSE (SELECT max(v) FROM unnest(wm_at || et_at) AS v) END, 0), 1);
        svg := svg
            || format('<text x="%s" y="%s" font-size="14" font-weight="bold">%s</text>', l, y - 14, c.title)
            || format('<rect x="%s" y="%s" width="%s" height="%s" fill="#fafafa" stroke="#999"/>', l, y, pw, ph)
            || format('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="#ddd"/>', l, y + ph / 2, l + pw, y + ph / 2)
            || format('<text x="%s" y="%s" text-anchor="end">%s</text>', l - 4, y + ph,
                      CASE WHEN c.no = 4 THEN to_char(e0 AT TIME ZONE 'UTC', 'MM-DD HH24:MI') ELSE '0' END)
            || format('<text x="%s" y="%s" text-anchor="end">%s</text>', l - 4, y + ph / 2 + 4,
                      CASE WHEN c.no = 4 THEN to_char((e0 + top / 2 * interval '1 second') AT TIME ZONE 'UTC', 'MM-DD HH24:MI')
                           ELSE round(top / 2, CASE WHEN top >= 100 THEN 0 ELSE 1 END)::text END)
            || format('<text x="%s" y="%s" text-anchor="end">%s</text>', l - 4, y + 10,
                      CASE WHEN c.no = 4 THEN to_char((e0 + top * interval '1 second') AT TIME ZONE 'UTC', 'MM-DD HH24:MI')
                           ELSE round(top, CASE WHEN top >= 100 THEN 0 ELSE 1 END)::text END)
            || format('<text x="%s" y="%s" text-anchor="middle" fill="#555" transform="rotate(-90 %s %s)">%s</text>',
                      16, y + ph / 2, 16, y + ph / 2, c.unit)
            || format('<text x="%s" y="%s">%s</text><text x="%s" y="%s" text-anchor="end">%s</text>',
                      l, y + ph + 16, ids[1], l + pw, y + ph + 16, ids[k])
            || format('<text x="%s" y="%s" text-anchor="middle" fill="#555">batch</text>', l + pw / 2, y + ph + 30)
            || format('<rect x="%s" y="%s" width="10" height="10" fill="%s"/><text x="%s" y="%s">%s</text>',
                      l + pw - 300, y - 24, c.c1, l + pw - 286, y - 14, c.s1)
            || CASE WHEN c.c2 IS NULL THEN '' ELSE
               format('<rect x="%s" y="%s" width="10" height="10" fill="%s"/><text x="%s" y="%s">%s</text>',
                      l + pw - 160, y - 24, c.c2, l + pw - 146, y - 14, c.s2) END
            || CASE c.no
               WHEN 1 THEN sluice._svg_line(input_rate, l, y, pw, ph, top, c.c1)
                           || sluice._svg_line(processed_rate, l, y, pw, ph, top, c.c2)
               WHEN 2 THEN (SELECT coalesce(string_agg(
                               format('<rect x="%s" y="%s" width="%s" height="%s" fill="%s"/>',
                                      round(l + (i - 1) * bw, 1), round(y + ph - (a + b) * ph / top, 1),
                                      round(greatest(bw - 1, 1), 1), round(b * ph / top, 1), c.c2)
                               || format('<rect x="%s" y="%s" width="%s" height="%s" fill="%s"/>',
                                      round(l + (i - 1) * bw, 1), round(y + ph - a * ph / top, 1),
                                      round(greatest(bw - 1, 1), 1), round(a * ph / top, 1), c.c1), ''), '')
                              FROM unnest(plan_ms, write_ms) WITH ORDINALITY AS u(a, b, i) WHERE a IS NOT NULL)
                           || (SELECT coalesce(string_agg(
                                 format('<rect x="%s" y="%s" width="%s" height="4" fill="#000000"><title>batch %s: attempt %s</title></rect>',
                                        round(l + (i - 1) * bw, 1), y - 6, round(greatest(bw - 1, 1), 1), ids[i], t), ''), '')
                                 FROM unnest(replayed) WITH ORDINALITY AS u(t, i) WHERE t > 1)
               WHEN 3 THEN sluice._svg_line(backlog, l, y, pw, ph, top, c.c1)
               ELSE sluice._svg_line(wm_at, l, y, pw, ph, top, c.c1)
                    || sluice._svg_line(et_at, l, y, pw, ph, top, c.c2) END;
        y := y + ph + gap;
    END LOOP;
    RETURN svg || '</svg>';
END
$$;
COMMENT ON FUNCTION sluice.dashboard IS 'an SVG picture of the last n batches of a pipeline: rates, durations by phase, backlog, watermark';

UPDATE pg_catalog.pg_proc AS p SET proacl = a.proacl
  FROM pg_temp.sluice_acl AS a
 WHERE p.pronamespace = 'sluice'::pg_catalog.regnamespace AND p.proname = a.proname
   AND p.proname IN ('csv_source', 'kafka_source', 'create_pipeline', 'progress', 'window_sink');
DROP TABLE pg_temp.sluice_acl;

-- the new parameters
CREATE OR REPLACE FUNCTION sluice._rebuild_source(name text, source jsonb)
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
        IF NOT has_function_privilege('sluice.kafka_source(text, text, text, text, text, text, bigint, integer[], jsonb, text, boolean, boolean, integer, bigint, interval)', 'EXECUTE') THEN
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
                                   (source->>'include_metadata')::boolean,
                                   (source->>'max_rate_per_partition')::int,
                                   (source->>'min_offsets_per_trigger')::bigint,
                                   coalesce((source->>'max_trigger_delay_ms')::bigint, 900000) * interval '1 millisecond');
    END IF;

    source := sluice.csv_source(source->>'dir', msg, (source->>'header')::boolean, source->>'delimiter',
                                source->>'pattern', (source->>'max_files_per_trigger')::int,
                                source->>'quote', source->>'escape', source->>'null', source->>'encoding',
                                source->>'on_error', source->>'after', source->>'archive_dir',
                                (source->>'settle_ms')::bigint * interval '1 millisecond',
                                (source->>'max_bytes_per_trigger')::bigint);
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

-- what shared memory knows of a pipeline now: why backpressure held it back
-- at its last plan, how many workers the autoscaler wants, and a batch that
-- failed for a while
CREATE FUNCTION sluice._live(pipeline_id int, OUT throttled_by text, OUT desired_workers int,
                             OUT attempts int, OUT next_retry_at timestamptz)
RETURNS record LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sluice_live';

-- which sluice.pipelines shows
CREATE OR REPLACE VIEW sluice.pipelines WITH (security_invoker = true) AS
SELECT p.name,
       p.owner::regrole AS owner,
       p.state,
       p.trigger,
       p.source->>'type' AS source_type,
       sluice._sink(p)->>'target' AS target,
       p.watermark,
       w.pid AS worker_pid,
       w.current_batch AS batch_in_flight,
       last.batch_id AS last_batch_id,
       last.committed_at AS last_batch_at,
       last.input_rows AS last_input_rows,
       round(last.input_rows * 1000.0 / nullif((last.durations->>'total')::numeric, 0), 1)
           AS last_rows_per_second,
       total.batches,
       total.input_rows,
       sluice._backlog(p.id) AS files_pending,
       err.message AS last_error,
       err.at AS last_error_at,
       live.throttled_by,
       w.workers,
       live.desired_workers,
       live.attempts,
       live.next_retry_at,
       round(minute.input_rows / 60.0, 1) AS input_rows_per_second,
       round(minute.input_rows * 1000.0 / nullif(minute.ms, 0), 1) AS processed_rows_per_second,
       sluice._backlog(p.id) AS backlog,
       last.event_time_max - p.watermark AS watermark_lag,
       last.state_rows_total AS state_rows
  FROM sluice.pipeline AS p
  CROSS JOIN LATERAL sluice._live(p.id) AS live
  LEFT JOIN LATERAL (SELECT min(w.pid) AS pid, min(w.current_batch) AS current_batch, count(*) AS workers
                       FROM sluice._workers() AS w WHERE w.pipeline_id = p.id) AS w ON true
  LEFT JOIN LATERAL (SELECT b.batch_id, b.committed_at, b.input_rows, b.durations, b.event_time_max,
                            b.state_rows_total
                       FROM sluice.batch AS b
                      WHERE b.pipeline_id = p.id AND b.status = 'committed'
                      ORDER BY b.batch_id DESC LIMIT 1) AS last ON true
  LEFT JOIN LATERAL (SELECT sum(b.input_rows) AS input_rows, sum((b.durations->>'total')::numeric) AS ms
                       FROM (SELECT x.input_rows, x.durations, x.committed_at FROM sluice.batch AS x
                              WHERE x.pipeline_id = p.id AND x.status = 'committed'
                              ORDER BY x.batch_id DESC LIMIT 6000) AS b   -- batches commit in order
                      WHERE b.committed_at > now() - interval '1 minute') AS minute ON true
  LEFT JOIN LATERAL (SELECT count(*) AS batches, coalesce(sum(b.input_rows), 0) AS input_rows
                       FROM sluice.batch AS b
                      WHERE b.pipeline_id = p.id AND b.status = 'committed') AS total ON true
  LEFT JOIN LATERAL (SELECT e.message, e.at FROM sluice.error AS e
                      WHERE e.pipeline_id = p.id AND e.sqlstate NOT LIKE '01%' AND e.sqlstate <> '00000'
                      ORDER BY e.id DESC LIMIT 1) AS err ON true;

-- alter_pipeline(), and the trigger check it shares with create_pipeline()
-- an interval of 0 or more, or 'available_now'
CREATE FUNCTION sluice._check_trigger(name text, trigger text)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
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
    PERFORM sluice._check_trigger(name, trigger);

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
                               sink->>'output_mode', (sink->>'late_relid')::oid::regclass,
                               (sink->>'session_gap')::interval) END;

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

    new_source := source;
    target := (sink->>'relid')::oid::regclass;
    late_rows := (sink->>'late_relid')::oid::regclass;
    sink_function := (sink->>'fnoid')::oid::regprocedure::text;
    new_sink := sink - ARRAY['target', 'relid', 'late_rows', 'late_relid', 'function', 'fnoid'];
END
$$;

-- What alter_pipeline() may change, checked as the caller, who must own the
-- pipeline: Spark's rules for a restarted query.  Limits per trigger, the
-- trigger, backpressure and a transform with the same output columns may
-- change; the source (its offsets are that source's), the sink, the event
-- time and the watermark delay (window state depends on them) may not.
-- Returns the row's new values.
CREATE FUNCTION sluice._alter_row(pipeline_name text, new_trigger text, new_transform text,
                                  new_backpressure boolean, max_files_per_trigger int,
                                  max_bytes_per_trigger bigint, max_offsets_per_trigger bigint,
                                  max_rate_per_partition int, min_offsets_per_trigger bigint,
                                  max_trigger_delay interval, new_source jsonb, new_sink jsonb,
                                  new_event_time text, new_watermark_delay interval,
                                  new_min_workers int, new_max_workers int,
                                  OUT id int, OUT source jsonb, OUT trigger text, OUT transform text,
                                  OUT backpressure boolean, OUT min_workers int, OUT max_workers int)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p sluice.pipeline;
    limits constant text[] := ARRAY['max_files_per_trigger', 'max_bytes_per_trigger', 'max_offsets_per_trigger',
                                    'max_rate_per_partition', 'min_offsets_per_trigger', 'max_trigger_delay_ms'];
    csv_only constant text[] := ARRAY['max_files_per_trigger', 'max_bytes_per_trigger'];
    given jsonb;
    k text;
    old_cols jsonb;
    new_cols jsonb;
BEGIN
    IF pipeline_name IS NULL THEN
        RAISE EXCEPTION 'the name of a pipeline must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- row-level security: the caller's own pipelines only
    SELECT * INTO p FROM sluice.pipeline AS x WHERE x.name = pipeline_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline "%" does not exist', pipeline_name USING ERRCODE = 'undefined_object';
    END IF;

    -- what may not change
    IF new_source IS NOT NULL AND (new_source - limits) IS DISTINCT FROM (p.source - limits) THEN
        RAISE EXCEPTION 'the source of pipeline "%" cannot change', pipeline_name
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Its offsets are positions in this source; only its limits per trigger may change.',
                  HINT = 'Create a new pipeline for the new source.';
    END IF;
    IF new_sink IS NOT NULL AND new_sink IS DISTINCT FROM sluice._sink(p) THEN
        RAISE EXCEPTION 'the sink of pipeline "%" cannot change', pipeline_name
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'What its committed batches wrote, and any window state, belong to this sink.',
                  HINT = 'Create a new pipeline for the new sink.';
    END IF;
    IF new_event_time IS NOT NULL AND new_event_time IS DISTINCT FROM p.event_time
       OR new_watermark_delay IS NOT NULL AND new_watermark_delay IS DISTINCT FROM p.watermark_delay THEN
        RAISE EXCEPTION 'the event time and the watermark delay of pipeline "%" cannot change', pipeline_name
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Its watermark and window state were made with them.',
                  HINT = 'Create a new pipeline.';
    END IF;

    -- limits per trigger: from the given source, then the parameters (0: no limit)
    source := p.source;
    IF new_source IS NOT NULL THEN
        source := source || (SELECT coalesce(jsonb_object_agg(l, new_source->l), '{}')
                               FROM unnest(limits) AS l WHERE new_source ? l);
    END IF;
    given := jsonb_strip_nulls(jsonb_build_object(
        'max_files_per_trigger', max_files_per_trigger, 'max_bytes_per_trigger', max_bytes_per_trigger,
        'max_offsets_per_trigger', max_offsets_per_trigger, 'max_rate_per_partition', max_rate_per_partition,
        'min_offsets_per_trigger', min_offsets_per_trigger,
        'max_trigger_delay_ms', (extract(epoch FROM max_trigger_delay) * 1000)::bigint));
    FOR k IN SELECT jsonb_object_keys(given) LOOP
        IF (k = ANY (csv_only)) <> (p.source->>'type' = 'csv') THEN
            RAISE EXCEPTION '% is not a limit of a % source', k, p.source->>'type'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF (given->>k)::bigint < 0 THEN
            RAISE EXCEPTION '% must not be negative', k USING ERRCODE = 'invalid_parameter_value',
                  HINT = '0 takes the limit away.';
        END IF;
        source := jsonb_set(source, ARRAY[k], CASE WHEN (given->>k)::bigint = 0 AND k <> 'max_trigger_delay_ms'
                                                   THEN 'null' ELSE given->k END);
    END LOOP;
    -- checked by the source's constructor, as create_pipeline() does
    source := sluice._rebuild_source(pipeline_name, source);

    trigger := coalesce(new_trigger, p.trigger);
    PERFORM sluice._check_trigger(pipeline_name, trigger);
    backpressure := coalesce(new_backpressure, p.backpressure);
    min_workers := coalesce(new_min_workers, p.min_workers);   -- checked by alter_pipeline()
    max_workers := coalesce(new_max_workers, p.max_workers);

    -- a transform that gives the sink the same columns ('' for none)
    transform := CASE WHEN new_transform IS NULL THEN p.transform WHEN new_transform = '' THEN NULL
                      ELSE new_transform END;
    IF transform IS DISTINCT FROM p.transform THEN
        old_cols := CASE WHEN p.transform IS NULL THEN p.source->'columns'
                         ELSE sluice._transform_columns(pipeline_name, p.source, p.transform) END;
        new_cols := CASE WHEN transform IS NULL THEN source->'columns'
                         ELSE sluice._transform_columns(pipeline_name, source, transform) END;
        IF new_cols IS DISTINCT FROM old_cols THEN
            RAISE EXCEPTION 'a new transform of pipeline "%" must give the sink the same columns', pipeline_name
                USING ERRCODE = 'feature_not_supported',
                      DETAIL = format('The sink receives %s; the transform gives %s.',
                                      (SELECT string_agg(format('%I %s', c->>'name', c->>'type'), ', ')
                                         FROM jsonb_array_elements(old_cols) AS c),
                                      (SELECT string_agg(format('%I %s', c->>'name', c->>'type'), ', ')
                                         FROM jsonb_array_elements(new_cols) AS c)),
                      HINT = 'Create a new pipeline for other columns.';
        END IF;
    END IF;
    id := p.id;
END
$$;

CREATE FUNCTION sluice.alter_pipeline(name text,
                                      trigger text DEFAULT NULL,
                                      transform text DEFAULT NULL,
                                      backpressure boolean DEFAULT NULL,
                                      max_files_per_trigger int DEFAULT NULL,
                                      max_bytes_per_trigger bigint DEFAULT NULL,
                                      max_offsets_per_trigger bigint DEFAULT NULL,
                                      max_rate_per_partition int DEFAULT NULL,
                                      min_offsets_per_trigger bigint DEFAULT NULL,
                                      max_trigger_delay interval DEFAULT NULL,
                                      source jsonb DEFAULT NULL,
                                      sink jsonb DEFAULT NULL,
                                      event_time text DEFAULT NULL,
                                      watermark_delay interval DEFAULT NULL,
                                      min_workers int DEFAULT NULL,
                                      max_workers int DEFAULT NULL)
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_alter_pipeline';
COMMENT ON FUNCTION sluice.alter_pipeline IS 'change what a pipeline may change (NULL: unchanged): limits per trigger, trigger, backpressure, worker counts, a same-shape transform';

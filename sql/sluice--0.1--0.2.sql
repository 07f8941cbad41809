\echo Use "ALTER EXTENSION sluice UPDATE TO '0.2'" to load this file. \quit

-- 0.1 -> 0.2: the catalog becomes read-only to users, keeps tables and
-- functions as regclass and signatures so pg_dump writes names, and is
-- dumped by pg_dump.  Offsets, batches, files and window state are kept.

-- 0.1's CREATE EXTENSION made the schema outside the extension.  0.2 keeps
-- the extension in pg_catalog and its schema as a member, as a fresh install
-- does, so that pg_dump and DROP EXTENSION treat both alike.
-- 0.1 would have adopted a schema that another role made first: take in
-- only one that belongs to the extension's owner
DO $$
DECLARE
    squatter text := (SELECT n.nspowner::regrole::text FROM pg_catalog.pg_namespace n, pg_catalog.pg_extension e
                       WHERE n.nspname = 'sluice' AND e.extname = 'sluice' AND n.nspowner <> e.extowner);
BEGIN
    IF squatter IS NOT NULL THEN
        RAISE EXCEPTION 'schema "sluice" belongs to role %, not to the owner of extension "sluice"', squatter
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'Sluice 0.1 used a schema "sluice" that existed before it; 0.2 takes only its own.',
                  HINT = 'Check what the schema holds, then ALTER SCHEMA sluice OWNER TO the extension''s owner and update again.';
    END IF;
END
$$;
UPDATE pg_catalog.pg_extension SET extnamespace = 'pg_catalog'::regnamespace WHERE extname = 'sluice';
DELETE FROM pg_catalog.pg_depend
 WHERE classid = 'pg_catalog.pg_extension'::regclass
   AND objid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'sluice')
   AND refclassid = 'pg_catalog.pg_namespace'::regclass AND refobjid = 'sluice'::regnamespace;
ALTER EXTENSION sluice ADD SCHEMA sluice;
COMMENT ON SCHEMA sluice IS 'sluice: exactly-once streaming pipelines';

DROP VIEW sluice.pipelines;

-- what a sink writes moves out of its jsonb into typed columns
ALTER TABLE sluice.pipeline ADD COLUMN target regclass, ADD COLUMN late_rows regclass,
                            ADD COLUMN sink_function text;
SET LOCAL search_path = pg_catalog, pg_temp;    -- signatures come out schema-qualified
UPDATE sluice.pipeline
   SET target = (sink->>'relid')::oid::regclass,
       late_rows = (sink->>'late_relid')::oid::regclass,
       sink_function = (sink->>'fnoid')::oid::regprocedure::text,
       sink = sink - ARRAY['target', 'relid', 'late_rows', 'late_relid', 'function', 'fnoid'];
ALTER TABLE sluice.pipeline ALTER COLUMN state_table TYPE regclass USING state_table::regclass;
ALTER TABLE sluice.pipeline ADD COLUMN committed_batch bigint NOT NULL DEFAULT 0;
UPDATE sluice.pipeline p
   SET committed_batch = coalesce((SELECT max(b.batch_id) FROM sluice.batch b
                                    WHERE b.pipeline_id = p.id AND b.status = 'committed'), 0);

DROP POLICY owner_only ON sluice.pipeline;
DROP POLICY owner_only ON sluice.batch;
DROP POLICY owner_only ON sluice.file;
DROP POLICY owner_only ON sluice.error;
DROP POLICY owner_only ON sluice.reject;
ALTER TABLE sluice.pipeline ALTER COLUMN owner DROP DEFAULT,
                            ALTER COLUMN owner TYPE regrole USING owner::regrole;
CREATE POLICY owner_only ON sluice.pipeline FOR SELECT USING (owner = current_user::regrole);
CREATE POLICY owner_only ON sluice.batch FOR SELECT USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
CREATE POLICY owner_only ON sluice.file FOR SELECT USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
CREATE POLICY owner_only ON sluice.error FOR SELECT USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
CREATE POLICY owner_only ON sluice.reject FOR SELECT USING (pipeline_id IN (SELECT id FROM sluice.pipeline));

REVOKE ALL ON sluice.pipeline, sluice.batch, sluice.file, sluice.error, sluice.reject FROM PUBLIC;
REVOKE ALL ON SEQUENCE sluice.pipeline_id_seq, sluice.error_id_seq, sluice.reject_id_seq FROM PUBLIC;
GRANT SELECT ON sluice.pipeline, sluice.batch, sluice.file, sluice.error, sluice.reject TO PUBLIC;
-- readable for pg_dump --enable-row-security by users, who see their own rows
GRANT SELECT ON SEQUENCE sluice.pipeline_id_seq, sluice.error_id_seq, sluice.reject_id_seq TO PUBLIC;

-- pg_dump keeps the pipelines, their offsets and their logs
SELECT pg_catalog.pg_extension_config_dump('sluice.pipeline', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.pipeline_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.batch', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.file', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.error', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.error_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.reject', '');
SELECT pg_catalog.pg_extension_config_dump('sluice.reject_id_seq', '');

-- functions whose signature or language changed
DROP FUNCTION sluice._window_create_state(int, jsonb, jsonb);
DROP FUNCTION sluice._window_write(bigint, int, regclass);
DROP FUNCTION sluice.create_pipeline(text, jsonb, jsonb, text, text, text, interval);
DROP FUNCTION sluice._set_state(text, text);
DROP FUNCTION sluice._workers();
-- C builds the statements now
DROP FUNCTION sluice._files_pending(sluice.pipeline);
DROP FUNCTION sluice._sink_sql(jsonb, regclass, boolean);
DROP FUNCTION sluice._stage_sql(jsonb);

CREATE FUNCTION sluice._workers(OUT pipeline_id int, OUT pid int, OUT batches bigint,
                                OUT current_batch bigint)
RETURNS SETOF record LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_workers';

-- what a pipeline's source had left at its last plan (shared memory)
CREATE FUNCTION sluice._backlog(pipeline_id int)
RETURNS bigint LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sluice_backlog';

-- a table a pipeline writes into cannot be dropped while the pipeline exists
CREATE FUNCTION sluice._on_drop()
RETURNS event_trigger LANGUAGE C
AS 'MODULE_PATHNAME', 'sluice_on_drop';

CREATE EVENT TRIGGER sluice_on_drop ON sql_drop EXECUTE FUNCTION sluice._on_drop();

-- the staging table "batch" of a source, as the worker makes it
CREATE FUNCTION sluice._create_stage(source jsonb)
RETURNS regclass LANGUAGE C VOLATILE STRICT
AS 'MODULE_PATHNAME', 'sluice_create_stage';

-- the slice of a batch, as its source describes it
CREATE FUNCTION sluice._batch_offsets(pipeline_id int, batch_id bigint)
RETURNS jsonb LANGUAGE C STABLE STRICT
AS 'MODULE_PATHNAME', 'sluice_batch_offsets';

-- a pipeline's sink as the sink functions describe it, from its typed columns
CREATE FUNCTION sluice._sink(p sluice.pipeline)
RETURNS jsonb LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.sink || jsonb_strip_nulls(jsonb_build_object(
        'target', p.target::text, 'relid', p.target::oid,
        'late_rows', p.late_rows::text, 'late_relid', p.late_rows::oid,
        'function', p.sink_function, 'fnoid', to_regprocedure(p.sink_function)::oid))
$$;
CREATE OR REPLACE FUNCTION sluice.function_sink(fn regprocedure)
RETURNS jsonb LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT coalesce((SELECT prokind = 'f' AND pronargs = 2 AND proargtypes[0] = 'bigint'::regtype
                   AND proargtypes[1] = 'regclass'::regtype
              FROM pg_proc WHERE oid = fn), false) THEN
        RAISE EXCEPTION 'function % cannot be a function sink', fn
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A function sink is a function (not a procedure) taking (batch_id bigint, batch regclass).';
    END IF;
    RETURN jsonb_build_object('type', 'function', 'function', fn::text, 'fnoid', fn::oid);
END
$$;
-- the columns a transform returns, found by planning it over an empty
-- "batch"; the temporary tables go away with the block's subtransaction
CREATE OR REPLACE FUNCTION sluice._transform_columns(pipeline_name text, source jsonb, transform text)
RETURNS jsonb LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols jsonb;
    msg text;
    det text;
BEGIN
    BEGIN
        PERFORM sluice._check_query(transform);
        PERFORM sluice._create_stage(source);
        msg := format('CREATE TEMP TABLE batch_out ON COMMIT DROP AS SELECT * FROM (%s) AS q LIMIT 0', transform);
        -- the worker runs the transform with the owner's default search_path,
        -- pg_temp first so that "batch" is the staging table; only the
        -- transform itself: nothing of ours is resolved in between
        PERFORM pg_catalog.set_config('search_path',
                                      'pg_temp, ' || (SELECT reset_val FROM pg_settings WHERE name = 'search_path'), true);
        EXECUTE msg;
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        SELECT jsonb_agg(jsonb_build_object('name', attname, 'type', format_type(atttypid, atttypmod))
                         ORDER BY attnum) INTO cols
          FROM pg_attribute
         WHERE attrelid = 'pg_temp.batch_out'::regclass AND attnum > 0 AND NOT attisdropped;
        RAISE EXCEPTION USING ERRCODE = 'SLU01';
    EXCEPTION
        WHEN SQLSTATE 'SLU01' THEN
            NULL;
        WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            RAISE EXCEPTION 'invalid transform for pipeline "%"', pipeline_name
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = msg,
                      HINT = 'A transform is a query over the relation "batch", which has the source''s columns.';
    END;
    RETURN cols;
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
           jsonb_build_object('log_offset', b.batch_id - 1),
           sluice._batch_offsets(b.pipeline_id, b.batch_id),
           b.planned_at, b.committed_at
      FROM sluice.batch AS b
     WHERE b.pipeline_id = pid
     ORDER BY b.batch_id DESC
     LIMIT progress.n;
END
$$;
-- the state table of a window pipeline, beside its target: one row per
-- window and group, holding partial aggregates
CREATE FUNCTION sluice._window_create_state(pipeline_id int, pipeline_name text, sink jsonb, cols jsonb)
RETURNS regclass LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl text := format('%I.%I', (SELECT nspname FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid
                                  WHERE c.oid = (sink->>'relid')::oid),
                   CASE WHEN octet_length('sluice_state_' || pipeline_name) <= 63 THEN 'sluice_state_' || pipeline_name
                        ELSE format('sluice_state_%s_%s', left(pipeline_name, 30), pipeline_id) END);
    groups text := (SELECT string_agg(format('%I %s, ', g, (SELECT x->>'type' FROM jsonb_array_elements(cols) x
                                                               WHERE x->>'name' = g)), '' ORDER BY o)
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
-- One batch into a window sink, in the batch transaction: drop late
-- (row, window) pairs, merge the rest into the state, move the watermark,
-- write the output mode's windows and evict state the watermark passed.
-- Runs as the pipeline's owner and writes no catalog row: the worker, which
-- holds the pipeline's row lock, stores what this returns.
CREATE FUNCTION sluice._window_write(batch_no bigint, sk jsonb, state_table regclass, event_time text,
                                     watermark_delay interval, w timestamptz, input regclass,
                                     OUT written bigint, OUT new_w timestamptz,
                                     OUT et_min timestamptz, OUT et_max timestamptz, OUT dropped bigint,
                                     OUT total bigint, OUT updated bigint, OUT removed bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a record;
    et text;
    mode text;
    groups text;
    gsel text;
    gjoin text;
    late text;
    late_cols text;
    size_iv text;
    pairs text;
    agg text;
    lr text;
    closes text;
BEGIN
    removed := 0;
    written := 0;
    mode := sk->>'output_mode';
    -- a fixed duration: '1 day' in a time zone with daylight saving is not 24 hours
    size_iv := (sk->>'size_s') || ' seconds';
    et := format('%I::timestamptz', event_time);
    a := sluice._window_aggs(sk, NULL);
    SELECT string_agg(quote_ident(g), ', '), string_agg(format('t.%I IS NOT DISTINCT FROM s.%1$I', g), ' AND ')
      INTO groups, gjoin FROM jsonb_array_elements_text(sk->'group_by') AS g;
    gsel := coalesce(groups || ', ', '');
    late := CASE WHEN w IS NULL OR mode = 'complete' THEN 'sluice_ws IS NULL'
                 ELSE format('(sluice_ws IS NULL OR sluice_ws + %L::interval <= %L::timestamptz)', size_iv, w) END;

    SELECT string_agg(', ' || quote_ident(l.attname), '') INTO late_cols
      FROM pg_attribute l
     WHERE l.attrelid = (sk->>'late_relid')::oid AND l.attnum > 0 AND NOT l.attisdropped
       AND l.attname NOT IN ('batch_id', 'watermark')
       AND l.attname IN (SELECT attname FROM pg_attribute WHERE attrelid = input AND attnum > 0);

    -- the watermark the batch leaves, first: append mode writes the windows
    -- it closes straight to the target instead of through the state
    EXECUTE format('SELECT min(%1$s), max(%1$s) FROM %2$s', et, input) INTO et_min, et_max;
    new_w := CASE WHEN watermark_delay IS NULL THEN w
                  ELSE greatest(w, et_max - watermark_delay) END;

    -- (row, window) pairs: one window per row when tumbling
    pairs := format('pairs AS MATERIALIZED (SELECT b.*, b.ctid AS sluice_ctid, w.ws AS sluice_ws FROM %s AS b, %s)',
                    input,
                    CASE WHEN sk->>'slide_s' = sk->>'size_s'
                         THEN format('LATERAL (SELECT to_timestamp(floor(extract(epoch FROM %s) / %s) * %2$s) AS ws) AS w',
                                     et, sk->>'size_s')
                         ELSE format('LATERAL (SELECT (SELECT NULL::timestamptz WHERE %1$s IS NULL) AS ws'
                                     ' UNION ALL SELECT to_timestamp((floor(extract(epoch FROM %1$s) / %2$s) - k) * %2$s)'
                                     ' FROM generate_series(0, ceil(%3$s / %2$s)::int - 1) AS k'
                                     ' WHERE to_timestamp((floor(extract(epoch FROM %1$s) / %2$s) - k) * %2$s) + %4$L::interval > %1$s) AS w'
                                     ' WHERE w.ws IS NOT NULL OR %1$s IS NULL',
                                     et, sk->>'slide_s', sk->>'size_s', size_iv) END);
    agg := format('agg (window_start, window_end, %1$s %2$s) AS (SELECT sluice_ws, sluice_ws + %3$L::interval, %1$s %4$s'
                  ' FROM pairs WHERE NOT %5$s GROUP BY sluice_ws %6$s)',
                  gsel, a.part_names, size_iv, a.partials, late, coalesce(', ' || groups, ''));
    lr := CASE WHEN sk->>'late_relid' IS NULL THEN ''
               ELSE format(', lr AS (INSERT INTO %s (batch_id, watermark %s)'
                           ' SELECT DISTINCT ON (sluice_ctid) %s, %L::timestamptz %s FROM pairs WHERE %s RETURNING 1)',
                           (sk->>'late_relid')::oid::regclass, coalesce(late_cols, ''), batch_no, w,
                           coalesce(late_cols, ''), late) END;
    closes := format('window_end <= %L::timestamptz', new_w);

    IF mode = 'append' THEN
        -- windows closing now: this batch's, merged with their state; the rest
        -- go to the state
        EXECUTE format(
            'WITH %1$s, %2$s,'
            ' old AS (DELETE FROM %3$s WHERE %4$s RETURNING window_start, window_end, %5$s %6$s),'
            ' closing (window_start, window_end, %5$s %6$s) AS (SELECT window_start, window_end, %5$s %7$s FROM'
            '   (SELECT * FROM agg WHERE %4$s UNION ALL SELECT * FROM old) AS u GROUP BY window_start, window_end %8$s),'
            ' emit AS (INSERT INTO %9$s (window_start, window_end, %5$s %10$s)'
            '   SELECT window_start, window_end, %5$s %11$s FROM closing RETURNING 1),'
            ' up AS (INSERT INTO %3$s AS s (window_start, window_end, %5$s %6$s, sluice_batch)'
            '   SELECT window_start, window_end, %5$s %6$s, %12$s FROM agg WHERE NOT coalesce(%4$s, false)'
            '   ON CONFLICT (window_start, window_end %8$s) DO UPDATE SET %13$s, sluice_batch = excluded.sluice_batch'
            '   RETURNING 1)'
            ' %14$s'
            ' SELECT (SELECT count(*) FROM pairs WHERE %15$s), (SELECT count(*) FROM agg), (SELECT count(*) FROM emit)',
            pairs, agg, state_table, closes, gsel, a.part_names, a.combines, coalesce(', ' || groups, ''),
            (sk->>'relid')::oid::regclass, a.names, a.finals, batch_no, a.merges, lr, late)
          INTO dropped, updated, written;
        removed := written;
    ELSE
        EXECUTE format(
            'WITH %1$s, %2$s,'
            ' up AS (INSERT INTO %3$s AS s (window_start, window_end, %4$s %5$s, sluice_batch)'
            '   SELECT window_start, window_end, %4$s %5$s, %6$s FROM agg'
            '   ON CONFLICT (window_start, window_end %7$s) DO UPDATE SET %8$s, sluice_batch = excluded.sluice_batch'
            '   RETURNING 1)'
            ' %9$s'
            ' SELECT (SELECT count(*) FROM pairs WHERE %10$s), (SELECT count(*) FROM up)',
            pairs, agg, state_table, gsel, a.part_names, batch_no, coalesce(', ' || groups, ''), a.merges,
            lr, late)
          INTO dropped, updated;
    END IF;

    IF mode = 'update' THEN
        EXECUTE format('MERGE INTO %1$s AS t USING (SELECT window_start, window_end, %2$s %3$s FROM %4$s WHERE sluice_batch = %5$s)'
                       ' AS s(window_start, window_end, %2$s %6$s)'
                       ' ON t.window_start = s.window_start AND t.window_end = s.window_end %7$s'
                       ' WHEN MATCHED THEN UPDATE SET %8$s'
                       ' WHEN NOT MATCHED THEN INSERT (window_start, window_end, %2$s %6$s)'
                       ' VALUES (s.window_start, s.window_end, %9$s %10$s)',
                       (sk->>'relid')::oid::regclass, gsel, a.finals, state_table, batch_no, a.names,
                       coalesce(' AND ' || gjoin, ''),
                       (SELECT string_agg(format('%s = s.%1$s', n), ', ') FROM regexp_split_to_table(a.names, ', ') n),
                       (SELECT coalesce(string_agg('s.' || quote_ident(g) || ', ', ''), '')
                          FROM jsonb_array_elements_text(sk->'group_by') g),
                       (SELECT string_agg('s.' || n, ', ') FROM regexp_split_to_table(a.names, ', ') n));
        GET DIAGNOSTICS written = ROW_COUNT;
        IF new_w IS NOT NULL THEN
            EXECUTE format('DELETE FROM %s WHERE window_end <= %L::timestamptz', state_table, new_w);
            GET DIAGNOSTICS removed = ROW_COUNT;
        END IF;
    ELSIF mode = 'complete' THEN
        EXECUTE format('DELETE FROM %s', (sk->>'relid')::oid::regclass);
        EXECUTE format('INSERT INTO %s (window_start, window_end, %s %s) SELECT window_start, window_end, %s %s FROM %s',
                       (sk->>'relid')::oid::regclass, gsel, a.names, gsel, a.finals, state_table);
        GET DIAGNOSTICS written = ROW_COUNT;
    END IF;

    EXECUTE format('SELECT count(*) FROM %s', state_table) INTO total;
END
$$;
-- Checks a new pipeline as its caller would create it, and returns the
-- catalog values for it; writes nothing.  sluice.create_pipeline() (in C)
-- stores them as the extension's owner.  A source or sink description is
-- built again by its function, so one written by hand is checked the same.
CREATE FUNCTION sluice._pipeline_row(name text, source jsonb, sink jsonb, trigger text, transform text,
                                     event_time text, watermark_delay interval,
                                     OUT new_source jsonb, OUT new_sink jsonb, OUT target regclass,
                                     OUT late_rows regclass, OUT sink_function text, OUT cols jsonb)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    msg text;
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

    IF source->>'type' IS DISTINCT FROM 'csv' THEN
        RAISE EXCEPTION 'invalid source for pipeline "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Describe the source with sluice.csv_source().';
    END IF;
    BEGIN
        cols := source->'columns';
        msg := (SELECT string_agg(format('%I %s', c->>'name', c->>'type'), ', ')
                  FROM jsonb_array_elements(cols) AS c);
    EXCEPTION WHEN OTHERS THEN
        msg := NULL;
    END;
    IF msg IS NULL THEN
        RAISE EXCEPTION 'invalid source for pipeline "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The source has no list of columns.',
                  HINT = 'Describe the source with sluice.csv_source().';
    END IF;
    source := sluice.csv_source(source->>'dir', msg, (source->>'header')::boolean, source->>'delimiter',
                                source->>'pattern', (source->>'max_files_per_trigger')::int,
                                source->>'quote', source->>'escape', source->>'null', source->>'encoding',
                                source->>'on_error', source->>'after', source->>'archive_dir',
                                (source->>'settle_ms')::bigint * interval '1 millisecond');
    cols := source->'columns';
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
CREATE FUNCTION sluice.create_pipeline(name text, source jsonb, sink jsonb,
                                       trigger text DEFAULT '1 second',
                                       transform text DEFAULT NULL,
                                       event_time text DEFAULT NULL,
                                       watermark_delay interval DEFAULT NULL)
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_create_pipeline';
COMMENT ON FUNCTION sluice.create_pipeline IS 'create a stopped pipeline from a source, through an optional transform, to a sink';

-- set a pipeline's state (NULL: drop it) and wake the launcher at commit
CREATE FUNCTION sluice._set_state(pipeline_name text, new_state text)
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_set_state';

CREATE VIEW sluice.pipelines WITH (security_invoker = true) AS
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
       err.at AS last_error_at
  FROM sluice.pipeline AS p
  LEFT JOIN sluice._workers() AS w ON w.pipeline_id = p.id
  LEFT JOIN LATERAL (SELECT b.batch_id, b.committed_at, b.input_rows, b.durations
                       FROM sluice.batch AS b
                      WHERE b.pipeline_id = p.id AND b.status = 'committed'
                      ORDER BY b.batch_id DESC LIMIT 1) AS last ON true
  LEFT JOIN LATERAL (SELECT count(*) AS batches, coalesce(sum(b.input_rows), 0) AS input_rows
                       FROM sluice.batch AS b
                      WHERE b.pipeline_id = p.id AND b.status = 'committed') AS total ON true
  LEFT JOIN LATERAL (SELECT e.message, e.at FROM sluice.error AS e
                      WHERE e.pipeline_id = p.id AND e.sqlstate NOT LIKE '01%'
                      ORDER BY e.id DESC LIMIT 1) AS err ON true;
COMMENT ON VIEW sluice.pipelines IS 'one row per pipeline: state, worker, last batch, backlog, last failure';

GRANT SELECT ON sluice.pipelines TO PUBLIC;

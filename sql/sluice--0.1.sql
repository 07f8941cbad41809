\echo Use "CREATE EXTENSION sluice" to load this file. \quit

-- The catalog.  Plain, WAL-logged tables: the batch transaction writes the
-- sink rows and these offsets together, which is what makes recovery exact.

CREATE TABLE sluice.pipeline (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> '' AND length(name) <= 63),
    owner       oid NOT NULL DEFAULT current_user::regrole::oid,
    source      jsonb NOT NULL,
    sink        jsonb NOT NULL,
    trigger     text NOT NULL,
    transform   text,
    state       text NOT NULL DEFAULT 'stopped' CHECK (state IN ('running', 'stopped', 'failed')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE sluice.pipeline IS 'sluice pipelines; state is the desired state, or failed';

-- the offset log and the commit log in one: a batch is planned (its slice
-- is fixed) before it is read, and committed with its sink rows
CREATE TABLE sluice.batch (
    pipeline_id  int NOT NULL REFERENCES sluice.pipeline ON DELETE CASCADE,
    batch_id     bigint NOT NULL,
    status       text NOT NULL CHECK (status IN ('planned', 'committed')),
    attempts     int NOT NULL DEFAULT 1,
    planned_at   timestamptz NOT NULL,
    committed_at timestamptz,
    files        int,
    input_rows   bigint,
    sink_rows    bigint,
    rejected_rows bigint,
    bytes        bigint,
    durations    jsonb,
    PRIMARY KEY (pipeline_id, batch_id)
);
CREATE INDEX batch_planned ON sluice.batch (pipeline_id, batch_id) WHERE status = 'planned';

-- the processed-file log: a file belongs to the batch that claimed it
CREATE TABLE sluice.file (
    pipeline_id int NOT NULL REFERENCES sluice.pipeline ON DELETE CASCADE,
    path        text NOT NULL,
    size        bigint NOT NULL,
    mtime       timestamptz NOT NULL,
    batch_id    bigint NOT NULL,
    committed   boolean NOT NULL DEFAULT false,
    changed_at  timestamptz,
    PRIMARY KEY (pipeline_id, path)
);
CREATE INDEX file_batch ON sluice.file (pipeline_id, batch_id);

-- rows that a batch with on_error => 'reject' set aside, committed with it
CREATE TABLE sluice.reject (
    id          bigserial PRIMARY KEY,
    pipeline_id int NOT NULL REFERENCES sluice.pipeline ON DELETE CASCADE,
    batch_id    bigint NOT NULL,
    file        text,
    line        bigint,
    raw_line    text,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reject_pipeline ON sluice.reject (pipeline_id, batch_id);

CREATE TABLE sluice.error (
    id          bigserial PRIMARY KEY,
    pipeline_id int NOT NULL REFERENCES sluice.pipeline ON DELETE CASCADE,
    batch_id    bigint,
    sqlstate    text NOT NULL,
    message     text NOT NULL,
    detail      text,
    hint        text,
    context     text,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX error_pipeline ON sluice.error (pipeline_id, id);

-- A user sees and controls only the pipelines they own (superusers: all).
-- Workers run as the owner, so the same policies let them write their own.
ALTER TABLE sluice.pipeline ENABLE ROW LEVEL SECURITY;
ALTER TABLE sluice.batch ENABLE ROW LEVEL SECURITY;
ALTER TABLE sluice.file ENABLE ROW LEVEL SECURITY;
ALTER TABLE sluice.error ENABLE ROW LEVEL SECURITY;
ALTER TABLE sluice.reject ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner_only ON sluice.pipeline USING (owner = current_user::regrole::oid);
CREATE POLICY owner_only ON sluice.batch USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
CREATE POLICY owner_only ON sluice.file USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
CREATE POLICY owner_only ON sluice.error USING (pipeline_id IN (SELECT id FROM sluice.pipeline));
CREATE POLICY owner_only ON sluice.reject USING (pipeline_id IN (SELECT id FROM sluice.pipeline));

GRANT USAGE ON SCHEMA sluice TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON sluice.pipeline, sluice.batch, sluice.file, sluice.error,
                                        sluice.reject TO PUBLIC;
GRANT USAGE ON SEQUENCE sluice.pipeline_id_seq, sluice.error_id_seq, sluice.reject_id_seq TO PUBLIC;

-- Internal helpers written in C.

CREATE FUNCTION sluice._parse_columns(columns text, OUT name text, OUT type text)
RETURNS SETOF record LANGUAGE C STRICT STABLE
AS 'MODULE_PATHNAME', 'sluice_parse_columns';

CREATE FUNCTION sluice._check_csv_options(header boolean, delimiter text, quote text,
                                          escape text, null_string text, encoding text)
RETURNS void LANGUAGE C STABLE
AS 'MODULE_PATHNAME', 'sluice_check_csv_options';

CREATE FUNCTION sluice._check_query(query text)
RETURNS void LANGUAGE C STRICT IMMUTABLE
AS 'MODULE_PATHNAME', 'sluice_check_query';

CREATE FUNCTION sluice._check_directory(dir text)
RETURNS void LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'sluice_check_directory';

CREATE FUNCTION sluice._list_files(dir text, pattern text,
                                   OUT path text, OUT size bigint, OUT mtime timestamptz)
RETURNS SETOF record LANGUAGE C STRICT VOLATILE
AS 'MODULE_PATHNAME', 'sluice_list_files';

CREATE FUNCTION sluice._wake()
RETURNS void LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_wake';

CREATE FUNCTION sluice._workers(OUT pipeline_id int, OUT pid int, OUT batches bigint,
                                OUT current_batch bigint, OUT files_pending int)
RETURNS SETOF record LANGUAGE C VOLATILE
AS 'MODULE_PATHNAME', 'sluice_workers';

-- files in the source directory that no committed batch has read; NULL if
-- the directory cannot be listed by the caller
CREATE FUNCTION sluice._files_pending(p sluice.pipeline)
RETURNS bigint LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p.source->>'type' <> 'csv' THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT count(*)
              FROM sluice._list_files(p.source->>'dir', p.source->>'pattern') AS l
             WHERE NOT EXISTS (SELECT 1 FROM sluice.file AS f
                                WHERE f.pipeline_id = p.id AND f.path = l.path AND f.committed));
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

-- Sources and sinks: descriptions as jsonb, checked where they can be.

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
    settle_time interval DEFAULT '0 seconds')
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
        'on_error', on_error,
        'after', after,
        'archive_dir', CASE WHEN archive_dir = '/' THEN archive_dir ELSE rtrim(archive_dir, '/') END,
        'settle_ms', (extract(epoch FROM settle_time) * 1000)::bigint);
END
$$;
COMMENT ON FUNCTION sluice.csv_source IS 'a source reading the CSV files of a server directory, oldest first';

CREATE FUNCTION sluice.append_sink(target regclass)
RETURNS jsonb LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object('type', 'append', 'target', target::text, 'relid', target::oid)
$$;
COMMENT ON FUNCTION sluice.append_sink IS 'a sink appending every row to a table, exactly once';

CREATE FUNCTION sluice.merge_sink(target regclass, key text[], on_match text DEFAULT 'update')
RETURNS jsonb LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF target IS NULL OR key IS NULL OR on_match IS NULL THEN
        RAISE EXCEPTION 'target, key and on_match of a merge sink must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cardinality(key) = 0 OR array_position(key, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'the key of a merge sink needs at least one column, and no null'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF on_match NOT IN ('update', 'ignore') THEN
        RAISE EXCEPTION 'invalid on_match "%"', on_match
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use ''update'' (the latest row wins) or ''ignore'' (a row already in the target stays as it is).';
    END IF;
    RETURN jsonb_build_object('type', 'merge', 'target', target::text, 'relid', target::oid,
                              'key', to_jsonb(key), 'on_match', on_match);
END
$$;
COMMENT ON FUNCTION sluice.merge_sink IS 'a sink upserting rows by key with MERGE; replays and duplicates change nothing';

CREATE FUNCTION sluice.function_sink(fn regprocedure)
RETURNS jsonb LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT (SELECT prokind = 'f' AND pronargs = 2 AND proargtypes[0] = 'bigint'::regtype
                   AND proargtypes[1] = 'regclass'::regtype
              FROM pg_proc WHERE oid = fn) THEN
        RAISE EXCEPTION 'function % cannot be a function sink', fn
            USING ERRCODE = 'wrong_object_type',
                  DETAIL = 'A function sink is a function (not a procedure) taking (batch_id bigint, batch regclass).';
    END IF;
    RETURN jsonb_build_object('type', 'function', 'function', fn::text, 'fnoid', fn::oid);
END
$$;
COMMENT ON FUNCTION sluice.function_sink IS 'a sink calling fn(batch_id bigint, batch regclass) in the batch transaction';

-- the statement that creates the staging table "batch" of a source, in the worker
CREATE FUNCTION sluice._stage_sql(source jsonb)
RETURNS text LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT format('CREATE TEMP TABLE batch (%s) ON COMMIT DROP',
                  string_agg(format('%I %s', c->>'name', c->>'type'), ', ' ORDER BY o))
      FROM jsonb_array_elements(source->'columns') WITH ORDINALITY AS x(c, o)
$$;

-- the statement that writes the relation "input" to a sink; $1 is the batch
-- id; with one_row, only the row whose ctid is $2
CREATE FUNCTION sluice._sink_sql(sink jsonb, input regclass, one_row boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols text[];
    keys text[];
    target text := format('%s', (sink->>'relid')::oid::regclass);
    rows text := format('%s%s', input, CASE WHEN one_row THEN ' WHERE ctid = $2' ELSE '' END);
BEGIN
    SELECT array_agg(quote_ident(attname::text) ORDER BY attnum) INTO cols
      FROM pg_attribute WHERE attrelid = input AND attnum > 0 AND NOT attisdropped;
    CASE sink->>'type'
    WHEN 'append' THEN
        RETURN format('INSERT INTO %1$s (%2$s) SELECT %2$s FROM %3$s', target, array_to_string(cols, ', '), rows);
    WHEN 'merge' THEN
        SELECT array_agg(quote_ident(k)) INTO keys FROM jsonb_array_elements_text(sink->'key') AS k;
        -- the last row of a key in file and line order (the staging table's)
        -- wins; a null key raises in the select list, where the planner
        -- takes it for no filter; an unchanged row is not written again
        RETURN format('MERGE INTO %1$s AS t USING (SELECT DISTINCT ON (%2$s) *, CASE %8$s END AS sluice_null_key'
                      ' FROM %3$s ORDER BY %2$s, ctid DESC) AS s'
                      ' ON %4$s WHEN MATCHED %5$s WHEN NOT MATCHED THEN INSERT (%6$s) VALUES (%7$s)',
                      target, array_to_string(keys, ', '), rows,
                      (SELECT string_agg(format('t.%s = s.%1$s', k), ' AND ') FROM unnest(keys) AS k),
                      CASE WHEN sink->>'on_match' = 'ignore' OR cols <@ keys THEN 'THEN DO NOTHING'
                           ELSE (SELECT format('AND (%s) IS DISTINCT FROM (%s) THEN UPDATE SET %s',
                                               string_agg('t.' || c, ', '), string_agg('s.' || c, ', '),
                                               string_agg(format('%s = s.%1$s', c), ', '))
                                   FROM unnest(cols) AS c WHERE c <> ALL (keys)) END,
                      array_to_string(cols, ', '),
                      (SELECT string_agg('s.' || c, ', ') FROM unnest(cols) AS c),
                      (SELECT string_agg(format('WHEN %I IS NULL THEN sluice._null_key(%L)', k, k), ' ')
                         FROM jsonb_array_elements_text(sink->'key') AS k));
    WHEN 'function' THEN
        RETURN format('SELECT %s($1, %L::regclass)', (sink->>'fnoid')::oid::regproc, input);
    END CASE;
END
$$;

-- null keys never match in MERGE, so a replay would insert them again: the
-- merge statement refuses them, row by row, with this
CREATE FUNCTION sluice._null_key(key_column text)
RETURNS boolean LANGUAGE plpgsql VOLATILE COST 1
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'null value in key column "%" of a merge sink', key_column
        USING ERRCODE = 'not_null_violation',
              DETAIL = 'A merge sink matches rows by key, and a null key never matches.';
END
$$;

-- Pipelines.

-- the columns a transform returns, found by planning it over an empty
-- "batch"; the temporary tables go away with the block's subtransaction
CREATE FUNCTION sluice._transform_columns(pipeline_name text, source jsonb, transform text)
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
        -- the worker runs the transform with the owner's default search_path
        PERFORM set_config('search_path', (SELECT reset_val FROM pg_settings WHERE name = 'search_path'), true);
        EXECUTE sluice._stage_sql(source);
        EXECUTE format('CREATE TEMP TABLE batch_out ON COMMIT DROP AS SELECT * FROM (%s) AS q LIMIT 0', transform);
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

-- the target of an append or merge sink must take the columns it receives
CREATE FUNCTION sluice._check_target(pipeline_name text, sink jsonb, cols jsonb)
RETURNS void LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    relid oid := (sink->>'relid')::oid;
    col record;
    att record;
    k text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = relid AND relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'target % of pipeline "%" is not a table', sink->>'target', pipeline_name
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT has_table_privilege(relid, 'INSERT')
       OR (sink->>'type' = 'merge' AND NOT has_table_privilege(relid, 'SELECT, UPDATE')) THEN
        RAISE EXCEPTION 'permission denied for table %', relid::regclass
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('Pipeline "%s" writes into it as %I.', pipeline_name, current_user);
    END IF;
    FOR col IN SELECT c->>'name' AS name, (c->>'type')::regtype AS type
                 FROM jsonb_array_elements(cols) AS c LOOP
        SELECT a.atttypid::regtype AS type, a.attgenerated INTO att
          FROM pg_attribute a
         WHERE a.attrelid = relid AND a.attname = col.name AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'column "%" of the source of pipeline "%" does not exist in table %',
                            col.name, pipeline_name, relid::regclass
                USING ERRCODE = 'undefined_column';
        ELSIF att.attgenerated <> '' THEN
            RAISE EXCEPTION 'column "%" of table % is generated and cannot be written by pipeline "%"',
                            col.name, relid::regclass, pipeline_name
                USING ERRCODE = 'generated_always';
        ELSIF att.type <> col.type AND NOT EXISTS (
                SELECT 1 FROM pg_cast
                 WHERE castsource = col.type AND casttarget = att.type AND castcontext IN ('a', 'i')) THEN
            RAISE EXCEPTION 'column "%" of type % does not fit column "%" of type % of table %',
                            col.name, col.type, col.name, att.type, relid::regclass
                USING ERRCODE = 'datatype_mismatch',
                      DETAIL = format('Pipeline "%s" has no assignment cast from %s to %s.',
                                      pipeline_name, col.type, att.type),
                      HINT = 'Cast the column in a transform.';
        END IF;
    END LOOP;
    FOR k IN SELECT jsonb_array_elements_text(sink->'key') LOOP
        IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(cols) AS c WHERE c->>'name' = k) THEN
            RAISE EXCEPTION 'key column "%" of pipeline "%" is not among the columns it receives', k, pipeline_name
                USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION sluice.create_pipeline(name text, source jsonb, sink jsonb,
                                       trigger text DEFAULT '1 second',
                                       transform text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols jsonb := source->'columns';
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

    CASE
    WHEN sink->>'type' = 'append' AND sink ? 'relid'
      OR sink->>'type' = 'merge' AND sink ? 'relid' AND jsonb_typeof(sink->'key') = 'array' THEN
        PERFORM sluice._check_target(name, sink, cols);
    WHEN sink->>'type' = 'function' AND sink ? 'fnoid' THEN
        IF NOT has_function_privilege((sink->>'fnoid')::oid, 'EXECUTE') THEN
            RAISE EXCEPTION 'permission denied for function %', sink->>'function'
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = format('Pipeline "%s" calls it as %I.', name, current_user);
        END IF;
    ELSE
        RAISE EXCEPTION 'invalid sink for pipeline "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Describe the sink with sluice.append_sink(), sluice.merge_sink() or sluice.function_sink().';
    END CASE;

    INSERT INTO sluice.pipeline (name, source, sink, trigger, transform)
    VALUES (create_pipeline.name, source, sink, trigger, transform);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'pipeline "%" already exists', name USING ERRCODE = 'duplicate_object';
END
$$;
COMMENT ON FUNCTION sluice.create_pipeline IS 'create a stopped pipeline from a source, through an optional transform, to a sink';

-- set a pipeline's state (NULL: drop it) and wake the launcher at commit
CREATE FUNCTION sluice._set_state(pipeline_name text, new_state text)
RETURNS void LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF new_state IS NULL THEN
        DELETE FROM sluice.pipeline AS p WHERE p.name = pipeline_name;
    ELSE
        UPDATE sluice.pipeline AS p SET state = new_state WHERE p.name = pipeline_name;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pipeline "%" does not exist', pipeline_name USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM sluice._wake();
END
$$;

CREATE FUNCTION sluice.drop_pipeline(name text)
RETURNS void LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT sluice._set_state(name, NULL) $$;
COMMENT ON FUNCTION sluice.drop_pipeline IS 'stop a pipeline and forget it, with its batches, files and errors';

CREATE FUNCTION sluice.start(name text)
RETURNS void LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT sluice._set_state(name, 'running') $$;
COMMENT ON FUNCTION sluice.start IS 'run a pipeline in a background worker from the next commit on; retries a failed one';

CREATE FUNCTION sluice.stop(name text)
RETURNS void LANGUAGE sql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT sluice._set_state(name, 'stopped') $$;
COMMENT ON FUNCTION sluice.stop IS 'stop a pipeline''s worker after commit; a batch in flight rolls back and is replayed later';

CREATE FUNCTION sluice.run_once(name text)
RETURNS bigint LANGUAGE C VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'sluice_run_once';
COMMENT ON FUNCTION sluice.run_once IS 'process everything available now in a worker, wait for it, and return the number of batches committed';

-- Monitoring.

CREATE VIEW sluice.pipelines WITH (security_invoker = true) AS
SELECT p.name,
       p.owner::regrole AS owner,
       p.state,
       p.trigger,
       p.source->>'type' AS source_type,
       p.sink->>'target' AS target,
       w.pid AS worker_pid,
       w.current_batch AS batch_in_flight,
       last.batch_id AS last_batch_id,
       last.committed_at AS last_batch_at,
       last.input_rows AS last_input_rows,
       round(last.input_rows * 1000.0 / nullif((last.durations->>'total')::numeric, 0), 1)
           AS last_rows_per_second,
       total.batches,
       total.input_rows,
       sluice._files_pending(p) AS files_pending,
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

CREATE VIEW sluice.errors WITH (security_invoker = true) AS
SELECT p.name AS pipeline, e.batch_id, e.sqlstate, e.message, e.detail, e.hint, e.context,
       e.at AS time
  FROM sluice.error AS e JOIN sluice.pipeline AS p ON p.id = e.pipeline_id;
GRANT SELECT ON sluice.pipelines, sluice.errors TO PUBLIC;
COMMENT ON VIEW sluice.errors IS 'failures and warnings of pipelines, newest last';

CREATE VIEW sluice.rejects WITH (security_invoker = true) AS
SELECT p.name AS pipeline, r.batch_id, r.file, r.line, r.raw_line, r.sqlstate, r.message, r.at AS time
  FROM sluice.reject AS r JOIN sluice.pipeline AS p ON p.id = r.pipeline_id;
GRANT SELECT ON sluice.rejects TO PUBLIC;
COMMENT ON VIEW sluice.rejects IS 'rows set aside by pipelines with on_error => ''reject''';

CREATE FUNCTION sluice.progress(name text, n int DEFAULT 10)
RETURNS TABLE (batch_id bigint, status text, attempts int, files int, input_rows bigint,
               sink_rows bigint, rejected_rows bigint, bytes bigint, rows_per_second numeric, duration_ms jsonb,
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
           round(b.input_rows * 1000.0 / nullif((b.durations->>'total')::numeric, 0), 1),
           b.durations,
           jsonb_build_object('log_offset', b.batch_id - 1),
           jsonb_build_object('log_offset', b.batch_id, 'files',
               (SELECT jsonb_agg(jsonb_build_object('path', f.path, 'size', f.size, 'mtime', f.mtime)
                                 ORDER BY f.mtime, f.path)
                  FROM sluice.file AS f
                 WHERE f.pipeline_id = b.pipeline_id AND f.batch_id = b.batch_id)),
           b.planned_at, b.committed_at
      FROM sluice.batch AS b
     WHERE b.pipeline_id = pid
     ORDER BY b.batch_id DESC
     LIMIT progress.n;
END
$$;
COMMENT ON FUNCTION sluice.progress IS 'the last n batches of a pipeline, newest first, with Spark-like progress fields';

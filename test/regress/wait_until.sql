-- wait (at most ~30 s) until a boolean query is true; for sql/*.sql (\i)
CREATE FUNCTION wait_until(cond text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXECUTE 'SELECT (' || cond || ')' INTO ok;
        IF ok THEN
            RETURN;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RAISE EXCEPTION 'timed out waiting for: %', cond;
END
$$;

-- Helpers shared by the pgTAP tests in test/pgtap/, loaded once by
-- scripts/test into the test database before pg_prove runs them.
CREATE SCHEMA test_util;

-- true once a boolean query is true, false after ~30 s
CREATE FUNCTION test_util.wait_until(cond text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXECUTE 'SELECT (' || cond || ')' INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END
$$;

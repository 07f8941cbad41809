-- a connection string for dblink to this server as another role; for sql/*.sql (\i)
CREATE FUNCTION conninfo(role text) RETURNS text LANGUAGE sql
SET search_path = pg_catalog AS $$
    SELECT 'dbname=' || current_database() || ' user=' || role || ' port=' || current_setting('port')
           || CASE WHEN current_setting('unix_socket_directories') = '' THEN ' host=localhost'
                   ELSE ' host=' || split_part(current_setting('unix_socket_directories'), ',', 1) END
$$;

-- Two group roles (NOLOGIN): operators create login roles IN ROLE one of them.
--   agent_gateway_runtime: what the gateway needs, read only.
--   agent_gateway_admin:   migrations aside, what registry writes need. No DELETE: revocation is an
--                          UPDATE of revoked_at, so the registry keeps its history.
-- Roles are cluster-wide, grants are per database: create once, grant every time.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agent_gateway_runtime') THEN
        CREATE ROLE agent_gateway_runtime NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agent_gateway_admin') THEN
        CREATE ROLE agent_gateway_admin NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO agent_gateway_runtime, agent_gateway_admin;

GRANT SELECT ON agent_gateway_schema_version, principal_signing_keys, principal_key_permissions, permission_registry
    TO agent_gateway_runtime, agent_gateway_admin;

GRANT INSERT, UPDATE ON principal_signing_keys, principal_key_permissions, permission_registry
    TO agent_gateway_admin;
GRANT USAGE ON SEQUENCE principal_key_permissions_id_seq TO agent_gateway_admin;

INSERT INTO agent_gateway_schema_version (version) VALUES (2);

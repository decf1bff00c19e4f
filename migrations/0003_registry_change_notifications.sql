-- Live revocation: every write to the registry tables NOTIFYs agent_gateway_registry_changed with the
-- keys it touched, so a gateway can re-check the tunnels those rows authorized.
-- Payload (JSON): {"table": "...", "op": "INSERT|UPDATE|DELETE", ...keys}. NOTIFY payloads are limited
-- to 8000 bytes; an oversized key degrades to {"table":"*"}, which makes gateways re-check everything,
-- instead of failing the admin's write.

CREATE FUNCTION agent_gateway_notify_registry_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    payload TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'permission_registry' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'permission_id', r.permission_id, 'signing_key_id', r.signing_key_id)::text;
    ELSIF TG_TABLE_NAME = 'principal_signing_keys' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'signing_key_id', r.key_id)::text;
    ELSE
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'signing_key_id', r.signing_key_id, 'destination', r.destination)::text;
    END IF;
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('table', '*', 'op', TG_OP)::text;
    END IF;
    PERFORM pg_notify('agent_gateway_registry_changed', payload);
    RETURN NULL;
END
$$;

CREATE TRIGGER permission_registry_notify
    AFTER INSERT OR UPDATE OR DELETE ON permission_registry
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_notify_registry_change();
CREATE TRIGGER principal_signing_keys_notify
    AFTER INSERT OR UPDATE OR DELETE ON principal_signing_keys
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_notify_registry_change();
CREATE TRIGGER principal_key_permissions_notify
    AFTER INSERT OR UPDATE OR DELETE ON principal_key_permissions
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_notify_registry_change();

-- A TRUNCATE fires no row trigger; tell gateways to re-check everything.
CREATE FUNCTION agent_gateway_notify_registry_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('agent_gateway_registry_changed', json_build_object('table', '*', 'op', TG_OP)::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER permission_registry_notify_truncate AFTER TRUNCATE ON permission_registry
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_notify_registry_truncate();
CREATE TRIGGER principal_signing_keys_notify_truncate AFTER TRUNCATE ON principal_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_notify_registry_truncate();
CREATE TRIGGER principal_key_permissions_notify_truncate AFTER TRUNCATE ON principal_key_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_notify_registry_truncate();

INSERT INTO agent_gateway_schema_version (version) VALUES (3);

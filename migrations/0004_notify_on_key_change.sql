-- 0003 names only the NEW row's keys. An UPDATE that rewrites a key column in place (permission_id,
-- signing_key_id, key_id, destination) would leave tunnels authorized under the OLD value unnoticed
-- until expiry or polling, so such an UPDATE now tells gateways to re-check everything.

CREATE OR REPLACE FUNCTION agent_gateway_notify_registry_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r RECORD;
    payload TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    IF TG_TABLE_NAME = 'permission_registry' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'permission_id', r.permission_id, 'signing_key_id', r.signing_key_id)::text;
        IF TG_OP = 'UPDATE' AND (OLD.permission_id IS DISTINCT FROM NEW.permission_id
                OR OLD.signing_key_id IS DISTINCT FROM NEW.signing_key_id) THEN
            payload := NULL;
        END IF;
    ELSIF TG_TABLE_NAME = 'principal_signing_keys' THEN
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'signing_key_id', r.key_id)::text;
        IF TG_OP = 'UPDATE' AND OLD.key_id IS DISTINCT FROM NEW.key_id THEN
            payload := NULL;
        END IF;
    ELSE
        payload := json_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
            'signing_key_id', r.signing_key_id, 'destination', r.destination)::text;
        IF TG_OP = 'UPDATE' AND (OLD.signing_key_id IS DISTINCT FROM NEW.signing_key_id
                OR OLD.destination IS DISTINCT FROM NEW.destination) THEN
            payload := NULL;
        END IF;
    END IF;
    IF payload IS NULL OR octet_length(payload) > 7900 THEN
        payload := json_build_object('table', '*', 'op', TG_OP)::text;
    END IF;
    PERFORM pg_notify('agent_gateway_registry_changed', payload);
    RETURN NULL;
END
$$;

INSERT INTO agent_gateway_schema_version (version) VALUES (4);

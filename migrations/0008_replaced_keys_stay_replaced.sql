-- A replaced principal key stays replaced (docs/contract.md "A revocation is final", "Root of trust").
-- A key row's public key can change while the key is active (register-principal-key --replace), so
-- without this the admin role could put a replaced key back, together with the root signature it once
-- had, and a later rooted scope would bind to it. Every public key a key row gives up is recorded in
-- retired_principal_keys, by this trigger, whoever changed it; a key row may never take a recorded one
-- back; and the record is append-only. Refusals raise SQLSTATE 23001 like 0005's, for every role
-- (ENABLE ALWAYS, so session_replication_role = replica does not skip them either).

CREATE TABLE retired_principal_keys (
    key_id TEXT NOT NULL,
    public_key_spki_der BYTEA NOT NULL,
    retired_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, public_key_spki_der)
);

GRANT SELECT ON retired_principal_keys TO agent_gateway_runtime, agent_gateway_admin;
-- The trigger below runs as whoever updates the key row: the admin role.
GRANT INSERT ON retired_principal_keys TO agent_gateway_admin;

CREATE FUNCTION agent_gateway_retire_replaced_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    retired TIMESTAMPTZ;
BEGIN
    SELECT r.retired_at INTO retired FROM retired_principal_keys r
     WHERE r.key_id = NEW.key_id AND r.public_key_spki_der = NEW.public_key_spki_der;
    IF FOUND THEN
        RAISE EXCEPTION 'agent_gateway registry refused: principal_signing_keys % taking back public key sha256 % (retired at %; a replaced key stays replaced: register a new key)', NEW.key_id, encode(sha256(NEW.public_key_spki_der), 'hex'), retired
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.public_key_spki_der IS DISTINCT FROM OLD.public_key_spki_der THEN
        INSERT INTO retired_principal_keys (key_id, public_key_spki_der)
        VALUES (OLD.key_id, OLD.public_key_spki_der) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER principal_signing_keys_retire
    BEFORE INSERT OR UPDATE ON principal_signing_keys
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_retire_replaced_key();

CREATE FUNCTION agent_gateway_retirement_is_final() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'agent_gateway registry refused: % of retired_principal_keys % (a retirement is final)', TG_OP, OLD.key_id
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER retired_principal_keys_guard
    BEFORE UPDATE OR DELETE ON retired_principal_keys
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_retirement_is_final();
CREATE TRIGGER retired_principal_keys_guard_truncate BEFORE TRUNCATE ON retired_principal_keys
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_registry_refuse_truncate();

ALTER TABLE principal_signing_keys ENABLE ALWAYS TRIGGER principal_signing_keys_retire;
ALTER TABLE retired_principal_keys
    ENABLE ALWAYS TRIGGER retired_principal_keys_guard,
    ENABLE ALWAYS TRIGGER retired_principal_keys_guard_truncate;

INSERT INTO agent_gateway_schema_version (version) VALUES (8);

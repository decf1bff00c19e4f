-- A revocation is final, and a signed row keeps saying exactly what was signed (docs/contract.md,
-- "A revocation is final"). Row triggers refuse, for every role including the table owner:
--   * clearing revoked_at, or moving it later (moving it earlier only widens the revocation);
--   * changing a column that is fixed once written: a permission's signed columns and its signature (a
--     new grant is a new signed row), a signing key's key_id, a scope's signing_key_id and destination,
--     and created_at everywhere;
--   * changing anything but revoked_at (earlier) and updated_at on a row that is revoked;
--   * DELETE and TRUNCATE: the registry keeps its history (0002 never granted DELETE), and a deleted
--     revoked row could come back as a new unrevoked row with the same id and the same old signature.
-- Refusals raise SQLSTATE 23001 (restrict_violation) with a message naming table, row and what was refused.
-- The triggers are ENABLE ALWAYS so SET session_replication_role = replica, which skips ordinary
-- triggers, does not skip them; the NOTIFY triggers of 0003 become ALWAYS too, so a logical-replication
-- subscriber (which applies changes as a replica) still tells its gateways.

CREATE FUNCTION agent_gateway_registry_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    -- TG_ARGV[0]: the column naming the row in messages; TG_ARGV[1..]: the columns fixed once written.
    id_column TEXT := TG_ARGV[0];
    old_row JSONB := to_jsonb(OLD);
    new_row JSONB;
    what TEXT;
    col TEXT;
BEGIN
    what := format('%s %s', TG_TABLE_NAME, old_row ->> id_column);
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'agent_gateway registry refused: DELETE of % (registry rows are never deleted; revoke by setting revoked_at)', what
            USING ERRCODE = 'restrict_violation';
    END IF;
    new_row := to_jsonb(NEW);
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NULL THEN
        RAISE EXCEPTION 'agent_gateway registry refused: clearing revoked_at of % (revoked at %; a revocation is final)', what, OLD.revoked_at
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.revoked_at > OLD.revoked_at THEN
        RAISE EXCEPTION 'agent_gateway registry refused: moving revoked_at of % later, from % to % (a revocation is final)', what, OLD.revoked_at, NEW.revoked_at
            USING ERRCODE = 'restrict_violation';
    END IF;
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        col := TG_ARGV[i];
        IF (old_row -> col) IS DISTINCT FROM (new_row -> col) THEN
            RAISE EXCEPTION 'agent_gateway registry refused: changing % of % (fixed once written; a new grant is a new row)', col, what
                USING ERRCODE = 'restrict_violation';
        END IF;
    END LOOP;
    IF OLD.revoked_at IS NOT NULL THEN
        FOR col IN SELECT jsonb_object_keys(new_row) LOOP
            IF col NOT IN ('revoked_at', 'updated_at') AND (old_row -> col) IS DISTINCT FROM (new_row -> col) THEN
                RAISE EXCEPTION 'agent_gateway registry refused: changing % of %, which is revoked (a revocation is final)', col, what
                    USING ERRCODE = 'restrict_violation';
            END IF;
        END LOOP;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION agent_gateway_registry_refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'agent_gateway registry refused: TRUNCATE of % (registry rows are never deleted; revoke by setting revoked_at)', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

-- The signed columns are the fields of core/permission-bytes.ts; the signature is fixed with them.
CREATE TRIGGER permission_registry_guard
    BEFORE UPDATE OR DELETE ON permission_registry
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_registry_guard('permission_id',
        'permission_id', 'signing_key_id', 'subject_identity', 'subject_public_key_spki_der', 'destination',
        'not_before', 'not_after', 'signature', 'created_at');
-- The key material stays replaceable while the key is active (register-principal-key --replace, which
-- revokes the old key's scopes); the key id is what permissions name in their signed bytes.
CREATE TRIGGER principal_signing_keys_guard
    BEFORE UPDATE OR DELETE ON principal_signing_keys
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_registry_guard('key_id', 'key_id', 'created_at');
-- A scope's window stays adjustable while it is active (refreshes widen it, narrowing revokes in part);
-- what it delegates, to whom, does not.
CREATE TRIGGER principal_key_permissions_guard
    BEFORE UPDATE OR DELETE ON principal_key_permissions
    FOR EACH ROW EXECUTE FUNCTION agent_gateway_registry_guard('id',
        'id', 'signing_key_id', 'destination', 'created_at');

CREATE TRIGGER permission_registry_guard_truncate BEFORE TRUNCATE ON permission_registry
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_registry_refuse_truncate();
CREATE TRIGGER principal_signing_keys_guard_truncate BEFORE TRUNCATE ON principal_signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_registry_refuse_truncate();
CREATE TRIGGER principal_key_permissions_guard_truncate BEFORE TRUNCATE ON principal_key_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION agent_gateway_registry_refuse_truncate();

ALTER TABLE permission_registry
    ENABLE ALWAYS TRIGGER permission_registry_guard,
    ENABLE ALWAYS TRIGGER permission_registry_guard_truncate,
    ENABLE ALWAYS TRIGGER permission_registry_notify,
    ENABLE ALWAYS TRIGGER permission_registry_notify_truncate;
ALTER TABLE principal_signing_keys
    ENABLE ALWAYS TRIGGER principal_signing_keys_guard,
    ENABLE ALWAYS TRIGGER principal_signing_keys_guard_truncate,
    ENABLE ALWAYS TRIGGER principal_signing_keys_notify,
    ENABLE ALWAYS TRIGGER principal_signing_keys_notify_truncate;
ALTER TABLE principal_key_permissions
    ENABLE ALWAYS TRIGGER principal_key_permissions_guard,
    ENABLE ALWAYS TRIGGER principal_key_permissions_guard_truncate,
    ENABLE ALWAYS TRIGGER principal_key_permissions_notify,
    ENABLE ALWAYS TRIGGER principal_key_permissions_notify_truncate;

INSERT INTO agent_gateway_schema_version (version) VALUES (5);

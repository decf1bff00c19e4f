-- Root of trust (docs/contract.md "Root of trust"). With policy.trust_roots set in a gateway's config, a
-- principal key row and a scope row count only with a signature by a configured root over their
-- canonical bytes (core/root-signed-bytes.ts); the database becomes untrusted storage.
--   * registry_root_keys: the roots' public keys, for display by the registry CLI only. The gateway never
--     trusts this table: it verifies with the keys in its own configuration.
--   * root_key_id / root_signature on principal_signing_keys and principal_key_permissions: both NULL =
--     not rooted. The signature protects itself, so the admin role may set, replace (re-signing during a
--     root rotation) and clear (withdrawing) them on an active row; 0005's guards fix neither column, and
--     still refuse any change on a revoked row. 0003/0004's NOTIFY triggers fire on every UPDATE, so a
--     change of either column makes gateways re-check the tunnels that row authorized.

CREATE TABLE registry_root_keys (
    root_key_id TEXT PRIMARY KEY CHECK (root_key_id ~ '^sha256:[0-9a-f]{64}$'),
    algorithm TEXT NOT NULL CHECK (algorithm = 'ecdsa_p256_sha256'),
    public_key_spki_der BYTEA NOT NULL UNIQUE,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE principal_signing_keys
    ADD COLUMN root_key_id TEXT,
    ADD COLUMN root_signature BYTEA,
    ADD CONSTRAINT principal_signing_keys_root_pair
        CHECK ((root_key_id IS NULL) = (root_signature IS NULL));
ALTER TABLE principal_key_permissions
    ADD COLUMN root_key_id TEXT,
    ADD COLUMN root_signature BYTEA,
    ADD CONSTRAINT principal_key_permissions_root_pair
        CHECK ((root_key_id IS NULL) = (root_signature IS NULL));

-- The gateway's candidate query asks, for a scope row, whether a revoked row with the same signed fields
-- exists (a copy of a revoked scope's root signature into a new row counts as revoked).
CREATE INDEX principal_key_permissions_revoked_signed_fields
    ON principal_key_permissions (signing_key_id, destination, not_before, not_after)
    WHERE revoked_at IS NOT NULL;

GRANT SELECT ON registry_root_keys TO agent_gateway_runtime, agent_gateway_admin;
GRANT INSERT ON registry_root_keys TO agent_gateway_admin;

INSERT INTO agent_gateway_schema_version (version) VALUES (6);

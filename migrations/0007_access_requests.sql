-- Access requests (docs/contract.md "Access requests"): a CONNECT denied because no grant counts leaves a
-- row here, one per (identity, key, destination), for a principal to approve (a signed grant, written by
-- the registry CLI) or dismiss.
--   * request_id is a pure function of the unique columns (core/access-request-id.ts), so the gateway
--     names the request in its 403 without asking the database; the CHECKs hold the row to it.
--   * agent_gateway_requests may only read this table, insert the recorded columns and update the
--     counted and decided ones; the gateway's runtime role is made a member, so it can record requests
--     and stays read-only for everything else.
--   * No NOTIFY trigger: a registry notification empties the gateways' caches and re-checks tunnels, and
--     nothing here grants anything. No DELETE for anyone.

CREATE TABLE access_requests (
    request_id TEXT PRIMARY KEY CHECK (request_id ~ '^req-[0-9a-f]{20}$'),
    subject_identity TEXT NOT NULL CHECK (subject_identity <> ''),
    subject_public_key_spki_der BYTEA NOT NULL,
    subject_spki_sha256 TEXT NOT NULL CHECK (subject_spki_sha256 ~ '^[0-9a-f]{64}$'),
    destination TEXT NOT NULL CHECK (destination <> ''),
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    request_count BIGINT NOT NULL DEFAULT 1 CHECK (request_count > 0),
    last_deny_reason TEXT NOT NULL
        CHECK (last_deny_reason IN ('no_permission', 'permission_expired', 'permission_revoked')),
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'dismissed')),
    permission_id TEXT,
    decided_at TIMESTAMPTZ,
    decided_by TEXT,
    UNIQUE (subject_identity, subject_public_key_spki_der, destination),
    CONSTRAINT access_requests_spki_sha256_matches
        CHECK (subject_spki_sha256 = encode(sha256(subject_public_key_spki_der), 'hex')),
    CONSTRAINT access_requests_id_matches
        CHECK (request_id = 'req-' || left(encode(sha256(convert_to(
            subject_identity || E'\n' || encode(subject_public_key_spki_der, 'hex') || E'\n' || destination,
            'UTF8')), 'hex'), 20))
);

CREATE INDEX access_requests_pending ON access_requests (last_seen DESC) WHERE status = 'pending';

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'agent_gateway_requests') THEN
        CREATE ROLE agent_gateway_requests NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO agent_gateway_requests;
-- Column by column: the gateway records denials; it never writes a first_seen, and an approval's
-- permission and decider only ever as the NULLs of a re-opened row.
GRANT SELECT ON access_requests TO agent_gateway_requests;
GRANT INSERT (request_id, subject_identity, subject_public_key_spki_der, subject_spki_sha256, destination,
              request_count, last_deny_reason)
    ON access_requests TO agent_gateway_requests;
GRANT UPDATE (request_count, last_seen, last_deny_reason, status, permission_id, decided_at, decided_by)
    ON access_requests TO agent_gateway_requests;
GRANT agent_gateway_requests TO agent_gateway_runtime;

GRANT SELECT, UPDATE ON access_requests TO agent_gateway_admin;

INSERT INTO agent_gateway_schema_version (version) VALUES (7);

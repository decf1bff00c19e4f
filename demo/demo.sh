#!/usr/bin/env bash
# The agent_gateway demo, natively on one machine (no container engine, no AI tool needed).
#
#   ./demo/demo.sh setup      install what is missing, then start PostgreSQL, the mock HTTPS services
#                             docstore and messaging, the gateway, a TPM-backed principal org-alice and a
#                             TPM-backed agent agent-alpha, and prove one request through the tunnel.
#                             Natively, a registry root key in its own swtpm signs org-alice's key and
#                             scope, and the gateway trusts only that root (policy.trust_roots).
#                             Safe to re-run: what is running is reused.
#   ./demo/demo.sh attack-db  as the registry's admin role, without the root key, insert a principal key,
#                             a scope and a signed grant for agent-mallory; the gateway answers 403
#                             signer_not_rooted; the inserted rows are then revoked
#   ./demo/demo.sh receipts   verify the demo gateway's tunnel receipts (README "Receipts and audit")
#                             with the key `agent_gateway receipts-key` prints, list them, then tamper
#                             with a copy and show receipts verify naming the edited record
#   ./demo/demo.sh status     what is running
#   ./demo/demo.sh teardown   stop everything the demo started and remove all of its files
#
# Then: ./demo/demo-agent.sh prompt agent-alpha --prompt "Access https://docstore/documents using curl"
#
# State: ~/.local/state/agent-gateway (AGENT_GATEWAY_DEMO_STATE_DIR). Env overrides (all optional):
#   AGENT_GATEWAY_DATABASE_URL          use this PostgreSQL instead of starting a local cluster
#   AGENT_GATEWAY_TPM_USER_PIN / _SO_PIN  TPM token PINs (default: demo values)
#   AGENT_GATEWAY_DEMO_TPM2_PKCS11_STORE  the principal's tpm2-pkcs11 store (default: in the state dir)
#   AGENT_GATEWAY_DEMO_SWTPM_PORT, AGENT_GATEWAY_DEMO_TPM_HANDLE   the agent's swtpm port and key handle
#   AGENT_GATEWAY_DEMO_{GATEWAY,ADMIN,PG,DOCSTORE,MESSAGING,PRINCIPAL_SWTPM,ROOT_SWTPM,SIDECAR}_PORT
#     listening ports (defaults 8443 9090 5432 9441 9442 2331 2333 3128; a taken port is replaced by a
#     free one)
#   AGENT_GATEWAY_DEMO_CONFIG           config file (default: <repo>/config.toml)
#   AGENT_GATEWAY_DEMO_CERTS_DIR        demo TLS material (default: <repo>/certs)
#   AGENT_GATEWAY_DEMO_CONFIG_EXAMPLE   the file config.toml is written from (default: config.example.toml)
#   AGENT_GATEWAY_DEMO_SKIP_APT=1 / AGENT_GATEWAY_DEMO_SKIP_BUILD=1   skip package install / npm build
#   AGENT_GATEWAY_DEMO_RUNTIME=compose  run PostgreSQL, migrations, mocks and gateway from compose.yaml
#   AGENT_GATEWAY_DEMO_HOLD_MS=30000    [requests] hold_ms: a denied agent with a grant waits that long for an approval
#                                       (needs docker compose or podman compose); default: native
# shellcheck disable=SC2016 # node -e scripts are single-quoted on purpose
set -euo pipefail

DEMO_PROG="demo.sh"
# shellcheck source=demo/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$DEMO_ROOT"

PRINCIPAL="org-alice"
PRINCIPAL_SCOPE=(docstore messaging api.anthropic.com)
DEMO_AGENT="agent-alpha"
DEMO_AGENT_GRANTS=(docstore messaging)
MOCKS=(docstore messaging)
ROOT_LABEL="demo-root"
ROOT_TOKEN_LABEL="agent-gateway-root"
# The scope is signed by the root, so it must end within the key's window (one year from registration).
ROOTED_SCOPE_DAYS=364
ATTACK_AGENT="agent-mallory"
ATTACK_DEST="docstore"
PKGS=(postgresql swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1
  libtpm2-pkcs11-tools libengine-pkcs11-openssl opensc dbus openssl curl ca-certificates)
# Only needed when npm has to compile pkcs11js.
BUILD_PKGS=(g++ make python3)
PG_DB="agent_gateway"
PG_ADMIN_ROLE="agent_gateway_demo_admin"
PG_GATEWAY_ROLE="agent_gateway_demo_gateway"
SETUP_LOG="$STATE_DIR/logs/setup.log"

usage() {
  awk 'NR > 1 && /^#/ { if ($0 !~ /shellcheck/) { sub(/^# ?/, ""); print }; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

# ---- helpers ------------------------------------------------------------------------------------------

is_root() { [ "$(id -u)" = 0 ]; }

sha_of() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

certs_dir() {
  local d="${AGENT_GATEWAY_DEMO_CERTS_DIR:-$(state_get CERTS_DIR)}"
  printf '%s' "${d:-$DEMO_ROOT/certs}"
}
config_path() {
  local f="${AGENT_GATEWAY_DEMO_CONFIG:-$(state_get CONFIG_PATH)}"
  printf '%s' "${f:-$DEMO_ROOT/config.toml}"
}

# owner_alive PIDFILE|compose:SERVICE: the demo's process (or compose service) that holds a port runs.
owner_alive() {
  case "$1" in
    compose:*)
      [ "$(state_get RUNTIME)" = compose ] && find_compose &&
        [ -n "$(compose ps -q --status running "${1#compose:}" 2>/dev/null)" ]
      ;;
    *) pid_alive "$1" >/dev/null ;;
  esac
}

# settle_port KEY ENVVAR DEFAULT PIDFILE: the port recorded under KEY when its process still runs (or the
# port is free), else the env override / default when free, else any free port. Records the choice.
settle_port() {
  local key="$1" envvar="$2" default="$3" pidfile="$4" recorded wanted port
  recorded="$(state_get "$key")"
  if [ -n "$recorded" ] && { owner_alive "$pidfile" || port_free "$recorded"; }; then
    port="$recorded"
  else
    wanted="${!envvar:-$default}"
    if ! [[ "$wanted" =~ ^[0-9]+$ ]] || [ "$wanted" -lt 1 ] || [ "$wanted" -gt 65535 ]; then
      die "$envvar=$wanted is not a port"
    fi
    port="$(pick_port "$wanted")"
  fi
  state_set "$key" "$port"
  printf '%s' "$port"
}

pg_socket_dir() { printf '%s/run' "$(state_get PG_DIR)"; }

# psql_super ARGS...: psql as the superuser over the cluster's private unix socket.
psql_super() {
  psql -X -v ON_ERROR_STOP=1 -h "$(pg_socket_dir)" -p "$(state_get PG_PORT)" -U postgres "$@"
}

url_encode() { node -e 'process.stdout.write(encodeURIComponent(process.argv[1]))' "$1"; }

principal_dir() { printf '%s/principal' "$STATE_DIR"; }

# principal_env: the environment the registry CLI needs (database + the principal's TPM).
principal_env() {
  local dir
  dir="$(principal_dir)"
  tpm_env_exports "$dir/tpm"
  export TPM2_PKCS11_STORE
  TPM2_PKCS11_STORE="$(state_get PRINCIPAL_STORE)"
  export AGENT_GATEWAY_DATABASE_URL
  AGENT_GATEWAY_DATABASE_URL="$(state_get DB_ADMIN_URL)"
}

registry_cli() {
  local script="$DEMO_ROOT/registry-cli/$1"
  shift
  [ -x "$script" ] || die "$script is missing"
  (
    principal_env
    logged "$script" "$@"
  )
}

root_dir() { printf '%s/root' "$STATE_DIR"; }

# root_env: the registry CLI's environment for the root key: its own swtpm and tpm2-pkcs11 store, never the
# principal's (README "With a root of trust": in production a hardware token kept offline).
root_env() {
  local dir
  dir="$(root_dir)"
  tpm_env_exports "$dir/tpm"
  export TPM2_PKCS11_STORE="$dir/tpm2-pkcs11"
  export AGENT_GATEWAY_ROOT_TOKEN_LABEL="$ROOT_TOKEN_LABEL"
  export AGENT_GATEWAY_ROOT_USER_PIN="$AGENT_GATEWAY_TPM_USER_PIN"
  export AGENT_GATEWAY_DATABASE_URL
  AGENT_GATEWAY_DATABASE_URL="$(state_get DB_ADMIN_URL)"
}

# root_cli SCRIPT ARGS...: the registry CLI as the root's holder; its stdout is printed (and logged).
root_cli() {
  local script="$DEMO_ROOT/registry-cli/$1" out rc=0
  shift
  [ -x "$script" ] || die "$script is missing"
  printf '+ %s\n' "$(redact "$script $*")" >>"${CURRENT_LOG:-/dev/null}"
  out="$(
    root_env
    "$script" "$@" 2>>"${CURRENT_LOG:-/dev/null}"
  )" || rc=$?
  printf '%s\n' "$out" >>"${CURRENT_LOG:-/dev/null}"
  printf '%s' "$out"
  return "$rc"
}

# psql_admin ARGS...: psql as the registry's admin role (DB_ADMIN_URL), the role attack-db plays.
psql_admin() {
  psql -X -q -v ON_ERROR_STOP=1 -d "$(state_get DB_ADMIN_URL)" "$@"
}

# ---- setup steps ----------------------------------------------------------------------------------------

step_packages() {
  step "Checking system packages" "$SETUP_LOG"
  local missing=() p want=("${PKGS[@]}")
  [ -d node_modules ] || want+=("${BUILD_PKGS[@]}")
  for p in "${want[@]}"; do
    dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "${AGENT_GATEWAY_DEMO_SKIP_APT:-${SKIP_APT:-0}}" = 1 ]; then
      die "missing Debian packages (AGENT_GATEWAY_DEMO_SKIP_APT=1, not installing): ${missing[*]}"
    fi
    info "    installing: ${missing[*]}"
    local sudo=()
    is_root || sudo=(sudo)
    logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  require_cmd node npm openssl curl swtpm tpm2-abrmd dbus-daemon tpm2_ptool pkcs11-tool psql runuser setsid
  node -e '
    const [maj, min] = process.versions.node.split(".").map(Number);
    if (maj < 22 || (maj === 22 && min < 12)) {
      console.error(`Node.js ${process.versions.node} is too old: agent_gateway runs on Node 24 LTS (or 22 LTS >= 22.12); Debian 12 ships 18: see README "Node.js"`);
      process.exit(1);
    }' >>"$CURRENT_LOG" 2>&1 || die "Node.js 24 LTS (or 22 LTS >= 22.12) is required (node $(node -v)); see README \"Node.js\" and $CURRENT_LOG"
  step_done
}

step_build() {
  step "Installing npm dependencies and building" "$SETUP_LOG"
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    info "    npm ci"
    logged npm ci --no-audit --no-fund
  fi
  if [ "${AGENT_GATEWAY_DEMO_SKIP_BUILD:-0}" = 1 ]; then
    info "    build skipped (AGENT_GATEWAY_DEMO_SKIP_BUILD=1)"
  else
    local outputs=(dist/gateway/main.js dist/sidecar/main.js dist/demo/mock-service.js dist/demo/write-config.js
      dist/dev-support/cli.js)
    local oldest="" f stale=0
    for f in "${outputs[@]}"; do
      if [ ! -f "$f" ]; then
        stale=1
        break
      fi
      if [ -z "$oldest" ] || [ "$f" -ot "$oldest" ]; then oldest="$f"; fi
    done
    if [ "$stale" = 0 ] && [ -n "$(find core gateway sidecar registry-cli demo dev-support -name '*.ts' -newer "$oldest" -print -quit 2>/dev/null)" ]; then
      stale=1
    fi
    if [ "$stale" = 0 ] && { [ package.json -nt "$oldest" ] || [ tsconfig.build.json -nt "$oldest" ]; }; then stale=1; fi
    if [ "$stale" = 1 ]; then
      info "    npm run build"
      logged npm run build
    else
      info "    dependencies installed, dist/ up to date"
    fi
  fi
  for f in gateway/main.js sidecar/main.js demo/mock-service.js demo/write-config.js dev-support/cli.js; do
    node_prog "$f" >/dev/null
  done
  step_done
}

step_certs() {
  step "Generating demo TLS material" "$SETUP_LOG"
  local dir
  dir="$(certs_dir)"
  state_set CERTS_DIR "$dir"
  logged "$DEMO_ROOT/demo/generate-server-certs.sh" "$dir"
  info "    $dir: server-ca.pem server.pem (gateway), mock-ca.pem mock-services.pem (docstore, messaging)"
  step_done
}

step_ports() {
  step "Choosing ports (127.0.0.1 only)" "$SETUP_LOG"
  local gw="$STATE_DIR/run/gateway.pid"
  [ "$(state_get RUNTIME)" = compose ] && gw="compose:gateway"
  GATEWAY_PORT="$(settle_port GATEWAY_PORT AGENT_GATEWAY_DEMO_GATEWAY_PORT 8443 "$gw")"
  ADMIN_PORT="$(settle_port ADMIN_PORT AGENT_GATEWAY_DEMO_ADMIN_PORT 9090 "$gw")"
  if [ "$(state_get RUNTIME)" = compose ]; then
    info "    gateway $GATEWAY_PORT, admin $ADMIN_PORT (docstore and messaging are inside the compose network)"
    step_done
    return 0
  fi
  DOCSTORE_PORT="$(settle_port DOCSTORE_PORT AGENT_GATEWAY_DEMO_DOCSTORE_PORT 9441 "$STATE_DIR/run/mock-docstore.pid")"
  MESSAGING_PORT="$(settle_port MESSAGING_PORT AGENT_GATEWAY_DEMO_MESSAGING_PORT 9442 "$STATE_DIR/run/mock-messaging.pid")"
  info "    gateway $GATEWAY_PORT, admin $ADMIN_PORT, docstore $DOCSTORE_PORT, messaging $MESSAGING_PORT"
  step_done
}

step_postgres() {
  if [ -n "${AGENT_GATEWAY_DATABASE_URL:-}" ]; then
    step "Using the PostgreSQL at AGENT_GATEWAY_DATABASE_URL" "$SETUP_LOG"
    state_set PG_MODE external
    state_set DB_SUPER_URL "$AGENT_GATEWAY_DATABASE_URL"
    state_set DB_ADMIN_URL "$AGENT_GATEWAY_DATABASE_URL"
    state_set DB_GATEWAY_URL "$AGENT_GATEWAY_DATABASE_URL"
    info "    (no local cluster; migrations, registry writes and the gateway all use that URL)"
    step_done
    return 0
  fi
  local log="$STATE_DIR/logs/postgres-setup.log"
  step "Starting PostgreSQL (local cluster, no system service)" "$log"
  state_set PG_MODE local
  local pgdir port answer
  pgdir="$(state_get PG_DIR)"
  if [ -z "$pgdir" ] || [ ! -d "$pgdir" ]; then
    pgdir="$STATE_DIR/postgres"
    if [ -L "$pgdir" ]; then rm -f "$pgdir"; fi
  fi
  port="$(settle_port PG_PORT AGENT_GATEWAY_DEMO_PG_PORT 5432 "$STATE_DIR/run/postgres.pid")"
  # Password logins over TCP (the roles below have passwords); the superuser also has the trusted private
  # socket, through which psql_super sets the passwords.
  answer="$(dev_support postgres start --dir "$pgdir" --port "$port" --host-auth scram-sha-256 \
    --max-connections 50 --fallback-prefix /var/tmp/agent-gateway-demo-pg.)" ||
    die "PostgreSQL did not start (see $log)"
  pgdir="$(answer_get dir "$answer")"
  port="$(answer_get port "$answer")"
  state_set PG_DIR "$pgdir"
  state_set PG_PORT "$port"
  if [ "$(answer_get linked "$answer")" = 1 ]; then
    info "    cluster in $pgdir, owned by the postgres user (linked from $STATE_DIR/postgres)"
  fi
  if [ "$(answer_get initialized "$answer")" = 1 ]; then info "    initdb $pgdir/data"; fi
  if [ "$(answer_get started "$answer")" = 1 ]; then
    info "    started on 127.0.0.1:$port (log: $pgdir/postgres.log)"
  else
    info "    already running on 127.0.0.1:$port"
  fi
  pid_record "$STATE_DIR/run/postgres.pid" "$(answer_get pid "$answer")"
  state_set PG_LOG "$pgdir/postgres.log"

  if [ "$(psql_super -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
    logged psql_super -d postgres -c "CREATE DATABASE $PG_DB"
  fi
  # The superuser's password for TCP logins: the (possibly overridden) demo value, set again on every run.
  logged psql_super -d postgres -v "pw=$PG_SUPERUSER_PASSWORD" <<<"ALTER ROLE postgres PASSWORD :'pw';"
  local enc
  enc="$(url_encode "$PG_SUPERUSER_PASSWORD")"
  state_set DB_SUPER_URL "postgresql://postgres:$enc@127.0.0.1:$port/$PG_DB"
  step_done
}

step_migrations() {
  local log="$STATE_DIR/logs/migrations.log"
  step "Applying registry migrations (registry-cli/migrate.sh)" "$log"
  (
    export AGENT_GATEWAY_DATABASE_URL
    AGENT_GATEWAY_DATABASE_URL="$(state_get DB_SUPER_URL)"
    logged "$DEMO_ROOT/registry-cli/migrate.sh"
  )
  if [ "$(state_get PG_MODE)" = local ]; then
    # Login roles IN ROLE the groups from migration 0002: runtime for the gateway (read-only but for
    # access_requests, migration 0007), admin for writes.
    logged psql_super -d "$PG_DB" -v "admin_pw=$PG_ADMIN_PASSWORD" -v "gw_pw=$PG_GATEWAY_PASSWORD" <<SQL
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_ADMIN_ROLE') THEN
    CREATE ROLE $PG_ADMIN_ROLE LOGIN IN ROLE agent_gateway_admin;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_GATEWAY_ROLE') THEN
    CREATE ROLE $PG_GATEWAY_ROLE LOGIN IN ROLE agent_gateway_runtime;
  END IF;
END
\$\$;
ALTER ROLE $PG_ADMIN_ROLE LOGIN PASSWORD :'admin_pw';
ALTER ROLE $PG_GATEWAY_ROLE LOGIN PASSWORD :'gw_pw';
GRANT agent_gateway_admin TO $PG_ADMIN_ROLE;
GRANT agent_gateway_runtime TO $PG_GATEWAY_ROLE;
SQL
    local port
    port="$(state_get PG_PORT)"
    state_set DB_ADMIN_URL "postgresql://$PG_ADMIN_ROLE:$(url_encode "$PG_ADMIN_PASSWORD")@127.0.0.1:$port/$PG_DB"
    state_set DB_GATEWAY_URL "postgresql://$PG_GATEWAY_ROLE:$(url_encode "$PG_GATEWAY_PASSWORD")@127.0.0.1:$port/$PG_DB"
    info "    roles: $PG_GATEWAY_ROLE (gateway: read-only, but records access requests), $PG_ADMIN_ROLE (registry writes)"
  fi
  step_done
}

# tpm_ensure DIR STATE_KEY DEFAULT_PORT LOG: the TPM stack in DIR running, on the port recorded under
# STATE_KEY (AGENT_GATEWAY_DEMO_<STATE_KEY> overrides, DEFAULT_PORT first time), or a free pair if taken.
tpm_ensure() {
  local dir="$1" key="$2" default="$3" log="$4" port
  if tpm_running "$dir"; then return 0; fi
  port="$(settle_port "$key" "AGENT_GATEWAY_DEMO_$key" "$default" "$dir/swtpm.proc")"
  if ! port_free $((port + 1)); then
    state_del "$key"
    port="$(free_port_pair)"
    state_set "$key" "$port"
  fi
  tpm_up "$dir" "$port" "$log"
  info "    swtpm on 127.0.0.1:$port/$((port + 1)) + tpm2-abrmd (state: $dir)"
}

step_root() {
  local dir log port out id b64
  dir="$(root_dir)"
  log="$STATE_DIR/logs/root.log"
  step "Creating the registry root key (its own swtpm-backed tpm2-pkcs11 token) for policy.trust_roots" "$log"
  mkdir -p "$dir/tpm2-pkcs11"
  chmod 700 "$dir" "$dir/tpm2-pkcs11"
  tpm_ensure "$dir/tpm" ROOT_SWTPM_PORT 2333 "$log"
  # init-root finds the key again on a re-run: the same root, the same trust_roots line.
  out="$(root_cli init-root.sh "$ROOT_LABEL" --description "agent_gateway demo root ($dir)")" ||
    die "creating the root key failed (see $log)"
  id="$(sed -n 's/^root_key_id: //p' <<<"$out")"
  b64="$(sed -n 's/^trust_roots = \["\(.*\)"\]$/\1/p' <<<"$out")"
  [[ "$id" =~ ^sha256:[0-9a-f]{64}$ ]] && [ -n "$b64" ] || die "init-root.sh printed no root id and key (see $log)"
  state_set ROOT_KEY_ID "$id"
  state_set ROOT_SPKI_B64 "$b64"
  info "    root $ROOT_LABEL in token $ROOT_TOKEN_LABEL (store: $dir/tpm2-pkcs11)"
  info "    root_key_id $id"
  step_done
}

# use_existing_config FILE: the user's own config.toml is used as it is; take the gateway and admin ports
# from it and say what the demo needs from it.
use_existing_config() {
  local cfg="$1" facts
  info "    $cfg exists and was not written by the demo: using it as it is"
  facts="$(node --input-type=module -e '
    import { readFileSync } from "node:fs";
    import { parse } from "smol-toml";
    const [file, doc, msg] = process.argv.slice(1);
    const t = parse(readFileSync(file, "utf8"));
    const port = (v, d) => Number(/:(\d+)$/.exec(String(v ?? d))?.[1] ?? 0);
    const o = t.upstream?.overrides ?? {};
    const ok = o["docstore:443"] === `127.0.0.1:${doc}` && o["messaging:443"] === `127.0.0.1:${msg}`;
    console.log(port(t.server?.listen_addr, "127.0.0.1:8443"), port(t.admin?.listen_addr, "127.0.0.1:9090"), ok ? 1 : 0);
  ' "$cfg" "$DOCSTORE_PORT" "$MESSAGING_PORT")" || die "cannot read $cfg as TOML"
  local gw admin ok
  read -r gw admin ok <<<"$facts"
  GATEWAY_PORT="$gw"
  ADMIN_PORT="$admin"
  state_set GATEWAY_PORT "$gw"
  state_set ADMIN_PORT "$admin"
  info "    gateway 127.0.0.1:$gw, admin 127.0.0.1:$admin (from $cfg)"
  if [ "$ok" != 1 ]; then
    warn "$cfg lacks [upstream] overrides \"docstore:443\" = \"127.0.0.1:$DOCSTORE_PORT\" and \"messaging:443\" = \"127.0.0.1:$MESSAGING_PORT\": requests to the mocks will fail (move it away and re-run setup to let the demo write its own)"
  fi
  info "    its [policy] database must be the demo's registry: $(state_get DB_GATEWAY_URL | sed -E 's#//([^:]*):[^@]*@#//\1:***@#')"
}

step_config() {
  local cfg written
  cfg="$(config_path)"
  step "Writing $(basename "$cfg") from config.example.toml" "$SETUP_LOG"
  state_set CONFIG_PATH "$cfg"
  written="$(state_get CONFIG_WRITTEN)"
  if [ -f "$cfg" ] && [ "$written" != 1 ]; then
    use_existing_config "$cfg"
    step_done
    return 0
  fi
  if [ -f "$cfg" ] && [ "$(sha_of "$cfg")" != "$(state_get CONFIG_SHA256)" ]; then
    info "    $cfg was changed since the demo wrote it: leaving it alone (and it will not be removed at teardown)"
    state_set CONFIG_WRITTEN 0
    step_done
    return 0
  fi
  local example="${AGENT_GATEWAY_DEMO_CONFIG_EXAMPLE:-$DEMO_ROOT/config.example.toml}"
  [ -f "$example" ] || die "$example is missing"
  local certs values
  certs="$(certs_dir)"
  local hold_ms="${AGENT_GATEWAY_DEMO_HOLD_MS:-0}"
  [[ "$hold_ms" =~ ^[0-9]+$ ]] || die "AGENT_GATEWAY_DEMO_HOLD_MS must be a number of milliseconds, got '$hold_ms'"
  receipts_key
  values="$(node -e '
    const [gw, admin, certs, db, doc, msg, oid, root, hold, receipts] = process.argv.slice(1);
    process.stdout.write(JSON.stringify({
      server: {
        listen_addr: `127.0.0.1:${gw}`, tls_cert_path: `${certs}/server.pem`, tls_key_path: `${certs}/server-key.pem`,
        workers: 1, drain_timeout_ms: 5000,
      },
      policy: { client_ext_oid: oid, database_url: db, database_url_env: null, trust_roots: root ? [root] : [] },
      upstream: {
        allow_cidrs: ["127.0.0.1/32"],
        overrides: { "docstore:443": `127.0.0.1:${doc}`, "messaging:443": `127.0.0.1:${msg}` },
      },
      admin: { listen_addr: `127.0.0.1:${admin}` },
      requests: { hold_ms: Number(hold) },
      receipts: {
        enabled: true, path: `${receipts}/receipts`, instance_id: "demo-gateway",
        signing_key: `${receipts}/receipts.key`, include_denied: true,
      },
    }));' "$GATEWAY_PORT" "$ADMIN_PORT" "$certs" "$(state_get DB_GATEWAY_URL)" "$DOCSTORE_PORT" "$MESSAGING_PORT" \
    "$DEMO_CLIENT_EXT_OID" "$(state_get ROOT_SPKI_B64)" "$hold_ms" "$STATE_DIR")"
  logged node "$(node_prog demo/write-config.js)" --example "$example" --out "$cfg" --values "$values" \
    --header "Written by demo/demo.sh setup from config.example.toml; removed by demo/demo.sh teardown.
The gateway reaches the demo's loopback mock services through [upstream] overrides (like curl --resolve).
The database password is a local demo value. [policy] trust_roots holds the demo root's public key.
[receipts] writes a signed receipt of every tunnel (and denied CONNECT) to the demo's state dir."
  chmod 600 "$cfg"
  state_set CONFIG_WRITTEN 1
  state_set CONFIG_SHA256 "$(sha_of "$cfg")"
  info "    $cfg (docstore:443 -> 127.0.0.1:$DOCSTORE_PORT, messaging:443 -> 127.0.0.1:$MESSAGING_PORT)"
  [ -z "$(state_get ROOT_KEY_ID)" ] || info "    [policy] trust_roots = the demo root's public key (root_key_id $(state_get ROOT_KEY_ID | cut -c1-19)…)"
  step_done
}

# receipts_key: the gateway's receipt signing key, a PEM P-256 key in the state dir (README "Receipts and
# audit"; in production it can live in a TPM: signing_key = "pkcs11:token=…;object=…").
receipts_key() {
  local key="$STATE_DIR/receipts.key"
  [ -f "$key" ] && return 0
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$key" 2>>"$SETUP_LOG") ||
    die "cannot create the receipt key $key"
  info "    receipt signing key $key (PEM, P-256)"
}

step_mocks() {
  step "Starting mock HTTPS services docstore and messaging" "$SETUP_LOG"
  local name port pidfile log certs
  certs="$(certs_dir)"
  for name in "${MOCKS[@]}"; do
    pidfile="$STATE_DIR/run/mock-$name.pid"
    log="$STATE_DIR/logs/mock-$name.log"
    CURRENT_LOG="$log"
    if [ "$name" = docstore ]; then port="$DOCSTORE_PORT"; else port="$MESSAGING_PORT"; fi
    if pid_alive "$pidfile" >/dev/null && port_listening "$port"; then
      info "    $name already running on 127.0.0.1:$port (pid $(pid_alive "$pidfile"))"
      continue
    fi
    pid_stop "$pidfile" "mock $name" 2>/dev/null
    spawn_bg "$pidfile" "$log" node "$(node_prog demo/mock-service.js)" --name "$name" --listen "127.0.0.1:$port" \
      --cert "$certs/mock-services.pem" --key "$certs/mock-services-key.pem" >/dev/null
    wait_port "$port" 20 "$pidfile"
    info "    $name on 127.0.0.1:$port (log: $log)"
  done
  step_done
}

gateway_ready() {
  local admin
  admin="$(state_get ADMIN_PORT)"
  if [ -n "$admin" ] && curl -fsS --max-time 2 "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1; then return 0; fi
  return 1
}

step_gateway() {
  local log="$STATE_DIR/logs/gateway.log" pidfile="$STATE_DIR/run/gateway.pid" cfg i
  step "Starting the gateway (agent_gateway --config $(basename "$(config_path)"))" "$log"
  cfg="$(config_path)"
  if pid_alive "$pidfile" >/dev/null && [ "$(state_get GATEWAY_CONFIG_SHA256)" = "$(sha_of "$cfg")" ] &&
    port_listening "$GATEWAY_PORT"; then
    info "    already running on 127.0.0.1:$GATEWAY_PORT (pid $(pid_alive "$pidfile"))"
    step_done
    return 0
  fi
  if pid_alive "$pidfile" >/dev/null; then
    info "    restarting (its configuration changed)"
    pid_stop "$pidfile" gateway
  fi
  spawn_bg "$pidfile" "$log" node "$(node_prog gateway/main.js)" --config "$cfg" >/dev/null
  state_set GATEWAY_CONFIG_SHA256 "$(sha_of "$cfg")"
  wait_port "$GATEWAY_PORT" 60 "$pidfile"
  for i in $(seq 100); do
    gateway_ready && break
    pid_alive "$pidfile" >/dev/null || die "the gateway exited (see $log)"
    [ "$i" = 100 ] && info "    (admin /readyz did not answer; continuing on the TLS port alone)"
    sleep 0.2
  done
  info "    listening on 127.0.0.1:$GATEWAY_PORT, admin http://127.0.0.1:$ADMIN_PORT (log: $log)"
  step_done
}

step_principal() {
  local dir log port store
  dir="$(principal_dir)"
  log="$STATE_DIR/logs/principal.log"
  step "Registering principal $PRINCIPAL (its own swtpm-backed tpm2-pkcs11 store)" "$log"
  mkdir -p "$dir"
  chmod 700 "$dir"
  tpm_ensure "$dir/tpm" PRINCIPAL_SWTPM_PORT 2331 "$log"
  store="${AGENT_GATEWAY_DEMO_TPM2_PKCS11_STORE:-$(state_get PRINCIPAL_STORE)}"
  store="${store:-$dir/tpm2-pkcs11}"
  if [ ! -d "$store" ]; then
    mkdir -p "$store"
    state_set PRINCIPAL_STORE_CREATED 1
  fi
  chmod 700 "$store"
  store="$(cd "$store" && pwd)"
  state_set PRINCIPAL_STORE "$store"
  local root
  root="$(state_get ROOT_KEY_ID)"
  if [ -n "$root" ] && [ "$(rooted_rows key "$root")" = "$PRINCIPAL" ]; then
    # Re-registering would move the key's window, voiding the root's signature on it.
    info "    key $PRINCIPAL is registered and signed by the root: left as it is"
  else
    local replace=()
    [ "${AGENT_GATEWAY_DEMO_REPLACE_PRINCIPAL:-0}" = 1 ] && replace=(--replace)
    if ! registry_cli register-principal-key.sh "$PRINCIPAL" "${replace[@]}"; then
      if tail -n 3 "$log" | grep -q 'registered with a different public key'; then
        die "$PRINCIPAL is already registered in this database with another key (an earlier demo's TPM?). To register this TPM's key instead, re-run with AGENT_GATEWAY_DEMO_REPLACE_PRINCIPAL=1 (permissions signed by the old key stop working)."
      fi
      die "registering $PRINCIPAL failed (see $log)"
    fi
  fi
  info "    key $PRINCIPAL in token ${AGENT_GATEWAY_TPM_TOKEN_LABEL} (store: $store)"
  step_done

  if [ -z "$root" ]; then
    step "Granting $PRINCIPAL the scope: ${PRINCIPAL_SCOPE[*]}" "$log"
    registry_cli grant-principal-scope.sh "$PRINCIPAL" "${PRINCIPAL_SCOPE[@]}"
    step_done
    return 0
  fi
  step "Granting $PRINCIPAL the scope: ${PRINCIPAL_SCOPE[*]}; the root signs her key and scope" "$log"
  local rooted d missing=()
  rooted=" $(rooted_rows scope "$root" | tr '\n' ' ') "
  for d in "${PRINCIPAL_SCOPE[@]}"; do
    [[ "$d" == *:* ]] || d="$d:443"
    [[ "$rooted" == *" $d "* ]] || missing+=("$d")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    registry_cli grant-principal-scope.sh "$PRINCIPAL" "${missing[@]}" --valid-days "$ROOTED_SCOPE_DAYS"
  fi
  root_sign_principal "$root"
  step_done
}

# rooted_rows key|scope ROOT: org-alice's active key id, or her active scopes' destinations, that carry a
# signature by ROOT (the demo checks the id; the gateway verifies the signature).
rooted_rows() {
  local sql
  if [ "$1" = key ]; then
    sql="SELECT key_id FROM principal_signing_keys WHERE key_id = :'p' AND revoked_at IS NULL AND not_after > now() AND root_key_id = :'r'"
  else
    sql="SELECT destination FROM principal_key_permissions WHERE signing_key_id = :'p' AND revoked_at IS NULL AND not_after > now() AND root_key_id = :'r' ORDER BY destination"
  fi
  psql_admin -tA -v "p=$PRINCIPAL" -v "r=$2" <<<"$sql;"
}

# root_sign_principal ROOT: the root (in its own token) signs org-alice's rows that it has not signed. The
# root's token and the principal's are in different TPMs, and a PKCS#11 process talks to one, so this is
# root-sign-pending.sh run as the root's holder rather than --root-key on the principal's commands. No root
# signed them before (--sign-unvouched), so first make sure they are all org-alice's: never sign rows the
# demo did not make.
root_sign_principal() {
  local root="$1" listed rows foreign out
  listed="$(root_cli root-sign-pending.sh --root-key "$root" </dev/null)" || true
  if grep -q '^nothing to sign' <<<"$listed"; then
    info "    key $PRINCIPAL and her scope are signed by root $(cut -c1-19 <<<"$root")…"
    return 0
  fi
  rows="$(grep -E '^  (key|scope) ' <<<"$listed")" || die "root-sign-pending.sh listed nothing to sign (see $CURRENT_LOG)"
  foreign="$(grep -vE "^  key $PRINCIPAL, |^  scope [0-9]+: $PRINCIPAL -> " <<<"$rows")" || true
  if [ -n "$foreign" ]; then
    die "the registry holds active rows the demo did not make and no root signed; the demo root signs only $PRINCIPAL's:
$foreign"
  fi
  out="$(root_cli root-sign-pending.sh --root-key "$root" --sign-unvouched --yes)" || die "root-signing $PRINCIPAL's rows failed (see $CURRENT_LOG)"
  info "    root-sign-pending.sh --root-key $(cut -c1-19 <<<"$root")… --sign-unvouched --yes (as the root's holder, its own TPM):"
  info "      $(grep '^signed ' <<<"$out")"
}

step_agent() {
  local log="$STATE_DIR/logs/agents.log"
  step "Creating agent $DEMO_AGENT (own swtpm, TPM key, carrier cert, sidecar) with grants: ${DEMO_AGENT_GRANTS[*]}" "$log"
  local g args=()
  for g in "${DEMO_AGENT_GRANTS[@]}"; do args+=(--grant "$g"); done
  if [ -f "$AGENTS_DIR/$DEMO_AGENT/agent.env" ]; then
    info "    $DEMO_AGENT exists: making sure its swtpm and sidecar run, refreshing its grants"
    "$DEMO_ROOT/demo/demo-agent.sh" start "$DEMO_AGENT" 2>>"$log" >/dev/null
    "$DEMO_ROOT/demo/demo-agent.sh" grant --missing-only "$DEMO_AGENT" "${DEMO_AGENT_GRANTS[@]}" 2>>"$log" >/dev/null
  else
    "$DEMO_ROOT/demo/demo-agent.sh" create --identity "$DEMO_AGENT" "${args[@]}" 2>>"$log" >/dev/null
  fi
  local env="$AGENTS_DIR/$DEMO_AGENT/agent.env"
  info "    TPM key $(state_get TPM_HANDLE "$env") in swtpm 127.0.0.1:$(state_get SWTPM_PORT "$env"), public key sha256 $(sha_of "$AGENTS_DIR/$DEMO_AGENT/spki.der" | cut -c1-16)…"
  info "    sidecar http://127.0.0.1:$(state_get SIDECAR_PORT "$env") (state: $AGENTS_DIR/$DEMO_AGENT)"
  step_done
}

step_prove() {
  local log="$STATE_DIR/logs/setup.log" sidecar body
  step "Proving it: GET https://docstore/health as $DEMO_AGENT through its sidecar and the gateway" "$log"
  sidecar="$(state_get SIDECAR_PORT "$AGENTS_DIR/$DEMO_AGENT/agent.env")"
  # The agent's proxy credential goes in the environment, never on the command line (ps shows that to all).
  body="$(https_proxy="http://agent:$(tr -d '\n' <"$AGENTS_DIR/$DEMO_AGENT/proxy.token")@127.0.0.1:$sidecar" \
    curl -sS --fail-with-body --max-time 30 --noproxy '' --cacert "$(certs_dir)/mock-ca.pem" \
    https://docstore/health 2>>"$log")" || {
    printf '%s\n' "$body" >>"$log"
    die "the request through the tunnel failed (logs: $log, $STATE_DIR/logs/gateway.log, $AGENTS_DIR/$DEMO_AGENT/sidecar.log)"
  }
  local target
  target="127.0.0.1:$(state_get DOCSTORE_PORT)"
  [ "$(state_get RUNTIME)" = compose ] && target="docstore:443 in the compose network"
  info "    https_proxy=http://agent:<token>@127.0.0.1:$sidecar curl https://docstore/health  (CONNECT docstore:443 -> gateway -> $target)"
  printf '%s\n' "$body"
  step_done
}

# ---- compose runtime (AGENT_GATEWAY_DEMO_RUNTIME=compose) -----------------------------------------------
# PostgreSQL, migrations, the mocks and the gateway run from compose.yaml; the principal and the agents stay
# on the host (the TPM is there) and use the published loopback ports.

COMPOSE=()

find_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif podman compose version >/dev/null 2>&1; then
    COMPOSE=(podman compose)
  elif command -v docker-compose >/dev/null &&
    [ "$(docker-compose version --short 2>/dev/null | cut -d. -f1 | tr -dc 0-9)" -ge 2 ] 2>/dev/null; then
    COMPOSE=(docker-compose)
  else
    return 1
  fi
}

# compose ARGS...: the compose CLI on compose.yaml with the demo's ports and passwords.
compose() {
  [ "${#COMPOSE[@]}" -gt 0 ] || find_compose || die "no container engine with compose (docker compose, podman compose)"
  AGENT_GATEWAY_DEMO_GATEWAY_PORT="$(state_get GATEWAY_PORT)" AGENT_GATEWAY_DEMO_ADMIN_PORT="$(state_get ADMIN_PORT)" \
    AGENT_GATEWAY_DEMO_PG_PORT="$(state_get PG_PORT)" \
    AGENT_GATEWAY_DEMO_PG_SUPERUSER_PASSWORD="$PG_SUPERUSER_PASSWORD" \
    AGENT_GATEWAY_DEMO_PG_ADMIN_PASSWORD="$PG_ADMIN_PASSWORD" \
    AGENT_GATEWAY_DEMO_PG_GATEWAY_PASSWORD="$PG_GATEWAY_PASSWORD" \
    "${COMPOSE[@]}" --project-directory "$DEMO_ROOT" -f "$DEMO_ROOT/compose.yaml" "$@"
}

step_compose() {
  local log="$STATE_DIR/logs/compose.log" i port
  step "Starting PostgreSQL, migrations, mocks and the gateway (${COMPOSE[*]} up -d --build)" "$log"
  [ "$(certs_dir)" = "$DEMO_ROOT/certs" ] || die "the compose runtime reads ./certs: unset AGENT_GATEWAY_DEMO_CERTS_DIR"
  port="$(settle_port PG_PORT AGENT_GATEWAY_DEMO_PG_PORT 5432 compose:postgres)"
  state_set PG_MODE compose
  logged compose up -d --build
  for i in $(seq 150); do
    gateway_ready && break
    if [ "$i" = 150 ]; then
      compose ps -a >>"$log" 2>&1 || true
      compose logs --no-color --tail 50 >>"$log" 2>&1 || true
      die "the gateway did not become ready within 5 minutes (${COMPOSE[*]} logs gateway)"
    fi
    sleep 2
  done
  state_set DB_SUPER_URL "postgresql://postgres:$(url_encode "$PG_SUPERUSER_PASSWORD")@127.0.0.1:$port/$PG_DB"
  state_set DB_ADMIN_URL "postgresql://$PG_ADMIN_ROLE:$(url_encode "$PG_ADMIN_PASSWORD")@127.0.0.1:$port/$PG_DB"
  state_set DB_GATEWAY_URL "postgresql://$PG_GATEWAY_ROLE:$(url_encode "$PG_GATEWAY_PASSWORD")@127.0.0.1:$port/$PG_DB"
  info "    postgres 127.0.0.1:$port, gateway 127.0.0.1:$GATEWAY_PORT, admin http://127.0.0.1:$ADMIN_PORT"
  info "    docstore:443 and messaging:443 inside the compose network (logs: ${COMPOSE[*]} logs -f)"
  step_done
}

cmd_setup() {
  trap on_exit_report EXIT
  # Remember the parents of the state dir that setup creates (e.g. ~/.local/state), so teardown can remove
  # them again when they are still empty.
  local d="$STATE_DIR" created=()
  while [ ! -e "$d" ]; do
    created+=("$d")
    d="$(dirname "$d")"
  done
  mkdir -p "$STATE_DIR/logs" "$STATE_DIR/run"
  if [ "${#created[@]}" -gt 1 ]; then state_set CREATED_PARENTS "$(printf '%s\n' "${created[@]:1}" | paste -sd '|')"; fi
  chmod 700 "$STATE_DIR"
  [ -f "$DEMO_ENV_FILE" ] || state_set CREATED "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  load_secrets
  state_set TPM_USER_PIN "$AGENT_GATEWAY_TPM_USER_PIN"
  state_set TPM_SO_PIN "$AGENT_GATEWAY_TPM_SO_PIN"
  state_set TPM_TOKEN_LABEL "$AGENT_GATEWAY_TPM_TOKEN_LABEL"
  local runtime="${AGENT_GATEWAY_DEMO_RUNTIME:-$(state_get RUNTIME)}"
  runtime="${runtime:-native}"
  case "$runtime" in
    native) STEP_TOTAL=14 ;;
    compose)
      STEP_TOTAL=9
      find_compose || die "AGENT_GATEWAY_DEMO_RUNTIME=compose needs docker compose or podman compose"
      ;;
    *) die "AGENT_GATEWAY_DEMO_RUNTIME must be native or compose, not $runtime" ;;
  esac
  if [ -n "$(state_get RUNTIME)" ] && [ "$(state_get RUNTIME)" != "$runtime" ]; then
    die "this demo was set up with the $(state_get RUNTIME) runtime: ./demo/demo.sh teardown first"
  fi
  state_set RUNTIME "$runtime"
  info "agent_gateway demo setup (state: $STATE_DIR, runtime: $runtime)"
  step_packages
  step_build
  step_certs
  step_ports
  if [ "$runtime" = compose ]; then
    step_compose
  else
    step_postgres
    step_migrations
    step_root
    step_config
    step_mocks
    step_gateway
  fi
  step_principal
  step_agent
  step_prove
  trap - EXIT
  cat >&2 <<EOF

Demo ready. Next:
  ./demo/demo-agent.sh prompt $DEMO_AGENT --prompt "Access https://docstore/documents using curl"
EOF
  [ "$runtime" = compose ] || info "  ./demo/demo.sh attack-db     # a database-only attacker's grant meets the root of trust"
  info "  ./demo/demo.sh teardown      # stop everything and remove all demo state"
}

# ---- attack-db: a database-only attacker meets the root of trust ---------------------------------------

# attack_sql VAR=VALUE... <<<SQL: one psql call as the admin role, variables bound with -v (never spliced
# into the SQL text); prints the query's tuples.
attack_sql() {
  local args=() kv
  for kv in "$@"; do args+=(-v "$kv"); done
  psql_admin -tA "${args[@]}"
}

cmd_attack_db() {
  [ -f "$DEMO_ENV_FILE" ] && [ -n "$(state_get GATEWAY_PORT)" ] || die "no demo in $STATE_DIR: run ./demo/demo.sh setup first"
  load_secrets
  local root role
  root="$(state_get ROOT_KEY_ID)"
  [ -n "$root" ] || die "this demo has no root of trust (the compose runtime, or set up before roots): ./demo/demo.sh teardown, then setup"
  pid_alive "$STATE_DIR/run/gateway.pid" >/dev/null || die "the demo gateway is not running: ./demo/demo.sh setup"
  role="$(sed -E 's#^postgresql://([^:@]*).*#\1#' <<<"$(state_get DB_ADMIN_URL)")"
  local work tag key_id perm_id agent="$ATTACK_AGENT" dest="$ATTACK_DEST:443" adir
  work="$(mktemp -d "$STATE_DIR/attack-db.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: the trap must remove this run's directory
  trap "rm -rf '$work'" EXIT
  CURRENT_LOG="$STATE_DIR/logs/attack-db.log"
  tag="$(date -u +%Y%m%dT%H%M%S)-$$"
  key_id="attacker-$tag"
  perm_id="attack-$tag"
  adir="$AGENTS_DIR/$agent"
  info "attack-db: the registry's admin role ($role), without the root key, grants $agent $dest"
  info "(gateway: policy.trust_roots = root $root)"

  info "0. agent $agent: its own swtpm and TPM key, nothing signed for it by $PRINCIPAL"
  if [ -f "$adir/agent.env" ]; then
    "$DEMO_ROOT/demo/demo-agent.sh" start "$agent" >>"$CURRENT_LOG" 2>&1 || die "starting $agent failed (see $CURRENT_LOG)"
  else
    "$DEMO_ROOT/demo/demo-agent.sh" create --identity "$agent" >>"$CURRENT_LOG" 2>&1 || die "creating $agent failed (see $CURRENT_LOG)"
  fi

  local spki window nb na
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/attacker.key" 2>>"$CURRENT_LOG"
  spki="$(openssl pkey -in "$work/attacker.key" -pubout -outform DER | od -An -v -tx1 | tr -d ' \n')"
  # The window in the database's clock and the exact text the signed bytes use (docs/contract.md "Signed
  # bytes": UTC, six fractional digits).
  window="$(attack_sql <<<"SELECT to_char((date_trunc('second', now()) - interval '1 minute') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') || ' ' || to_char((date_trunc('second', now()) + interval '1 day') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"');")"
  read -r nb na <<<"$window"
  info "1. inserting principal key $key_id (a fresh P-256 key made with openssl) as $role"
  attack_sql "k=$key_id" "spki=$spki" "nb=$nb" "na=$na" >/dev/null <<'SQL'
INSERT INTO principal_signing_keys (key_id, algorithm, public_key_spki_der, not_before, not_after)
VALUES (:'k', 'ecdsa_p256_sha256', decode(:'spki', 'hex'), :'nb', :'na');
SQL

  local scope_id
  info "2. inserting scope $key_id -> $dest as $role"
  scope_id="$(attack_sql "k=$key_id" "d=$dest" "nb=$nb" "na=$na" <<'SQL'
INSERT INTO principal_key_permissions (signing_key_id, destination, not_before, not_after)
VALUES (:'k', :'d', :'nb', :'na') RETURNING id;
SQL
)"

  local subject
  subject="$(od -An -v -tx1 "$adir/spki.der" | tr -d ' \n')"
  info "3. inserting permission $perm_id: $agent (its TPM key) -> $dest, signed with the attacker's key"
  # The permission's signed bytes (docs/contract.md "Signed bytes"), signed the way any attacker can.
  printf 'agent-gateway-permission-v1\npermission_id=%s\nsigning_key_id=%s\nsubject_identity=%s\nsubject_public_key_spki_der=%s\ndestination=%s\nnot_before=%s\nnot_after=%s\n' \
    "$perm_id" "$key_id" "$agent" "$subject" "$dest" "$nb" "$na" >"$work/permission.txt"
  openssl dgst -sha256 -sign "$work/attacker.key" -out "$work/permission.sig" "$work/permission.txt"
  attack_sql "p=$perm_id" "k=$key_id" "a=$agent" "spki=$subject" "d=$dest" "nb=$nb" "na=$na" \
    "sig=$(od -An -v -tx1 "$work/permission.sig" | tr -d ' \n')" >/dev/null <<'SQL'
INSERT INTO permission_registry (permission_id, signing_key_id, subject_identity, subject_public_key_spki_der,
  destination, not_before, not_after, signature)
VALUES (:'p', :'k', :'a', decode(:'spki', 'hex'), :'d', :'nb', :'na', decode(:'sig', 'hex'));
SQL

  local sidecar status gwlog from reason
  sidecar="$(state_get SIDECAR_PORT "$adir/agent.env")"
  gwlog="$STATE_DIR/logs/gateway.log"
  from=$(($(stat -c %s "$gwlog") + 1))
  info "4. $agent: GET https://$ATTACK_DEST/health through its sidecar and the gateway"
  status="$(https_proxy="http://agent:$(tr -d '\n' <"$adir/proxy.token")@127.0.0.1:$sidecar" \
    curl -sS --max-time 30 --noproxy '' --cacert "$(certs_dir)/mock-ca.pem" -o "$work/body" \
    -w '%{http_connect} %{http_code}' "https://$ATTACK_DEST/health" 2>>"$CURRENT_LOG")" || true
  sleep 0.2
  # The gateway's log line for this CONNECT: its deny reason (the 403 also carries it in the
  # agent-gateway-deny-reason header, which the sidecar does not pass on to the agent).
  reason="$(tail -c "+$from" "$gwlog" | node -e '
    const agent = process.argv[1];
    let last;
    for (const line of require("node:fs").readFileSync(0, "utf8").split("\n")) {
      try {
        const j = JSON.parse(line);
        if (j.source_identity === agent && /^CONNECT (denied|allowed)$/.test(j.msg)) last = j;
      } catch {}
    }
    if (!last) process.exit(0);
    const verdict = last.deny_reason ? `${last.status} ${last.deny_reason}` : "allowed";
    const shown = { policy_decision: last.policy_decision, deny_reason: last.deny_reason, deny_detail: last.deny_detail, status: last.status, msg: last.msg };
    process.stdout.write(`${verdict}\t${JSON.stringify(shown)}`);
  ' "$agent")"
  info "   curl: CONNECT $dest -> ${status%% *}"
  info "   gateway log: ${reason#*$'\t'}"
  local verdict="${reason%%$'\t'*}"
  info "   → ${verdict:-no gateway log line}"

  info "5. agent-permissions.sh check --config $(config_path) $agent <its SPKI> $ATTACK_DEST"
  (
    export AGENT_GATEWAY_DATABASE_URL
    AGENT_GATEWAY_DATABASE_URL="$(state_get DB_ADMIN_URL)"
    "$DEMO_ROOT/registry-cli/agent-permissions.sh" check --config "$(config_path)" "$agent" "$adir/spki.der" "$ATTACK_DEST" 2>&1
  ) | sed 's/^/   /' >&2 || true

  info "6. cleaning up: revoking the three rows (migration 0005 forbids DELETE; revoked_at is final)"
  attack_sql "p=$perm_id" "k=$key_id" "s=$scope_id" >/dev/null <<'SQL'
UPDATE permission_registry SET revoked_at = now() WHERE permission_id = :'p';
UPDATE principal_key_permissions SET revoked_at = now() WHERE id = :'s';
UPDATE principal_signing_keys SET revoked_at = now() WHERE key_id = :'k';
SQL
  info "   revoked permission $perm_id, scope $scope_id, key $key_id"
  if [ "$verdict" = "403 signer_not_rooted" ]; then
    info "The admin role alone granted nothing: without a root signature its key is not a principal."
  else
    die "expected 403 signer_not_rooted, got: ${verdict:-no answer} (is policy.trust_roots set in $(config_path)?)"
  fi
}

# ---- status ---------------------------------------------------------------------------------------------

show_proc() {
  local pid
  if pid="$(pid_alive "$2")"; then
    printf '  %-28s running (pid %s)%s\n' "$1" "$pid" "${3:+, $3}"
  else
    printf '  %-28s not running\n' "$1"
  fi
}

cmd_status() {
  if [ ! -f "$DEMO_ENV_FILE" ]; then
    echo "no demo state in $STATE_DIR (run ./demo/demo.sh setup)"
    return 0
  fi
  echo "demo state: $STATE_DIR"
  show_proc postgres "$STATE_DIR/run/postgres.pid" "127.0.0.1:$(state_get PG_PORT)"
  show_proc "mock docstore" "$STATE_DIR/run/mock-docstore.pid" "127.0.0.1:$(state_get DOCSTORE_PORT)"
  show_proc "mock messaging" "$STATE_DIR/run/mock-messaging.pid" "127.0.0.1:$(state_get MESSAGING_PORT)"
  show_proc gateway "$STATE_DIR/run/gateway.pid" "127.0.0.1:$(state_get GATEWAY_PORT)"
  show_proc "principal swtpm" "$(principal_dir)/tpm/swtpm.proc" "127.0.0.1:$(state_get PRINCIPAL_SWTPM_PORT)"
  show_proc "principal tpm2-abrmd" "$(principal_dir)/tpm/abrmd.proc"
  if [ -n "$(state_get ROOT_KEY_ID)" ]; then
    show_proc "root swtpm" "$(root_dir)/tpm/swtpm.proc" "127.0.0.1:$(state_get ROOT_SWTPM_PORT), $(state_get ROOT_KEY_ID | cut -c1-19)…"
  fi
  local d h
  for d in "$AGENTS_DIR"/*/; do
    [ -f "$d/agent.env" ] || continue
    h="$(basename "$d")"
    show_proc "agent $h swtpm" "$d/tpm/swtpm.proc" "127.0.0.1:$(state_get SWTPM_PORT "$d/agent.env")"
    show_proc "agent $h sidecar" "$d/sidecar.pid" "http://127.0.0.1:$(state_get SIDECAR_PORT "$d/agent.env")"
  done
}

# ---- teardown -------------------------------------------------------------------------------------------

cmd_teardown() {
  local d cfg certs pgdir store f
  info "agent_gateway demo teardown (state: $STATE_DIR)"
  if [ -d "$AGENTS_DIR" ]; then
    for d in "$AGENTS_DIR"/*/; do
      [ -d "$d" ] || continue
      if [ "$(state_get PG_MODE)" = external ] && [ -f "$d/agent.env" ]; then
        # The database outlives the demo: revoke what the demo signed in it.
        "$DEMO_ROOT/demo/demo-agent.sh" delete "$(basename "$d")" --force || true
        continue
      fi
      info "==> Stopping agent $(basename "$d")"
      pid_stop "$d/sidecar.pid" sidecar
      tpm_down "$d/tpm"
    done
  fi
  if [ "$(state_get RUNTIME)" = compose ]; then
    load_secrets
    info "==> Removing the compose services, volumes and the agent-gateway:local image"
    compose down -v --remove-orphans || warn "compose down failed; run: docker compose down -v"
    "${COMPOSE[0]}" image rm agent-gateway:local >/dev/null 2>&1 || true
  fi
  info "==> Stopping gateway and mock services"
  pid_stop "$STATE_DIR/run/gateway.pid" gateway
  pid_stop "$STATE_DIR/run/mock-docstore.pid" "mock docstore"
  pid_stop "$STATE_DIR/run/mock-messaging.pid" "mock messaging"
  info "==> Stopping the principal's TPM"
  tpm_down "$(principal_dir)/tpm"
  if [ -d "$(root_dir)/tpm" ]; then
    info "==> Stopping the root's TPM"
    tpm_down "$(root_dir)/tpm"
  fi

  pgdir="$(state_get PG_DIR)"
  if [ "$(state_get PG_MODE)" = local ] && [ -n "$pgdir" ]; then
    info "==> Removing the PostgreSQL cluster"
    # pg_ctl stop when dist/ still has the set-up code; the PID file (SIGTERM, then SIGKILL) in any case.
    if [ -f "$pgdir/data/postmaster.pid" ] && [ -f "$DEMO_ROOT/dist/dev-support/cli.js" ]; then
      dev_support postgres stop --dir "$pgdir" >/dev/null || true
    fi
    pid_stop "$STATE_DIR/run/postgres.pid" postgres
    case "$pgdir" in
      "$STATE_DIR"/* | /var/tmp/agent-gateway-demo-pg.*) rm -rf "$pgdir" ;;
      *) warn "not removing unexpected cluster dir $pgdir" ;;
    esac
  elif [ "$(state_get PG_MODE)" = external ]; then
    info "    (external database from AGENT_GATEWAY_DATABASE_URL: the agents' permissions were revoked; the"
    info "     principal key and scope rows of $PRINCIPAL stay, as the registry never deletes rows)"
  fi

  store="$(state_get PRINCIPAL_STORE)"
  if [ -n "$store" ] && [ -d "$store" ]; then
    case "$store" in
      "$STATE_DIR"/*) ;;
      *)
        if [ "$(state_get PRINCIPAL_STORE_CREATED)" = 1 ]; then
          info "==> Removing the principal's tpm2-pkcs11 store $store"
          rm -rf "$store"
        else
          info "    keeping $store (AGENT_GATEWAY_DEMO_TPM2_PKCS11_STORE existed before the demo)"
        fi
        ;;
    esac
  fi

  cfg="$(config_path)"
  if [ -f "$cfg" ] && [ "$(state_get CONFIG_WRITTEN)" = 1 ]; then
    if [ "$(sha_of "$cfg")" = "$(state_get CONFIG_SHA256)" ]; then
      info "==> Removing $cfg"
      rm -f "$cfg"
    else
      warn "$cfg changed since the demo wrote it: keeping it"
    fi
  fi

  certs="$(certs_dir)"
  info "==> Removing demo TLS material from $certs"
  for f in server-ca.pem server-ca-key.pem server.pem server-key.pem mock-ca.pem mock-ca-key.pem mock-services.pem \
    mock-services-key.pem; do
    rm -f "$certs/$f"
  done
  if [ -d "$certs" ] && [ "$certs" != "$DEMO_ROOT/certs" ]; then rmdir "$certs" 2>/dev/null || true; fi

  if [ -d "$STATE_DIR" ]; then
    info "==> Removing $STATE_DIR"
    rm -rf "$AGENTS_DIR" "$(principal_dir)" "$(root_dir)" "$STATE_DIR/run" "$STATE_DIR/logs" "$STATE_DIR/postgres" \
      "$STATE_DIR/receipts"
    rm -f "$STATE_DIR/receipts.key" "$STATE_DIR/receipts.pub.pem"
    rm -f "$DEMO_ENV_FILE".*
    local parents
    parents="$(state_get CREATED_PARENTS)"
    rm -f "$DEMO_ENV_FILE"
    if rmdir "$STATE_DIR" 2>/dev/null; then
      local IFS='|' p
      for p in $parents; do rmdir "$p" 2>/dev/null || break; done
    else
      warn "$STATE_DIR still holds files the demo did not create: $(find "$STATE_DIR" -mindepth 1 -maxdepth 1 -printf '%f ')"
    fi
  fi
  info "Demo removed."
}

# ---- receipts: what an auditor does with the gateway's receipts -----------------------------------------

cmd_receipts() {
  local cfg dir pub files=() gw cli tamper rc=0
  cfg="$(config_path)"
  dir="$STATE_DIR/receipts/demo-gateway"
  [ -f "$cfg" ] || die "no demo config: ./demo/demo.sh setup first"
  [ -d "$dir" ] || die "no receipts in $dir yet: ./demo/demo.sh setup first (its proof request writes one)"
  gw="$(node_prog gateway/main.js)"
  cli="$(node_prog registry-cli/cli.js)"
  pub="$STATE_DIR/receipts.pub.pem"
  info "1. The gateway's receipt public key, as an auditor receives it:"
  info "   \$ agent_gateway receipts-key --config $(basename "$cfg")"
  node "$gw" receipts-key --config "$cfg" | tee "$pub.out" | sed 's/^/   /' >&2
  sed -n '/-----BEGIN PUBLIC KEY-----/,/-----END PUBLIC KEY-----/p' "$pub.out" >"$pub"
  rm -f "$pub.out"
  mapfile -t files < <(find "$dir" -maxdepth 1 -name 'receipts-*.jsonl' | sort)
  [ "${#files[@]}" -gt 0 ] || die "no receipt files in $dir"
  info ""
  info "2. Verify the chain, its signatures and every grant against the registry (the gateway is running, so"
  info "   its newest records may not be signed yet and the chain has no stop checkpoint: --allow-open-tail):"
  info "   \$ agent_gateway_registry receipts verify ${files[*]#"$STATE_DIR/"} --gateway-key receipts.pub.pem --registry … --allow-open-tail"
  node "$cli" receipts verify "${files[@]}" --gateway-key "$pub" --registry "$(state_get DB_ADMIN_URL)" \
    --allow-open-tail 2>&1 | sed 's/^/   /' >&2 || rc=1
  info ""
  info "3. The receipts as a table:"
  info "   \$ agent_gateway_registry receipts show …"
  node "$cli" receipts show "${files[@]}" 2>&1 | tail -n 12 | sed 's/^/   /' >&2 || true
  tamper="$(mktemp -d "${TMPDIR:-/tmp}/agw-receipts-tamper.XXXXXX")"
  cp "${files[@]}" "$tamper/"
  local edited
  edited="$(node -e '
    const fs = require("node:fs");
    const [dir] = process.argv.slice(1);
    const file = fs.readdirSync(dir).sort().map((n) => `${dir}/${n}`)
      .find((f) => fs.readFileSync(f, "utf8").includes("\"kind\":\"tunnel\""));
    const lines = fs.readFileSync(file, "utf8").split("\n");
    const i = lines.findIndex((l) => l.includes("\"kind\":\"tunnel\""));
    const before = lines[i];
    lines[i] = before.replace(/"bytes_down":(\d+)/, (_, n) => `"bytes_down":${Number(n) + 1000000}`);
    fs.writeFileSync(file, lines.join("\n"));
    const seq = JSON.parse(before).seq;
    process.stdout.write(`${file.split("/").pop()} line ${i + 1} (seq ${seq})`);
  ' "$tamper")"
  info ""
  info "4. Someone adds 1,000,000 to bytes_down of one receipt in a copy ($edited) and verifies again:"
  local out trc=0
  out="$(node "$cli" receipts verify "$tamper"/receipts-*.jsonl --gateway-key "$pub" --allow-open-tail 2>&1)" || trc=$?
  printf '%s\n' "$out" | sed 's/^/   /' >&2
  rm -rf "$tamper"
  if [ "$trc" = 0 ]; then
    warn "receipts verify accepted the tampered copy"
    rc=1
  else
    info "   → exit $trc: the edit is detected."
  fi
  return "$rc"
}

# Sourcing the file (for debugging one step) defines the functions without running anything.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
  setup) cmd_setup ;;
  teardown) cmd_teardown ;;
  attack-db) cmd_attack_db ;;
  receipts) cmd_receipts ;;
  status) cmd_status ;;
  -h | --help | help) usage 0 ;;
  *) usage 2 >&2 ;;
esac

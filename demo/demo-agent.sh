#!/usr/bin/env bash
# Demo agents: each one a TPM-backed machine identity with its own swtpm, key, carrier certificate and
# sidecar, authorized by permissions that principal org-alice signs with her own TPM key.
#
#   demo-agent.sh create --identity ID [--grant DEST]... [--handle H]   prints the handle (= ID by default)
#   demo-agent.sh grant HANDLE DEST...                                   sign more permissions for it
#   demo-agent.sh prompt HANDLE --prompt TEXT                            run the agent through its sidecar
#   demo-agent.sh requests [--all] [--identity ID] [--json]              access requests: what agents were denied
#   demo-agent.sh approve REQUEST_ID [--for DURATION | --days N]         org-alice signs what was requested
#   demo-agent.sh delete HANDLE [--force]                                stop it, revoke its rows, remove it
#   demo-agent.sh start HANDLE                                           (re)start its swtpm and sidecar
#   demo-agent.sh list
#
# A CONNECT denied for want of a grant is recorded by the gateway as an access request; the 403 names it
# (agent-gateway-request-id). requests lists them (pending by default) and approve has org-alice's TPM key
# sign exactly that permission (agent-permissions.sh requests / approve, README "Access requests").
#
# prompt runs $AGENT_GATEWAY_DEMO_AGENT_CMD (the prompt is appended as the last argument) with
# HTTPS_PROXY=http://agent:<token>@127.0.0.1:<sidecar port> (the sidecar refuses CONNECTs without the
# agent's token, <state>/proxy.token, mode 0600) and the mock-services CA given only to that process
# (CURL_CA_BUNDLE, SSL_CERT_FILE, NODE_EXTRA_CA_CERTS). Default: `claude -p` when Claude Code is installed
# (grant the agent api.anthropic.com for that), else a plain curl of every https URL in the prompt
# (AGENT_GATEWAY_DEMO_AGENT_CMD=builtin:fetch selects that one explicitly).
#
# Needs ./demo/demo.sh setup first. Per-agent state: <state dir>/demo-agents/<handle>.
# Env: AGENT_GATEWAY_DEMO_SWTPM_PORT (default 2321; control port = +1; a taken port is replaced by a free
# one), AGENT_GATEWAY_DEMO_TPM_HANDLE (default 0x81010004), AGENT_GATEWAY_DEMO_SIDECAR_PORT (default 3128),
# AGENT_GATEWAY_TPM_USER_PIN / _SO_PIN, AGENT_GATEWAY_DEMO_STATE_DIR.
set -euo pipefail

DEMO_PROG="demo-agent.sh"
# shellcheck source=demo/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$DEMO_ROOT"

PRINCIPAL="org-alice"
SIDECAR_TOKEN="agent-gateway-sidecar"

usage() {
  awk 'NR > 1 && /^#/ { if ($0 !~ /shellcheck/) { sub(/^# ?/, ""); print }; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

need_setup() {
  if [ ! -f "$DEMO_ENV_FILE" ] || [ -z "$(state_get GATEWAY_PORT)" ]; then
    die "no demo in $STATE_DIR: run ./demo/demo.sh setup first"
  fi
  load_secrets
}

agent_dir() { printf '%s/%s' "$AGENTS_DIR" "$1"; }

valid_handle() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]]; }

need_agent() {
  valid_handle "$1" || die "not a handle: $1"
  [ -f "$(agent_dir "$1")/agent.env" ] || die "no agent $1 (./demo/demo-agent.sh list)"
}

aget() { state_get "$2" "$(agent_dir "$1")/agent.env"; }
aset() { state_set "$2" "$3" "$(agent_dir "$1")/agent.env"; }

# principal_env: the registry CLI's environment as the principal: database admin URL + the principal's TPM
# (started if needed). Run it in a subshell: it exports into the caller.
principal_env() {
  local pdir="$STATE_DIR/principal/tpm"
  if ! tpm_running "$pdir"; then
    local port
    port="$(state_get PRINCIPAL_SWTPM_PORT)"
    if [ -z "$port" ] || ! port_free "$port" || ! port_free $((port + 1)); then
      port="$(free_port_pair)"
      state_set PRINCIPAL_SWTPM_PORT "$port"
    fi
    info "    starting the principal's TPM (swtpm 127.0.0.1:$port)"
    tpm_up "$pdir" "$port" "$STATE_DIR/logs/principal.log"
  fi
  tpm_env_exports "$pdir"
  export TPM2_PKCS11_STORE AGENT_GATEWAY_DATABASE_URL
  TPM2_PKCS11_STORE="$(state_get PRINCIPAL_STORE)"
  AGENT_GATEWAY_DATABASE_URL="$(state_get DB_ADMIN_URL)"
}

# The registry CLI as the principal, its output in the current log.
principal_cli() {
  local script="$DEMO_ROOT/registry-cli/$1"
  shift
  (
    principal_env
    logged "$script" "$@"
  )
}

# shown_cli ENV_FN SCRIPT ARGS...: the registry CLI in the environment ENV_FN sets up, its output shown (stdout
# to stdout, stderr to stderr, in that order) and appended to the current log.
shown_cli() {
  local env_fn="$1" script="$DEMO_ROOT/registry-cli/$2" out err rc=0
  shift 2
  printf '+ %s\n' "$(redact "$script $*")" >>"${CURRENT_LOG:-/dev/null}"
  err="$(mktemp)"
  out="$(
    "$env_fn" 2>>"$err" || exit 1
    "$script" "$@" 2>>"$err"
  )" || rc=$?
  printf '%s\n' "$out" >>"${CURRENT_LOG:-/dev/null}"
  cat "$err" >>"${CURRENT_LOG:-/dev/null}"
  [ -z "$out" ] || printf '%s\n' "$out"
  cat "$err" >&2
  rm -f "$err"
  return "$rc"
}

# registry_env: the database alone (admin URL), for reading the registry without any TPM.
registry_env() {
  export AGENT_GATEWAY_DATABASE_URL
  AGENT_GATEWAY_DATABASE_URL="$(state_get DB_ADMIN_URL)"
}

# Where sidecars connect: the gateway, or what demo/fleet.sh put in front of its gateways (SIDECAR_GATEWAY).
sidecar_gateway() {
  local g
  g="$(state_get SIDECAR_GATEWAY)"
  printf '%s' "${g:-127.0.0.1:$(state_get GATEWAY_PORT)}"
}

sidecar_args() {
  local h="$1" dir
  dir="$(agent_dir "$h")"
  printf '%s\n' \
    --tpm-tcti "$TABRMD_TCTI" \
    --tpm-key-handle "$(aget "$h" TPM_HANDLE)" \
    --pkcs11-store "$dir/tpm/store" \
    --pkcs11-token "$SIDECAR_TOKEN" \
    --pin-file "$dir/user.pin" \
    --client-identity-ext-oid "$DEMO_CLIENT_EXT_OID"
}

# The agent's proxy credential: the sidecar answers 407 to any CONNECT without it, so other local users
# cannot use this agent's TPM identity. Written 0600; only ever passed in files and the environment
# (never on a command line, which every user can read in ps).
write_proxy_token() {
  local dir="$1"
  (
    umask 077
    openssl rand -hex 32 >"$dir/proxy.token"
  )
}

# proxy_url HANDLE: the sidecar URL with the agent's credential, for HTTPS_PROXY (curl, Python, Node and
# Claude Code send it as Proxy-Authorization: Basic).
proxy_url() {
  local dir
  dir="$(agent_dir "$1")"
  printf 'http://agent:%s@127.0.0.1:%s' "$(tr -d '\n' <"$dir/proxy.token")" "$(aget "$1" SIDECAR_PORT)"
}

write_pins() {
  local dir="$1"
  (
    umask 077
    printf '%s' "$AGENT_GATEWAY_TPM_USER_PIN" >"$dir/user.pin"
    printf '%s' "$AGENT_GATEWAY_TPM_SO_PIN" >"$dir/so.pin"
  )
}

# ensure_runtime HANDLE: swtpm + abrmd and the sidecar running; the carrier certificate is (re)written
# for the TPM key whenever the sidecar is (re)started.
ensure_runtime() {
  local h="$1" dir port sp log args=()
  dir="$(agent_dir "$h")"
  log="$dir/agent.log"
  CURRENT_LOG="$log"
  if ! tpm_running "$dir/tpm"; then
    pid_stop "$dir/sidecar.pid" sidecar 2>/dev/null # a sidecar cannot survive its TPM restarting
    port="$(aget "$h" SWTPM_PORT)"
    if [ -z "$port" ] || ! port_free "$port" || ! port_free $((port + 1)); then
      port="$(pick_port_pair "${AGENT_GATEWAY_DEMO_SWTPM_PORT:-2321}")"
      aset "$h" SWTPM_PORT "$port"
    fi
    mkdir -p "$dir/tpm/store"
    tpm_up "$dir/tpm" "$port" "$log"
    info "    swtpm 127.0.0.1:$port (control $((port + 1))) + tpm2-abrmd, state $dir/tpm"
  fi
  if [ -s "$dir/proxy.token" ] && pid_alive "$dir/sidecar.pid" >/dev/null &&
    port_listening "$(aget "$h" SIDECAR_PORT)"; then
    return 0
  fi
  pid_stop "$dir/sidecar.pid" sidecar 2>/dev/null
  mapfile -t args < <(sidecar_args "$h")
  write_pins "$dir"
  [ -s "$dir/proxy.token" ] || write_proxy_token "$dir"
  (
    tpm_env_exports "$dir/tpm"
    logged node "$(node_prog sidecar/main.js)" provision "${args[@]}" --so-pin-file "$dir/so.pin" \
      --identity "$(aget "$h" IDENTITY)" --out-cert "$dir/machine-client.pem" --out-spki "$dir/spki.der"
  )
  rm -f "$dir/so.pin"
  openssl pkey -pubin -inform DER -in "$dir/spki.der" -out "$dir/spki.pem" 2>>"$log"
  sp="$(aget "$h" SIDECAR_PORT)"
  if [ -z "$sp" ] || ! port_free "$sp"; then
    sp="$(pick_port "${AGENT_GATEWAY_DEMO_SIDECAR_PORT:-3128}")"
    aset "$h" SIDECAR_PORT "$sp"
  fi
  (
    tpm_env_exports "$dir/tpm"
    spawn_bg "$dir/sidecar.pid" "$dir/sidecar.log" node "$(node_prog sidecar/main.js)" "${args[@]}" \
      --listen "127.0.0.1:$sp" --gateway "$(sidecar_gateway)" --gateway-name localhost \
      --client-cert "$dir/machine-client.pem" --ca-cert "$(state_get CERTS_DIR)/server-ca.pem" \
      --proxy-token-file "$dir/proxy.token" >/dev/null
  )
  wait_port "$sp" 60 "$dir/sidecar.pid" || die "the sidecar of $h did not start (see $dir/sidecar.log)"
  info "    sidecar http://127.0.0.1:$sp, token in $dir/proxy.token (log: $dir/sidecar.log)"
}

# grant_dests HANDLE [--missing-only] DEST...: --missing-only skips destinations the gateway already allows
# (agent-permissions.sh check), so re-running setup does not pile up rows.
grant_dests() {
  local h="$1" d missing_only=0
  shift
  if [ "${1:-}" = --missing-only ]; then
    missing_only=1
    shift
  fi
  for d in "$@"; do
    if [ "$missing_only" = 1 ] &&
      principal_cli agent-permissions.sh check "$(aget "$h" IDENTITY)" "$(agent_dir "$h")/spki.der" "$d"; then
      info "    $(aget "$h" IDENTITY) may already reach $d"
      continue
    fi
    principal_cli agent-permissions.sh grant "$PRINCIPAL" "$(aget "$h" IDENTITY)" "$(agent_dir "$h")/spki.der" "$d" ||
      die "signing the permission $(aget "$h" IDENTITY) -> $d failed (see $CURRENT_LOG)"
    info "    $PRINCIPAL signed: $(aget "$h" IDENTITY) may reach $d"
    if ! grep -qxF "$d" "$(agent_dir "$h")/grants" 2>/dev/null; then printf '%s\n' "$d" >>"$(agent_dir "$h")/grants"; fi
  done
}

# ---- commands -------------------------------------------------------------------------------------------

cmd_create() {
  local identity="" handle="" grants=() dir
  while [ $# -gt 0 ]; do
    case "$1" in
      --identity) identity="${2:?--identity needs a value}"; shift 2 ;;
      --identity=*) identity="${1#*=}"; shift ;;
      --grant) grants+=("${2:?--grant needs a destination}"); shift 2 ;;
      --grant=*) grants+=("${1#*=}"); shift ;;
      --handle) handle="${2:?--handle needs a value}"; shift 2 ;;
      --handle=*) handle="${1#*=}"; shift ;;
      *) die "create: unexpected argument $1 (usage: create --identity ID [--grant DEST]...)" ;;
    esac
  done
  [ -n "$identity" ] || die "create: --identity is required"
  handle="${handle:-$identity}"
  valid_handle "$handle" || die "create: $handle cannot be a handle (letters, digits, . _ -); pass --handle"
  need_setup
  dir="$(agent_dir "$handle")"
  [ ! -e "$dir" ] || die "agent $handle already exists (./demo/demo-agent.sh delete $handle first)"
  mkdir -p "$dir"
  chmod 700 "$dir"
  # A failed create leaves nothing behind.
  trap 'rc=$?; if [ "$rc" -ne 0 ]; then info "create failed; removing $dir (log kept at $STATE_DIR/logs/failed-agent-$handle.log)"; cp "$dir/agent.log" "$STATE_DIR/logs/failed-agent-$handle.log" 2>/dev/null || true; pid_stop "$dir/sidecar.pid" 2>/dev/null; tpm_down "$dir/tpm" quiet; rm -rf "$dir"; fi' EXIT
  aset "$handle" IDENTITY "$identity"
  aset "$handle" TPM_HANDLE "${AGENT_GATEWAY_DEMO_TPM_HANDLE:-0x81010004}"
  info "==> creating agent $handle (identity $identity)"
  ensure_runtime "$handle"
  info "    TPM key $(aget "$handle" TPM_HANDLE), carrier certificate $dir/machine-client.pem"
  [ "${#grants[@]}" -eq 0 ] || grant_dests "$handle" "${grants[@]}"
  trap - EXIT
  printf '%s\n' "$handle"
}

cmd_grant() {
  local missing_only=()
  if [ "${1:-}" = --missing-only ]; then
    missing_only=(--missing-only)
    shift
  fi
  local h="${1:-}"
  [ $# -ge 2 ] || die "usage: grant HANDLE DEST..."
  shift
  need_setup
  need_agent "$h"
  CURRENT_LOG="$(agent_dir "$h")/agent.log"
  [ -f "$(agent_dir "$h")/spki.der" ] || ensure_runtime "$h"
  grant_dests "$h" "${missing_only[@]}" "$@"
}

cmd_start() {
  local h="${1:-}"
  need_setup
  need_agent "$h"
  ensure_runtime "$h"
  printf '%s\n' "$h"
}

# The agent when no AI tool is configured: fetch every https URL in the prompt, like an agent would.
fetch_agent() {
  local prompt="${*: -1}" urls url rc=0 err heads id
  mapfile -t urls < <(grep -oE 'https://[^][:space:]"'"'"'<>()]+' <<<"$prompt" | sed -E 's/[.,;:!?]+$//' | awk '!seen[$0]++')
  if [ "${#urls[@]}" -eq 0 ]; then
    echo "(no https:// URL in the prompt, nothing to fetch)"
    return 0
  fi
  err="$(mktemp)"
  heads="$(mktemp)"
  for url in "${urls[@]}"; do
    echo "\$ curl $url"
    # -D keeps the headers of every response, the sidecar's answer to the CONNECT included.
    if curl -sS --fail-with-body --max-time 90 -D "$heads" "$url" 2>"$err"; then
      echo
      continue
    fi
    rc=1
    cat "$err" >&2
    if grep -q 'CONNECT tunnel failed, response 403' "$err"; then
      # curl prints no body of a refused CONNECT, so the sidecar's headers are what the agent gets to read:
      # the gateway's reason and, for a missing grant, the access request it recorded.
      tr -d '\r' <"$heads" | grep -iE '^agent-gateway-(deny-reason|request-id):' | sed 's/^/< /' || true
      id="$(tr -d '\r' <"$heads" | sed -n 's/^[Aa]gent-[Gg]ateway-[Rr]equest-[Ii]d: *\(req-[0-9a-f]\{20\}\)$/\1/p' | tail -n 1)"
      echo "(denied by the gateway: no active permission signed for this agent's identity and TPM key to that destination)"
      if [ -n "$id" ]; then
        echo "(the gateway recorded access request $id: a principal approves it with ./demo/demo-agent.sh approve $id)"
      fi
    elif grep -q 'CONNECT tunnel failed, response 407' "$err"; then
      echo "(407: the sidecar wants this agent's token in the proxy URL, HTTPS_PROXY=http://agent:TOKEN@...)"
    elif grep -q 'CONNECT tunnel failed, response 502' "$err"; then
      echo "(502: the gateway is unreachable, or it could not reach the destination)"
    fi
  done
  rm -f "$err" "$heads"
  return "$rc"
}

cmd_prompt() {
  local h="${1:-}" prompt="" have_prompt=0
  [ -n "$h" ] || die "usage: prompt HANDLE --prompt TEXT"
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --prompt) prompt="${2?--prompt needs text}"; have_prompt=1; shift 2 ;;
      --prompt=*) prompt="${1#*=}"; have_prompt=1; shift ;;
      *) die "prompt: unexpected argument $1" ;;
    esac
  done
  [ "$have_prompt" = 1 ] || die "usage: prompt HANDLE --prompt TEXT"
  need_setup
  need_agent "$h"
  CURRENT_LOG="$(agent_dir "$h")/agent.log"
  ensure_runtime "$h" >&2
  if ! pid_alive "$STATE_DIR/run/gateway.pid" >/dev/null; then
    warn "the demo gateway is not running: every request will fail with 502 (start it with ./demo/demo.sh setup)"
  fi
  local dir sp ca bundle
  dir="$(agent_dir "$h")"
  sp="$(aget "$h" SIDECAR_PORT)"
  ca="$(state_get CERTS_DIR)/mock-ca.pem"
  # System roots + the mock CA, for this subprocess only (a real destination such as api.anthropic.com
  # still verifies).
  bundle="$dir/ca-bundle.pem"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cat /etc/ssl/certs/ca-certificates.crt "$ca" >"$bundle"
  else
    cp "$ca" "$bundle"
  fi
  local cmd=()
  if [ "${AGENT_GATEWAY_DEMO_AGENT_CMD:-}" = builtin:fetch ]; then
    cmd=(fetch_agent)
    info "(agent: built-in fetcher, curl of the https URLs in the prompt)"
  elif [ -n "${AGENT_GATEWAY_DEMO_AGENT_CMD:-}" ]; then
    # A shell command line; the prompt is its last argument.
    cmd=(bash -c "$AGENT_GATEWAY_DEMO_AGENT_CMD"' "$@"' agent)
    info "(agent: $AGENT_GATEWAY_DEMO_AGENT_CMD <prompt>)"
  elif command -v claude >/dev/null; then
    # `--` ends the variadic --allowedTools, so the prompt (appended last) stays the prompt.
    cmd=(claude -p --allowedTools "Bash(curl:*)" --)
    info "(agent: Claude Code, claude -p; it needs api.anthropic.com granted: ./demo/demo-agent.sh grant $h api.anthropic.com)"
  else
    cmd=(fetch_agent)
    info "(agent: no AI tool installed, fetching the https URLs in the prompt with curl; set AGENT_GATEWAY_DEMO_AGENT_CMD to use another agent)"
  fi
  info "(HTTPS_PROXY=http://agent:<token>@127.0.0.1:$sp: every connection goes through $h's sidecar and the gateway)"
  (
    local proxy
    proxy="$(proxy_url "$h")"
    export HTTPS_PROXY="$proxy" https_proxy="$proxy" HTTP_PROXY="$proxy" http_proxy="$proxy"
    unset NO_PROXY no_proxy ALL_PROXY all_proxy
    export CURL_CA_BUNDLE="$bundle" SSL_CERT_FILE="$bundle" NODE_EXTRA_CA_CERTS="$ca"
    "${cmd[@]}" "$prompt"
  )
}

cmd_requests() {
  need_setup
  CURRENT_LOG="$STATE_DIR/logs/requests.log"
  shown_cli registry_env agent-permissions.sh requests "$@"
}

# The request's identity, SPKI (hex) and destination, tab-separated; empty when there is no such row.
request_row() {
  psql -X -q -tA -F $'\t' -v ON_ERROR_STOP=1 -d "$(state_get DB_ADMIN_URL)" -v "id=$1" <<'SQL'
SELECT subject_identity, encode(subject_public_key_spki_der, 'hex'), destination
FROM access_requests WHERE request_id = :'id';
SQL
}

# handle_of IDENTITY SPKI_HEX: the demo agent with that identity and TPM key, if there is one.
handle_of() {
  local d
  for d in "$AGENTS_DIR"/*/; do
    [ -f "$d/agent.env" ] && [ -f "$d/spki.der" ] || continue
    if [ "$(state_get IDENTITY "$d/agent.env")" = "$1" ] &&
      [ "$(od -An -v -tx1 "$d/spki.der" | tr -d ' \n')" = "$2" ]; then
      basename "$d"
      return 0
    fi
  done
  return 0
}

cmd_approve() {
  local id="${1:-}" rc=0
  case "$id" in
    "" | -*) die "usage: approve REQUEST_ID [--for DURATION | --days N]   (ids: ./demo/demo-agent.sh requests)" ;;
  esac
  shift
  need_setup
  CURRENT_LOG="$STATE_DIR/logs/requests.log"
  # Exactly the principal's `grant` path: her TPM key signs, under her rooted scope, only if the gateway's
  # policy would honour the row; the CLI refuses what is not pending, unknown or outside her scope.
  shown_cli principal_env agent-permissions.sh approve "$id" "$PRINCIPAL" "$@" || rc=$?
  [ "$rc" = 0 ] || exit "$rc"
  local row identity spki dest h
  row="$(request_row "$id" 2>>"$CURRENT_LOG")" || true
  IFS=$'\t' read -r identity spki dest <<<"$row"
  [ -n "${dest:-}" ] || return 0
  h="$(handle_of "$identity" "$spki")"
  if [ -n "$h" ]; then
    local shown="${dest%:443}"
    if ! grep -qxF "$shown" "$(agent_dir "$h")/grants" 2>/dev/null; then printf '%s\n' "$shown" >>"$(agent_dir "$h")/grants"; fi
    info "$PRINCIPAL signed: $identity may reach $dest; try again: ./demo/demo-agent.sh prompt $h --prompt \"...\""
  else
    info "$PRINCIPAL signed: $identity may reach $dest"
  fi
}

cmd_delete() {
  local h="${1:-}" force=0 dir
  [ -n "$h" ] || die "usage: delete HANDLE [--force]"
  [ "${2:-}" = --force ] && force=1
  need_setup
  need_agent "$h"
  dir="$(agent_dir "$h")"
  CURRENT_LOG="$dir/agent.log"
  info "==> deleting agent $h"
  # Revoke first: if that fails the agent is left whole (and --force can still remove it).
  if [ -f "$dir/spki.der" ]; then
    if principal_cli agent-permissions.sh delete "$(aget "$h" IDENTITY)" "$dir/spki.der"; then
      info "    revoked every permission of $(aget "$h" IDENTITY) for this key"
    elif [ "$force" = 1 ]; then
      warn "revoking the permissions of $h failed (see $dir/agent.log); --force: removing its state anyway"
    else
      die "revoking the permissions of $h failed (see $dir/agent.log); is the demo running (./demo/demo.sh setup)? Use --force to remove its local state anyway"
    fi
  fi
  pid_stop "$dir/sidecar.pid" sidecar
  tpm_down "$dir/tpm"
  rm -rf "$dir"
  info "    removed $dir"
}

cmd_list() {
  local d h
  [ -d "$AGENTS_DIR" ] || return 0
  for d in "$AGENTS_DIR"/*/; do
    [ -f "$d/agent.env" ] || continue
    h="$(basename "$d")"
    printf '%s\tidentity=%s\tsidecar=http://127.0.0.1:%s\t%s\tgrants=%s\n' "$h" "$(aget "$h" IDENTITY)" \
      "$(aget "$h" SIDECAR_PORT)" "$(pid_alive "$d/sidecar.pid" >/dev/null && echo running || echo stopped)" \
      "$(paste -sd, "$d/grants" 2>/dev/null)"
  done
}

case "${1:-}" in
  create) shift; cmd_create "$@" ;;
  grant) shift; cmd_grant "$@" ;;
  prompt) shift; cmd_prompt "$@" ;;
  delete) shift; cmd_delete "$@" ;;
  start) shift; cmd_start "$@" ;;
  requests) shift; cmd_requests "$@" ;;
  approve) shift; cmd_approve "$@" ;;
  list) cmd_list ;;
  -h | --help | help) usage 0 ;;
  *) usage 2 >&2 ;;
esac

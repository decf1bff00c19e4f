#!/usr/bin/env bash
# A fleet on one machine, natively (issue #18; docs/scaling.md): a PostgreSQL primary and one streaming
# replica, three gateways reading through the replica and LISTENing on the primary, HAProxy in TCP mode in
# front of them (health-checking each gateway's admin /readyz), and two TPM-backed agents whose sidecars
# go through HAProxy.
#
#   ./demo/fleet.sh up           install what is missing (haproxy too), run ./demo/demo.sh setup in the
#                                fleet's own state dir (primary, registry, root, principal, mocks, agent-alpha),
#                                then the replica, the three gateways, HAProxy and agent-beta. Safe to re-run.
#   ./demo/fleet.sh status       primary, replica, gateways, HAProxy, agents
#   ./demo/fleet.sh revoke-test  tunnels as agent-beta through every gateway (a sidecar pointed at each),
#                                revoke its docstore grant on the primary, print per gateway how long each
#                                tunnel took to end; exit 1 unless all ended within 1 s. Then grants it again.
#   ./demo/fleet.sh down         stop everything and remove the fleet's state
#
# State: ~/.local/state/agent-gateway-fleet (AGENT_GATEWAY_FLEET_STATE_DIR). Ports (127.0.0.1 only; a taken
# one is replaced by a free one): AGENT_GATEWAY_FLEET_{HAPROXY,HAPROXY_STATS,REPLICA}_PORT (8470 8479 5443),
# AGENT_GATEWAY_FLEET_GATEWAY{1,2,3}_PORT (8471-8473), AGENT_GATEWAY_FLEET_ADMIN{1,2,3}_PORT (9171-9173); the
# demo's own ports default to 84xx/91xx/54xx/23xx values beside ./demo/demo.sh's (AGENT_GATEWAY_DEMO_*_PORT).
set -euo pipefail

export AGENT_GATEWAY_DEMO_STATE_DIR="${AGENT_GATEWAY_FLEET_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/agent-gateway-fleet}"
# Beside a running ./demo/demo.sh rather than on top of it.
export AGENT_GATEWAY_DEMO_CONFIG="${AGENT_GATEWAY_DEMO_CONFIG:-$AGENT_GATEWAY_DEMO_STATE_DIR/demo-config.toml}"
export AGENT_GATEWAY_DEMO_CERTS_DIR="${AGENT_GATEWAY_DEMO_CERTS_DIR:-$AGENT_GATEWAY_DEMO_STATE_DIR/certs}"
export AGENT_GATEWAY_DEMO_GATEWAY_PORT="${AGENT_GATEWAY_DEMO_GATEWAY_PORT:-8460}"
export AGENT_GATEWAY_DEMO_ADMIN_PORT="${AGENT_GATEWAY_DEMO_ADMIN_PORT:-9160}"
export AGENT_GATEWAY_DEMO_PG_PORT="${AGENT_GATEWAY_DEMO_PG_PORT:-5442}"
export AGENT_GATEWAY_DEMO_DOCSTORE_PORT="${AGENT_GATEWAY_DEMO_DOCSTORE_PORT:-9461}"
export AGENT_GATEWAY_DEMO_MESSAGING_PORT="${AGENT_GATEWAY_DEMO_MESSAGING_PORT:-9462}"
export AGENT_GATEWAY_DEMO_PRINCIPAL_SWTPM_PORT="${AGENT_GATEWAY_DEMO_PRINCIPAL_SWTPM_PORT:-2341}"
export AGENT_GATEWAY_DEMO_ROOT_SWTPM_PORT="${AGENT_GATEWAY_DEMO_ROOT_SWTPM_PORT:-2343}"
export AGENT_GATEWAY_DEMO_SWTPM_PORT="${AGENT_GATEWAY_DEMO_SWTPM_PORT:-2351}"
export AGENT_GATEWAY_DEMO_SIDECAR_PORT="${AGENT_GATEWAY_DEMO_SIDECAR_PORT:-3138}"

DEMO_PROG="fleet.sh"
# shellcheck source=demo/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$DEMO_ROOT"

FLEET_DIR="$STATE_DIR/fleet"
FLEET_LOG="$STATE_DIR/logs/fleet.log"
GATEWAYS=(1 2 3)
AGENTS=(agent-alpha agent-beta)
REVOKE_AGENT="agent-beta"
REVOKE_DEST="docstore"
PG_DB="agent_gateway"

usage() {
  awk 'NR > 1 && /^#/ { if ($0 !~ /shellcheck/) { sub(/^# ?/, ""); print }; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
  exit "${1:-0}"
}

# fleet_port KEY ENVVAR DEFAULT PIDFILE: the port recorded under KEY while its owner runs (or it is free),
# else ENVVAR/DEFAULT when free, else any free port.
fleet_port() {
  local key="$1" envvar="$2" default="$3" pidfile="$4" recorded port
  recorded="$(state_get "$key")"
  if [ -n "$recorded" ] && { pid_alive "$pidfile" >/dev/null || port_free "$recorded"; }; then
    port="$recorded"
  else
    port="$(pick_port "${!envvar:-$default}")"
  fi
  state_set "$key" "$port"
  printf '%s' "$port"
}

admin_ready() { curl -fsS --max-time 2 "http://127.0.0.1:$1/readyz" >/dev/null 2>&1; }

# gateway_supports_replicas: the built gateway knows [policy] replica_database_url (docs/contract.md).
gateway_supports_replicas() {
  grep -qs replica_database_url "$(node_prog gateway/config.js)" "$DEMO_ROOT/dist/gateway/config-reader.js"
}

step_fleet_packages() {
  step "Checking haproxy" "$FLEET_LOG"
  if ! command -v haproxy >/dev/null; then
    if [ "${AGENT_GATEWAY_DEMO_SKIP_APT:-0}" = 1 ]; then
      die "haproxy is missing (AGENT_GATEWAY_DEMO_SKIP_APT=1, not installing)"
    fi
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    info "    installing: haproxy"
    logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    logged "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy
  fi
  require_cmd haproxy
  info "    $(haproxy -v 2>/dev/null | head -n 1)"
  step_done
}

step_replica() {
  local log="$STATE_DIR/logs/replica-setup.log" port answer dir
  step "Starting a streaming replica of the primary (pg_basebackup -R, hot standby)" "$log"
  # Debian's postgresql, which demo.sh setup installs.
  require_cmd pg_basebackup
  port="$(fleet_port REPLICA_PORT AGENT_GATEWAY_FLEET_REPLICA_PORT 5443 "$STATE_DIR/run/postgres-replica.pid")"
  dir="$(state_get REPLICA_DIR)"
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    dir="$STATE_DIR/postgres-replica"
    # A link left to a removed cluster (dev-support links DIR to a dir the postgres user can reach).
    if [ -L "$dir" ]; then rm -f "$dir"; fi
  fi
  answer="$(dev_support postgres replica --primary-dir "$(state_get PG_DIR)" --dir "$dir" --port "$port" \
    --max-connections 50 --fallback-prefix /var/tmp/agent-gateway-demo-pg-replica.)" ||
    die "the replica did not start (see $log)"
  state_set REPLICA_DIR "$(answer_get dir "$answer")"
  state_set REPLICA_PORT "$(answer_get port "$answer")"
  pid_record "$STATE_DIR/run/postgres-replica.pid" "$(answer_get pid "$answer")"
  # Roles and passwords come over with the base backup: the gateway logs in to the replica as on the primary.
  state_set DB_REPLICA_URL "$(state_get DB_GATEWAY_URL | sed -E "s#@127\.0\.0\.1:[0-9]+/#@127.0.0.1:$(state_get REPLICA_PORT)/#")"
  # A replica URL naming the primary would make every lookup cost two queries (docs/contract.md "Replicas").
  [ "$(state_get DB_REPLICA_URL)" != "$(state_get DB_GATEWAY_URL)" ] ||
    die "the replica URL is the gateway's primary URL ($(state_get DB_GATEWAY_URL)): the replica port was not substituted"
  if [ "$(answer_get started "$answer")" = 1 ]; then
    info "    replica on 127.0.0.1:$(state_get REPLICA_PORT) (data: $(state_get REPLICA_DIR)/data)"
  else
    info "    replica already running on 127.0.0.1:$(state_get REPLICA_PORT)"
  fi
  step_done
}

gateway_config() { printf '%s/gateway-%s.toml' "$FLEET_DIR" "$1"; }

step_gateways() {
  local log="$STATE_DIR/logs/fleet-gateways.log" i port admin cfg pidfile values replica='null' n
  step "Starting three gateways (replica reads, LISTEN on the primary)" "$log"
  mkdir -p "$FLEET_DIR"
  # The demo's single gateway makes way for the fleet's three.
  pid_stop "$STATE_DIR/run/gateway.pid" "demo gateway" 2>>"$log"
  if gateway_supports_replicas; then
    replica="[\"$(state_get DB_REPLICA_URL)\"]"
  else
    warn "this gateway build has no [policy] replica_database_url: every lookup goes to the primary"
  fi
  for i in "${GATEWAYS[@]}"; do
    pidfile="$STATE_DIR/run/fleet-gateway-$i.pid"
    port="$(fleet_port "FLEET_GATEWAY${i}_PORT" "AGENT_GATEWAY_FLEET_GATEWAY${i}_PORT" $((8470 + i)) "$pidfile")"
    admin="$(fleet_port "FLEET_ADMIN${i}_PORT" "AGENT_GATEWAY_FLEET_ADMIN${i}_PORT" $((9170 + i)) "$pidfile")"
    cfg="$(gateway_config "$i")"
    values="{\"server\":{\"listen_addr\":\"127.0.0.1:$port\"},\"admin\":{\"listen_addr\":\"127.0.0.1:$admin\"}"
    [ "$replica" = null ] || values="$values,\"policy\":{\"replica_database_url\":$replica}"
    values="$values}"
    CURRENT_LOG="$log" logged node "$(node_prog demo/write-config.js)" --example "$(state_get CONFIG_PATH)" \
      --out "$cfg.new" --values "$values" --header "Written by demo/fleet.sh: gateway $i of the fleet."
    chmod 600 "$cfg.new"
    if pid_alive "$pidfile" >/dev/null && cmp -s "$cfg" "$cfg.new" && admin_ready "$admin"; then
      rm -f "$cfg.new"
      info "    gateway-$i already running on 127.0.0.1:$port (admin $admin)"
      continue
    fi
    mv -f "$cfg.new" "$cfg"
    pid_stop "$pidfile" "gateway-$i" 2>>"$log"
    spawn_bg "$pidfile" "$STATE_DIR/logs/gateway-$i.log" node "$(node_prog gateway/main.js)" --config "$cfg" >/dev/null
    for n in $(seq 150); do
      admin_ready "$admin" && break
      pid_alive "$pidfile" >/dev/null || die "gateway-$i exited (see $STATE_DIR/logs/gateway-$i.log)"
      [ "$n" = 150 ] && die "gateway-$i did not become ready (see $STATE_DIR/logs/gateway-$i.log)"
      sleep 0.2
    done
    info "    gateway-$i on 127.0.0.1:$port, admin http://127.0.0.1:$admin (log: $STATE_DIR/logs/gateway-$i.log)"
  done
  step_done
}

step_haproxy() {
  local log="$STATE_DIR/logs/haproxy.log" pidfile="$STATE_DIR/run/haproxy.pid" port stats cfg i n
  step "Starting HAProxy (TCP mode, health checks on each gateway's /readyz)" "$log"
  port="$(fleet_port HAPROXY_PORT AGENT_GATEWAY_FLEET_HAPROXY_PORT 8470 "$pidfile")"
  stats="$(fleet_port HAPROXY_STATS_PORT AGENT_GATEWAY_FLEET_HAPROXY_STATS_PORT 8479 "$pidfile")"
  cfg="$FLEET_DIR/haproxy.cfg"
  {
    printf '# Written by demo/fleet.sh. TCP passthrough: mTLS ends at the gateways, never here.\n'
    printf 'global\n  log stdout format raw local0 info\n\n'
    printf 'defaults\n  mode tcp\n  log global\n  option tcplog\n'
    # Tunnels are long-lived: the gateways time them out (upstream.tunnel_idle_timeout_ms), not HAProxy.
    printf '  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  timeout check 2s\n\n'
    printf 'frontend agent_gateway\n  bind 127.0.0.1:%s\n  default_backend gateways\n\n' "$port"
    printf 'backend gateways\n  balance leastconn\n'
    # A draining gateway answers /readyz 503: no new connections go to it, open ones finish there.
    printf '  option httpchk GET /readyz\n  http-check expect status 200\n'
    printf '  default-server inter 1s fall 2 rise 2\n'
    for i in "${GATEWAYS[@]}"; do
      printf '  server gateway-%s 127.0.0.1:%s check port %s\n' "$i" "$(state_get "FLEET_GATEWAY${i}_PORT")" \
        "$(state_get "FLEET_ADMIN${i}_PORT")"
    done
    printf '\nfrontend stats\n  mode http\n  bind 127.0.0.1:%s\n  stats enable\n  stats uri /stats\n' "$stats"
  } >"$cfg.new"
  CURRENT_LOG="$log" logged haproxy -c -f "$cfg.new" || die "haproxy refused $cfg.new (see $log)"
  if pid_alive "$pidfile" >/dev/null && cmp -s "$cfg" "$cfg.new"; then
    rm -f "$cfg.new"
    info "    already running on 127.0.0.1:$port"
  else
    mv -f "$cfg.new" "$cfg"
    pid_stop "$pidfile" haproxy 2>>"$log"
    spawn_bg "$pidfile" "$log" haproxy -db -f "$cfg" >/dev/null
    wait_port "$port" 20 "$pidfile" || die "haproxy did not start (see $log)"
  fi
  for n in $(seq 50); do
    [ "$(haproxy_up_count)" = "${#GATEWAYS[@]}" ] && break
    [ "$n" = 50 ] && warn "not every gateway is UP in HAProxy yet ($(haproxy_up_count)/${#GATEWAYS[@]})"
    sleep 0.2
  done
  info "    127.0.0.1:$port -> gateway-1..3 ($(haproxy_up_count)/${#GATEWAYS[@]} UP), stats http://127.0.0.1:$stats/stats"
  step_done
}

haproxy_stats() { curl -fsS --max-time 2 "http://127.0.0.1:$(state_get HAPROXY_STATS_PORT)/stats;csv" 2>/dev/null; }
haproxy_up_count() { haproxy_stats | awk -F, '$1 == "gateways" && $2 ~ /^gateway-/ && $18 == "UP"' | wc -l; }

step_agents() {
  local log="$STATE_DIR/logs/agents.log" a env pid
  step "Agents ${AGENTS[*]}: sidecars through HAProxy" "$log"
  # demo-agent.sh points sidecars at SIDECAR_GATEWAY when set (demo/demo-agent.sh start).
  state_set SIDECAR_GATEWAY "127.0.0.1:$(state_get HAPROXY_PORT)"
  for a in "${AGENTS[@]}"; do
    env="$AGENTS_DIR/$a/agent.env"
    if [ -f "$env" ]; then
      # A sidecar still pointed at the demo's single gateway (demo.sh made agent-alpha) is restarted.
      pid="$(pid_alive "$AGENTS_DIR/$a/sidecar.pid" || true)"
      if [ -n "$pid" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--gateway $(state_get SIDECAR_GATEWAY) "; then
        pid_stop "$AGENTS_DIR/$a/sidecar.pid" "sidecar of $a" 2>>"$log"
      fi
      "$DEMO_ROOT/demo/demo-agent.sh" start "$a" 2>>"$log" >/dev/null
      "$DEMO_ROOT/demo/demo-agent.sh" grant --missing-only "$a" "$REVOKE_DEST" 2>>"$log" >/dev/null
    else
      AGENT_GATEWAY_DEMO_SWTPM_PORT=$((AGENT_GATEWAY_DEMO_SWTPM_PORT + 2)) AGENT_GATEWAY_DEMO_SIDECAR_PORT=$((AGENT_GATEWAY_DEMO_SIDECAR_PORT + 1)) \
        "$DEMO_ROOT/demo/demo-agent.sh" create --identity "$a" --grant "$REVOKE_DEST" 2>>"$log" >/dev/null
    fi
    info "    $a: sidecar http://127.0.0.1:$(state_get SIDECAR_PORT "$env") -> HAProxy 127.0.0.1:$(state_get HAPROXY_PORT)"
  done
  step_done
}

# agent_get AGENT https://URL: GET through the agent's sidecar; prints the body.
agent_get() {
  local dir="$AGENTS_DIR/$1"
  https_proxy="http://agent:$(tr -d '\n' <"$dir/proxy.token")@127.0.0.1:$(state_get SIDECAR_PORT "$dir/agent.env")" \
    curl -sS --fail-with-body --max-time 30 --noproxy '' --cacert "$(state_get CERTS_DIR)/mock-ca.pem" "$2"
}

step_prove() {
  local a body
  step "Proving it: GET https://docstore/health as each agent, through HAProxy" "$FLEET_LOG"
  for a in "${AGENTS[@]}"; do
    body="$(agent_get "$a" https://docstore/health 2>>"$FLEET_LOG")" || die "$a could not reach docstore through the fleet (see $FLEET_LOG)"
    info "    $a: $body"
  done
  step_done
}

cmd_up() {
  trap on_exit_report EXIT
  info "agent_gateway fleet (state: $STATE_DIR)"
  mkdir -p "$STATE_DIR/logs" "$STATE_DIR/run"
  STEP_TOTAL=0
  step_fleet_packages
  info "==> ./demo/demo.sh setup (primary, registry, root, principal, mocks, agent-alpha)"
  "$DEMO_ROOT/demo/demo.sh" setup 2>&1 | sed 's/^/    | /' >&2 || die "./demo/demo.sh setup failed"
  load_secrets
  step_replica
  step_gateways
  step_haproxy
  step_agents
  step_prove
  info ""
  info "fleet up: ./demo/fleet.sh status | ./demo/fleet.sh revoke-test | ./demo/fleet.sh down"
}

psql_url() { psql -X -q -tA -v ON_ERROR_STOP=1 -d "$1" -c "$2" 2>/dev/null; }

cmd_status() {
  local i pid line url
  [ -f "$DEMO_ENV_FILE" ] || die "no fleet in $STATE_DIR (./demo/fleet.sh up)"
  load_secrets
  url="$(state_get DB_SUPER_URL)"
  if line="$(psql_url "$url" "SELECT 'primary  127.0.0.1:' || current_setting('port') || '  in_recovery=' || pg_is_in_recovery() || '  wal_lsn=' || pg_current_wal_lsn() || '  replicas=' || (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')")"; then
    printf '%s\n' "$line"
  else
    printf 'primary  127.0.0.1:%s  DOWN\n' "$(state_get PG_PORT)"
  fi
  url="$(sed -E "s#@127\.0\.0\.1:[0-9]+/#@127.0.0.1:$(state_get REPLICA_PORT)/#" <<<"$url")"
  if line="$(psql_url "$url" "SELECT 'replica  127.0.0.1:' || current_setting('port') || '  in_recovery=' || pg_is_in_recovery() || '  replay_lsn=' || pg_last_wal_replay_lsn() || '  replay_paused=' || pg_is_wal_replay_paused()")"; then
    printf '%s\n' "$line"
  else
    printf 'replica  127.0.0.1:%s  DOWN\n' "$(state_get REPLICA_PORT)"
  fi
  for i in "${GATEWAYS[@]}"; do
    pid="$(pid_alive "$STATE_DIR/run/fleet-gateway-$i.pid" || true)"
    printf 'gateway-%s 127.0.0.1:%s  pid=%s  readyz: %s\n' "$i" "$(state_get "FLEET_GATEWAY${i}_PORT")" "${pid:-none}" \
      "$(curl -sS --max-time 2 "http://127.0.0.1:$(state_get "FLEET_ADMIN${i}_PORT")/readyz" 2>&1 | tr -d '\n' | cut -c1-160)"
  done
  pid="$(pid_alive "$STATE_DIR/run/haproxy.pid" || true)"
  printf 'haproxy  127.0.0.1:%s  pid=%s  ' "$(state_get HAPROXY_PORT)" "${pid:-none}"
  haproxy_stats | awk -F, '$1 == "gateways" && $2 ~ /^gateway-/ { printf "%s %s (%s sessions)  ", $2, $18, $5 }'
  printf '\n'
  for i in "${AGENTS[@]}"; do
    pid="$(pid_alive "$AGENTS_DIR/$i/sidecar.pid" || true)"
    printf '%-12s sidecar 127.0.0.1:%s  pid=%s\n' "$i" "$(state_get SIDECAR_PORT "$AGENTS_DIR/$i/agent.env")" "${pid:-none}"
  done
}

revoke_sidecars_stop() {
  local i
  for i in "${GATEWAYS[@]}"; do pid_stop "$FLEET_DIR/revoke-sidecar-$i.pid" "revoke-test sidecar $i" 2>/dev/null; done
}

cmd_revoke_test() {
  [ -f "$DEMO_ENV_FILE" ] || die "no fleet in $STATE_DIR (./demo/fleet.sh up)"
  load_secrets
  local dir="$AGENTS_DIR/$REVOKE_AGENT" i port pidfile vias=() ports=() rc=0 args
  [ -f "$dir/agent.env" ] || die "no $REVOKE_AGENT (./demo/fleet.sh up)"
  CURRENT_LOG="$FLEET_LOG"
  mapfile -t args < <(
    printf '%s\n' --tpm-tcti "$TABRMD_TCTI" --tpm-key-handle "$(state_get TPM_HANDLE "$dir/agent.env")" \
      --pkcs11-store "$dir/tpm/store" --pkcs11-token agent-gateway-sidecar --pin-file "$dir/user.pin" \
      --client-identity-ext-oid "$DEMO_CLIENT_EXT_OID" --gateway-name localhost \
      --client-cert "$dir/machine-client.pem" --ca-cert "$(state_get CERTS_DIR)/server-ca.pem" \
      --proxy-token-file "$dir/proxy.token"
  )
  # One sidecar of the agent per gateway, so every gateway carries tunnels (HAProxy would put one sidecar's
  # single connection on one gateway). An interrupt stops them too.
  trap 'revoke_sidecars_stop; exit 130' INT TERM
  trap revoke_sidecars_stop EXIT
  for i in "${GATEWAYS[@]}"; do
    pidfile="$FLEET_DIR/revoke-sidecar-$i.pid"
    port="$(free_port)"
    (
      tpm_env_exports "$dir/tpm"
      spawn_bg "$pidfile" "$STATE_DIR/logs/revoke-sidecar-$i.log" node "$(node_prog sidecar/main.js)" "${args[@]}" \
        --listen "127.0.0.1:$port" --gateway "127.0.0.1:$(state_get "FLEET_GATEWAY${i}_PORT")" >/dev/null
    )
    vias+=(--via "gateway-$i=127.0.0.1:$port")
    ports+=("$port")
  done
  local k
  for k in "${!GATEWAYS[@]}"; do
    i="${GATEWAYS[$k]}"
    wait_port "${ports[$k]}" 60 "$FLEET_DIR/revoke-sidecar-$i.pid" || rc=1
  done
  if [ "$rc" = 0 ]; then
    node "$(node_prog demo/fleet-revoke-test.js)" --database-url "$(state_get DB_ADMIN_URL)" \
      --identity "$REVOKE_AGENT" --destination "$REVOKE_DEST:443" --proxy-token-file "$dir/proxy.token" \
      --tunnels 2 "${vias[@]}" || rc=$?
  fi
  revoke_sidecars_stop
  trap - INT TERM EXIT
  # Granted again, so the test can be repeated; without it the next revoke-test cannot run.
  "$DEMO_ROOT/demo/demo-agent.sh" grant --missing-only "$REVOKE_AGENT" "$REVOKE_DEST" 2>>"$FLEET_LOG" >/dev/null ||
    die "granting $REVOKE_AGENT $REVOKE_DEST again failed (see $FLEET_LOG): ./demo/demo-agent.sh grant $REVOKE_AGENT $REVOKE_DEST"
  [ "$rc" = 0 ] || die "revoke-test failed"
  info "revoke-test: every gateway ended its tunnels within 1 s of the revoke on the primary"
}

cmd_down() {
  info "agent_gateway fleet down (state: $STATE_DIR)"
  local i dir
  if [ -d "$FLEET_DIR" ]; then
    for i in "${GATEWAYS[@]}"; do pid_stop "$FLEET_DIR/revoke-sidecar-$i.pid" "revoke-test sidecar $i"; done
  fi
  pid_stop "$STATE_DIR/run/haproxy.pid" haproxy
  for i in "${GATEWAYS[@]}"; do pid_stop "$STATE_DIR/run/fleet-gateway-$i.pid" "gateway-$i"; done
  dir="$(state_get REPLICA_DIR)"
  if [ -n "$dir" ]; then
    info "==> Removing the replica"
    if [ -f "$dir/data/postmaster.pid" ] && [ -f "$DEMO_ROOT/dist/dev-support/cli.js" ]; then
      dev_support postgres stop --dir "$dir" >/dev/null || true
    fi
    pid_stop "$STATE_DIR/run/postgres-replica.pid" "postgres replica"
    case "$dir" in
      "$STATE_DIR"/* | /var/tmp/agent-gateway-demo-pg-replica.*) rm -rf "$dir" ;;
      *) warn "not removing unexpected replica dir $dir" ;;
    esac
  fi
  if [ -L "$STATE_DIR/postgres-replica" ]; then rm -f "$STATE_DIR/postgres-replica"; fi
  rm -rf "$FLEET_DIR"
  if [ -f "$DEMO_ENV_FILE" ]; then "$DEMO_ROOT/demo/demo.sh" teardown; fi
}

case "${1:-}" in
  up) cmd_up ;;
  status) cmd_status ;;
  revoke-test) cmd_revoke_test ;;
  down) cmd_down ;;
  -h | --help | help) usage 0 ;;
  *) usage 2 ;;
esac

# shellcheck shell=bash
# Helpers shared by demo/demo.sh and demo/demo-agent.sh (sourced, never run).
#
# shellcheck disable=SC2034 # variables used by the scripts that source this file
true
# Everything the demo starts runs in the background with its log under $STATE_DIR/logs (or the agent's dir)
# and a PID file holding "PID STARTTIME" (STARTTIME = field 22 of /proc/PID/stat), so a later run can tell
# "still the process we started" from "a recycled PID" before it reuses or kills anything.

DEMO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# tpm2-abrmd and runuser live in sbin, which a non-root PATH often lacks.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
STATE_DIR="${AGENT_GATEWAY_DEMO_STATE_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/agent-gateway}"
DEMO_ENV_FILE="$STATE_DIR/demo.env"
AGENTS_DIR="$STATE_DIR/demo-agents"
TABRMD_TCTI="tabrmd:bus_type=session"
DEMO_CLIENT_EXT_OID="1.3.6.1.4.1.57264.1.1"

# Local demo values, not production guidance (see README "Settings and security notes"). Env overrides win.
DEFAULT_TPM_USER_PIN="demo-user-pin-1234"
DEFAULT_TPM_SO_PIN="demo-so-pin-5678"
DEFAULT_PG_SUPERUSER_PASSWORD="demo-postgres-password"
DEFAULT_PG_ADMIN_PASSWORD="demo-registry-admin-password"
DEFAULT_PG_GATEWAY_PASSWORD="demo-gateway-runtime-password"

# ---- output and steps ----------------------------------------------------------------------------------

CURRENT_STEP=""
CURRENT_LOG=""
STEP_NO=0
STEP_TOTAL=0
DEMO_PROG="${DEMO_PROG:-demo}"

info() { printf '%s\n' "$*" >&2; }
warn() { printf '%s: warning: %s\n' "$DEMO_PROG" "$*" >&2; }
die() {
  printf '%s: %s\n' "$DEMO_PROG" "$*" >&2
  exit 1
}

# step "Description" LOGFILE — one progress line per step; commands of the step log to LOGFILE.
step() {
  STEP_NO=$((STEP_NO + 1))
  CURRENT_STEP="$1"
  CURRENT_LOG="$2"
  mkdir -p "$(dirname "$CURRENT_LOG")"
  if [ "$STEP_TOTAL" -gt 0 ]; then
    printf '==> [%d/%d] %s\n' "$STEP_NO" "$STEP_TOTAL" "$1" >&2
  else
    printf '==> %s\n' "$1" >&2
  fi
  printf '\n=== %s  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" >>"$CURRENT_LOG"
}

step_done() {
  CURRENT_STEP=""
  CURRENT_LOG=""
}

# EXIT trap: name the failed step and its log, and show the end of that log.
on_exit_report() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -n "$CURRENT_STEP" ]; then
    {
      printf '\n%s: FAILED at step: %s (exit %d)\n' "$DEMO_PROG" "$CURRENT_STEP" "$rc"
      if [ -n "$CURRENT_LOG" ]; then
        printf '%s: log: %s\n' "$DEMO_PROG" "$CURRENT_LOG"
        if [ -s "$CURRENT_LOG" ]; then
          printf -- '--- last lines of %s ---\n' "$CURRENT_LOG"
          tail -n 25 "$CURRENT_LOG"
          printf -- '---\n'
        fi
      fi
    } >&2
  fi
  exit "$rc"
}

# logged CMD...: run a command with its output appended to the current step's log.
logged() {
  printf '+ %s\n' "$(redact "$*")" >>"${CURRENT_LOG:-/dev/null}"
  "$@" >>"${CURRENT_LOG:-/dev/null}" 2>&1
}

# redact TEXT: hide the PINs and passwords in a command line written to a log.
redact() {
  local text="$1" secret
  for secret in "${AGENT_GATEWAY_TPM_USER_PIN:-}" "${AGENT_GATEWAY_TPM_SO_PIN:-}" "${PG_SUPERUSER_PASSWORD:-}" \
    "${PG_ADMIN_PASSWORD:-}" "${PG_GATEWAY_PASSWORD:-}"; do
    [ -n "$secret" ] && text="${text//"$secret"/***}"
  done
  printf '%s' "$text"
}

# ---- persisted settings -------------------------------------------------------------------------------

# state_get KEY [FILE]: value of KEY from a KEY=value file (default demo.env); empty when missing.
state_get() {
  local file="${2:-$DEMO_ENV_FILE}" line
  [ -f "$file" ] || return 0
  line="$(grep -E "^$1=" "$file" | tail -n 1)" || return 0
  printf '%s' "${line#*=}"
}

# state_set KEY VALUE [FILE]: write KEY=VALUE (values are single-line, no quoting; the file is 0600).
state_set() {
  local file="${3:-$DEMO_ENV_FILE}" tmp
  case "$2" in *$'\n'*) die "state_set: newline in value of $1" ;; esac
  mkdir -p "$(dirname "$file")"
  tmp="$(mktemp "$file.XXXXXX")"
  chmod 600 "$tmp"
  if [ -f "$file" ]; then grep -vE "^$1=" "$file" >"$tmp" || true; fi
  printf '%s=%s\n' "$1" "$2" >>"$tmp"
  mv -f "$tmp" "$file"
}

state_del() {
  local file="${2:-$DEMO_ENV_FILE}" tmp
  [ -f "$file" ] || return 0
  tmp="$(mktemp "$file.XXXXXX")"
  chmod 600 "$tmp"
  grep -vE "^$1=" "$file" >"$tmp" || true
  mv -f "$tmp" "$file"
}

# Secrets: environment first, then what setup recorded, then the demo default.
load_secrets() {
  AGENT_GATEWAY_TPM_USER_PIN="${AGENT_GATEWAY_TPM_USER_PIN:-$(state_get TPM_USER_PIN)}"
  AGENT_GATEWAY_TPM_USER_PIN="${AGENT_GATEWAY_TPM_USER_PIN:-$DEFAULT_TPM_USER_PIN}"
  AGENT_GATEWAY_TPM_SO_PIN="${AGENT_GATEWAY_TPM_SO_PIN:-$(state_get TPM_SO_PIN)}"
  AGENT_GATEWAY_TPM_SO_PIN="${AGENT_GATEWAY_TPM_SO_PIN:-$DEFAULT_TPM_SO_PIN}"
  AGENT_GATEWAY_TPM_TOKEN_LABEL="${AGENT_GATEWAY_TPM_TOKEN_LABEL:-$(state_get TPM_TOKEN_LABEL)}"
  AGENT_GATEWAY_TPM_TOKEN_LABEL="${AGENT_GATEWAY_TPM_TOKEN_LABEL:-agent-gateway}"
  PG_SUPERUSER_PASSWORD="${AGENT_GATEWAY_DEMO_PG_SUPERUSER_PASSWORD:-$DEFAULT_PG_SUPERUSER_PASSWORD}"
  PG_ADMIN_PASSWORD="${AGENT_GATEWAY_DEMO_PG_ADMIN_PASSWORD:-$DEFAULT_PG_ADMIN_PASSWORD}"
  PG_GATEWAY_PASSWORD="${AGENT_GATEWAY_DEMO_PG_GATEWAY_PASSWORD:-$DEFAULT_PG_GATEWAY_PASSWORD}"
  export AGENT_GATEWAY_TPM_USER_PIN AGENT_GATEWAY_TPM_SO_PIN AGENT_GATEWAY_TPM_TOKEN_LABEL
}

# ---- processes ----------------------------------------------------------------------------------------

# proc_starttime PID: field 22 of /proc/PID/stat (clock ticks since boot), empty when gone or a zombie.
proc_starttime() {
  local stat rest
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  rest="${stat##*) }"
  # shellcheck disable=SC2086 # word splitting of the stat fields is the point
  set -- $rest
  case "$1" in Z | X) return 0 ;; esac
  printf '%s' "${20:-}"
}

# pid_record FILE PID: remember PID and its start time.
pid_record() {
  local st
  st="$(proc_starttime "$2")"
  [ -n "$st" ] || return 1
  mkdir -p "$(dirname "$1")"
  printf '%s %s\n' "$2" "$st" >"$1"
}

# pid_alive FILE: prints the PID and succeeds when FILE names a live process that is the one we started.
pid_alive() {
  local pid st
  [ -f "$1" ] || return 1
  read -r pid st <"$1" || true
  [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] || return 1
  [ -n "${st:-}" ] && [ "$(proc_starttime "$pid")" = "$st" ] || return 1
  printf '%s' "$pid"
}

# pid_stop FILE [NAME]: SIGTERM (the whole process group when the process leads one), wait up to 10 s,
# then SIGKILL. A PID that is no longer ours is left alone. The PID file is removed in every case.
pid_stop() {
  local file="$1" name="${2:-$(basename "$1" .pid)}" pid pgrp stat target i
  if ! pid="$(pid_alive "$file")"; then
    rm -f "$file"
    return 0
  fi
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || true
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- $stat
  pgrp="${3:-}"
  target="$pid"
  [ "$pgrp" = "$pid" ] && target="-$pid"
  kill -TERM -- "$target" 2>/dev/null || true
  for i in $(seq 100); do
    pid_alive "$file" >/dev/null || break
    sleep 0.1
  done
  if pid_alive "$file" >/dev/null; then
    warn "$name ($pid) did not stop after SIGTERM; sending SIGKILL"
    kill -KILL -- "$target" 2>/dev/null || true
    for i in $(seq 30); do
      pid_alive "$file" >/dev/null || break
      sleep 0.1
    done
  fi
  if [ "$target" = "-$pid" ]; then kill -KILL -- "$target" 2>/dev/null || true; fi # stragglers of the group
  rm -f "$file"
  info "    stopped $name (pid $pid)"
}

# spawn_bg PIDFILE LOGFILE CMD...: start CMD detached in its own session (its own process group, no
# terminal), output to LOGFILE, and record it. Prints the PID.
spawn_bg() {
  local pidfile="$1" logfile="$2" pid
  shift 2
  mkdir -p "$(dirname "$logfile")" "$(dirname "$pidfile")"
  printf '\n=== %s  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(redact "$*")" >>"$logfile"
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  pid=$!
  pid_record "$pidfile" "$pid" || {
    wait "$pid" 2>/dev/null || true
    echo "$1 exited immediately (see $logfile)" >&2
    return 1
  }
  printf '%s' "$pid"
}

# ---- dev-support/cli.ts: the PostgreSQL, TPM and port code the tests use too --------------------------

# dev_support ARGS...: run dev-support/cli.ts; its KEY=value answer on stdout, its progress and errors (and
# the command, unless it is a port question) in the current step's log.
dev_support() {
  [ "$1" = port ] || printf '+ dev-support %s\n' "$*" >>"${CURRENT_LOG:-/dev/null}"
  node "$(node_prog dev-support/cli.js)" "$@" 2>>"${CURRENT_LOG:-/dev/null}"
}

# answer_get KEY ANSWER: the value of KEY in dev_support's answer.
answer_get() { sed -n "s/^$1=//p" <<<"$2" | tail -n 1; }

# ---- ports (127.0.0.1 only) ---------------------------------------------------------------------------

port_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port_free() { dev_support port free "$1"; }

# free_port: a free port below the kernel's ephemeral range (dev-support/ports.ts quietFreePort).
free_port() {
  local answer
  answer="$(dev_support port quiet)" || die "no free port on 127.0.0.1"
  answer_get port "$answer"
}

# free_port_pair: P such that P and P+1 are both free (swtpm data + control).
free_port_pair() {
  local answer
  answer="$(dev_support port quiet --pair)" || die "no two consecutive free ports on 127.0.0.1"
  answer_get port "$answer"
}

# pick_port WANTED: WANTED when free, else any free port (with a note).
pick_port() {
  if port_free "$1"; then
    printf '%s' "$1"
  else
    local p
    p="$(free_port)"
    info "    port $1 is taken; using $p"
    printf '%s' "$p"
  fi
}

pick_port_pair() {
  if [ "$1" -lt 65535 ] && port_free "$1" && port_free $(($1 + 1)); then
    printf '%s' "$1"
  else
    local p
    p="$(free_port_pair)"
    info "    ports $1/$(($1 + 1)) are taken; using $p/$((p + 1))"
    printf '%s' "$p"
  fi
}

# wait_port PORT SECONDS [PIDFILE]: until something accepts on 127.0.0.1:PORT; fail early if PIDFILE dies.
wait_port() {
  local port="$1" deadline=$((SECONDS + $2)) pidfile="${3:-}"
  until port_listening "$port"; do
    if [ -n "$pidfile" ] && ! pid_alive "$pidfile" >/dev/null; then
      echo "process of $pidfile exited before listening on $port" >&2
      return 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || {
      echo "nothing listening on 127.0.0.1:$port after $2 s" >&2
      return 1
    }
    sleep 0.2
  done
}

# ---- software TPMs: started by dev-support/cli.ts, stopped by their PID files -------------------------

# tpm_env_exports DIR: the client environment of the TPM stack in DIR (its start wrote DIR/env).
tpm_env_exports() {
  [ -f "$1/env" ] || die "no TPM client environment in $1/env (is its TPM running?)"
  # shellcheck source=/dev/null
  . "$1/env"
}

tpm_running() {
  local dir="$1"
  [ -f "$dir/env" ] && pid_alive "$dir/swtpm.proc" >/dev/null && pid_alive "$dir/dbus.proc" >/dev/null &&
    pid_alive "$dir/abrmd.proc" >/dev/null
}

# tpm_up DIR PORT LOG: start swtpm (data port PORT, control port PORT+1), D-Bus and tpm2-abrmd unless they
# run, and record their PIDs. TPM state persists in DIR/tpmstate, so a restarted stack has the same keys.
tpm_up() {
  local dir="$1" port="$2" log="$3" answer what
  if tpm_running "$dir"; then return 0; fi
  tpm_down "$dir" quiet
  answer="$(CURRENT_LOG="$log" dev_support tpm start --dir "$dir" --port "$port")" || {
    echo "the TPM did not start on 127.0.0.1:$port/$((port + 1)) (see $log)" >&2
    return 1
  }
  for what in swtpm dbus abrmd; do
    pid_record "$dir/$what.proc" "$(answer_get "${what}_pid" "$answer")" || true
  done
  tpm_running "$dir" || {
    tpm_down "$dir" quiet
    echo "the TPM in $dir stopped right after its start (see $dir/*.log)" >&2
    return 1
  }
}

# tpm_down DIR [quiet]: stop abrmd, dbus, swtpm of DIR (by PID file, only if still ours).
tpm_down() {
  local dir="$1" what
  for what in abrmd dbus swtpm; do
    if [ "${2:-}" = quiet ]; then
      pid_stop "$dir/$what.proc" "$what" 2>/dev/null
    else
      pid_stop "$dir/$what.proc" "$what"
    fi
  done
  rm -f "$dir/env" "$dir/swtpm.pid" "$dir/dbus.pid" "$dir/dbus.addr" "$dir/dbus.sock"
}

# ---- misc ---------------------------------------------------------------------------------------------

require_cmd() {
  local c
  for c in "$@"; do command -v "$c" >/dev/null || die "$c not found; run ./demo/demo.sh setup (it installs what is missing)"; done
}

# The Node programs of this repository.
node_prog() {
  local js="$DEMO_ROOT/dist/$1"
  [ -f "$js" ] || die "$js is missing: run npm run build (./demo/demo.sh setup does it)"
  printf '%s' "$js"
}

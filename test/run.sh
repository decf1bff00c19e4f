#!/usr/bin/env bash
# The one test command: system packages (only if missing), npm deps, lint, typecheck, build, vitest.
# The very last line of output is always "N passed, M failed"; skipped tests (never counted as passed)
# are reported on the line before it.
# Env: TEST_DATABASE_URL (use an existing PostgreSQL instead of a throwaway cluster), SKIP_APT=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REPORT="test-results/vitest.json"
STEP="setup"
SUMMARY_PRINTED=0

summary_from_report() {
  node -e '
    const fs = require("node:fs");
    let r;
    try { r = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch { console.log("0 passed, 1 failed"); process.exit(0); }
    const passed = r.numPassedTests | 0;
    let failed = r.numFailedTests | 0;
    const skipped = (r.numPendingTests | 0) + (r.numTodoTests | 0);
    // Files that failed without a failing test (import/syntax error, hook failure) still count as failures.
    for (const f of r.testResults || []) {
      if (f.status === "failed" && !(f.assertionResults || []).some((a) => a.status === "failed")) failed++;
    }
    if (r.success === false && failed === 0) failed = 1; // e.g. unhandled errors
    if (skipped) console.log(`${skipped} skipped (not counted as passed)`);
    console.log(`${passed} passed, ${failed} failed`);
  ' "$1"
}

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
  # native build of pkcs11js (node-gyp)
  g++ make python3)
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

STEP="node version"
node -e '
  const [maj, min] = process.versions.node.split(".").map(Number);
  if (maj < 20 || (maj === 20 && min < 19)) { console.error(`Node ${process.versions.node} < 20.19`); process.exit(1); }
'

# ---- (b) npm dependencies ---------------------------------------------------------------------------
STEP="npm ci"
if [ ! -d node_modules ] || [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci
fi
STEP="pkcs11js native module"
if ! node -e "require('pkcs11js')" >/dev/null 2>&1; then
  npm rebuild pkcs11js
  node -e "require('pkcs11js')"
fi

# ---- (c) lint, typecheck, build (fail fast) ------------------------------------------------------------
STEP="lint (npm run lint)"
npm run lint
STEP="typecheck (tsc --noEmit)"
npx tsc -p tsconfig.json --noEmit
STEP="build (npm run build)"
npm run build

# ---- (d) tests ----------------------------------------------------------------------------------------
STEP="vitest"
mkdir -p test-results
rm -f "$REPORT"
set +e
npx vitest run --reporter=default --reporter=json --outputFile.json="$REPORT"
vitest_rc=$?
set -e

# ---- (e) summary: always the last line -------------------------------------------------------------------
summary="$(summary_from_report "$REPORT")"
SUMMARY_PRINTED=1
line="$(printf '%s\n' "$summary" | tail -n 1)"
if [ "$summary" != "$line" ]; then printf '%s\n' "$summary" | head -n -1; fi
passed="${line%% passed*}"
rest="${line#*passed, }"
failed="${rest%% failed*}"
if [ "$vitest_rc" != 0 ]; then
  echo "FAILED step: vitest (exit $vitest_rc)"
elif [ "$passed" = 0 ]; then
  echo "FAILED: no test passed"
fi
echo "$line"
if [ "$vitest_rc" != 0 ] || [ "$passed" = 0 ] || [ "$failed" != 0 ]; then
  exit 1
fi
exit 0

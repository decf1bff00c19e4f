#!/usr/bin/env bash
# Create or reuse the principal's TPM key and register it (SPEC §7).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `register-principal-key.sh --help` for usage.
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
CLI="$ROOT/dist/registry-cli/cli.js"
if [[ ! -f "$CLI" ]]; then
  echo "error: $CLI is missing: run \`npm run build\` in $ROOT first" >&2
  exit 2
fi
exec node "$CLI" register-principal-key "$@"

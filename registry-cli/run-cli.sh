#!/usr/bin/env bash
# The body every registry-cli/*.sh wrapper execs: run the built CLI (dist/registry-cli/cli.js) with the
# wrapper's command and arguments, or say to build first (exit 2). Usage: run-cli.sh COMMAND [ARG...]
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"
CLI="$ROOT/dist/registry-cli/cli.js"
if [[ ! -f "$CLI" ]]; then
  echo "error: $CLI is missing: run \`npm run build\` in $ROOT first" >&2
  exit 2
fi
exec node "$CLI" "$@"

#!/usr/bin/env bash
# Delegate destinations to a principal key (registry-cli/README.md).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `grant-principal-scope.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" grant-principal-scope "$@"

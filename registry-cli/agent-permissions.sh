#!/usr/bin/env bash
# Grant, revoke (delete), list and check agent permissions (registry-cli/README.md).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `agent-permissions.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" agent-permissions "$@"

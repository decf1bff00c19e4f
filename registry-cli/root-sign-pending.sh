#!/usr/bin/env bash
# Root-sign the key and scope rows a root has not signed yet, after asking (registry-cli/README.md).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `root-sign-pending.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" root-sign-pending "$@"

#!/usr/bin/env bash
# Clear the root signature of a principal key or scope row (registry-cli/README.md).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `root-withdraw.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" root-withdraw "$@"

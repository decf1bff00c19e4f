#!/usr/bin/env bash
# Apply the registry migrations (prints what it applied or "up to date").
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `migrate.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" migrate "$@"

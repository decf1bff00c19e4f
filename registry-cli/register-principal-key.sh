#!/usr/bin/env bash
# Create or reuse the principal's TPM key and register it (registry-cli/README.md).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `register-principal-key.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" register-principal-key "$@"

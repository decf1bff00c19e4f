#!/usr/bin/env bash
# Create a root key in the PKCS#11 token and print its id and SPKI for the gateway config (registry-cli/README.md).
# Thin wrapper: the command is registry-cli/cli.ts, built to dist/ by `npm run build`. `init-root.sh --help` for usage.
exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/run-cli.sh" init-root "$@"

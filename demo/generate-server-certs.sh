#!/usr/bin/env bash
# Demo TLS material (EC P-256, openssl CLI), idempotent:
#   server CA + gateway certificate        server-ca.pem server-ca-key.pem server.pem server-key.pem
#     (SAN DNS:localhost, DNS:gateway, IP:127.0.0.1)
#   mock-services CA + one certificate     mock-ca.pem mock-ca-key.pem mock-services.pem mock-services-key.pem
#     (SAN DNS:docstore, DNS:messaging, DNS:localhost, IP:127.0.0.1)
# A CA that exists is reused; a leaf that still verifies against its CA, has the right names and is valid for
# at least another day is kept; anything else is (re)issued. Private keys are mode 0600.
#
# usage: demo/generate-server-certs.sh [OUT_DIR]   (default: $AGENT_GATEWAY_DEMO_CERTS_DIR, else <repo>/certs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-${AGENT_GATEWAY_DEMO_CERTS_DIR:-$ROOT/certs}}"
DAYS_CA=3650
DAYS_LEAF=825

command -v openssl >/dev/null || { echo "generate-server-certs: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

say() { echo "generate-server-certs: $*" >&2; }

# new_key FILE: a fresh P-256 private key, 0600 from the start.
new_key() {
  (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.tmp")
  mv -f "$1.tmp" "$1"
  chmod 600 "$1"
}

# key_matches_cert KEY CERT: the certificate carries KEY's public key.
key_matches_cert() {
  [ -s "$1" ] && [ -s "$2" ] || return 1
  local a b
  a="$(openssl pkey -in "$1" -pubout 2>/dev/null)" || return 1
  b="$(openssl x509 -in "$2" -noout -pubkey 2>/dev/null)" || return 1
  [ -n "$a" ] && [ "$a" = "$b" ]
}

# ensure_ca CERT KEY CN
ensure_ca() {
  local cert="$1" key="$2" cn="$3"
  if key_matches_cert "$key" "$cert" && openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null 2>&1; then
    chmod 600 "$key"
    return 0
  fi
  say "creating $cn ($(basename "$cert"))"
  new_key "$key"
  cat >"$TMP/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $cn
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -key "$key" -sha256 -days "$DAYS_CA" -config "$TMP/ca.cnf" -extensions ca \
    -out "$cert.tmp"
  mv -f "$cert.tmp" "$cert"
  chmod 644 "$cert"
  return 0
}

# leaf_ok CERT KEY CA NAME...: verifies against CA, matches KEY, valid > 1 day, has every DNS/IP name.
leaf_ok() {
  local cert="$1" key="$2" ca="$3"
  shift 3
  key_matches_cert "$key" "$cert" || return 1
  openssl verify -CAfile "$ca" "$cert" >/dev/null 2>&1 || return 1
  openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null 2>&1 || return 1
  local san name
  san="$(openssl x509 -in "$cert" -noout -ext subjectAltName 2>/dev/null)" || return 1
  for name in "$@"; do
    case "$name" in
      IP:*) grep -q "IP Address:${name#IP:}\(,\|$\)" <<<"$san" || return 1 ;;
      DNS:*) grep -q "DNS:${name#DNS:}\(,\|$\)" <<<"$san" || return 1 ;;
    esac
  done
}

# ensure_leaf CERT KEY CA CAKEY CN NAME...
ensure_leaf() {
  local cert="$1" key="$2" ca="$3" cakey="$4" cn="$5"
  shift 5
  if leaf_ok "$cert" "$key" "$ca" "$@"; then
    chmod 600 "$key"
    return 0
  fi
  say "issuing $cn ($(basename "$cert"), $(IFS=,; echo "$*"))"
  new_key "$key"
  local san
  san="$(IFS=,; echo "$*")"
  cat >"$TMP/leaf.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = $cn
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
  openssl req -new -key "$key" -config "$TMP/leaf.cnf" -out "$TMP/leaf.csr"
  openssl x509 -req -in "$TMP/leaf.csr" -CA "$ca" -CAkey "$cakey" -CAcreateserial -CAserial "$TMP/ca.srl" \
    -sha256 -days "$DAYS_LEAF" -extfile "$TMP/leaf.cnf" -extensions leaf -out "$cert.tmp" 2>/dev/null
  mv -f "$cert.tmp" "$cert"
  chmod 644 "$cert"
}

ensure_ca "$OUT/server-ca.pem" "$OUT/server-ca-key.pem" "agent-gateway demo server CA"
ensure_leaf "$OUT/server.pem" "$OUT/server-key.pem" "$OUT/server-ca.pem" "$OUT/server-ca-key.pem" \
  "agent-gateway demo gateway" DNS:localhost DNS:gateway IP:127.0.0.1

ensure_ca "$OUT/mock-ca.pem" "$OUT/mock-ca-key.pem" "agent-gateway demo mock-services CA"
ensure_leaf "$OUT/mock-services.pem" "$OUT/mock-services-key.pem" "$OUT/mock-ca.pem" "$OUT/mock-ca-key.pem" \
  "agent-gateway demo mock services" DNS:docstore DNS:messaging DNS:localhost IP:127.0.0.1

say "TLS material in $OUT"

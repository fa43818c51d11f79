#!/usr/bin/env bash
# Makes a development CA and a NATS server certificate for
# deploy/compose/compose.tls.yaml:
#
#   ./scripts/make-dev-certs.sh [DIR]     # default deploy/compose/tls
#
# DIR/ca.pem          the CA certificate: give it to clients (NATS_CA, --tls-ca, nats.RootCAs)
# DIR/ca-key.pem      the CA key: keep it, or delete it once the server certificate exists
# DIR/server.pem      the servers' certificate, for nats-1..3, localhost and 127.0.0.1
# DIR/server-key.pem  its key (readable by the NATS containers' user)
#
# For development and tests only: a production deployment uses certificates
# from its own CA. Existing files are kept; delete DIR to make new ones.
# Needs openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-deploy/compose/tls}
days=${LATCHKEY_CERT_DAYS:-825}
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.pem ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days "$days" \
    -subj "/CN=latchkey dev CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
  chmod 600 ca-key.pem
fi
if [ ! -f server.pem ]; then
  cat > server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1
EXT
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -subj "/CN=latchkey nats" -keyout server-key.pem -out server.csr 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days "$days" -extfile server.ext -out server.pem 2>/dev/null
  rm -f server.csr server.ext ca.srl
  # The NATS containers do not run as the owner of this directory.
  chmod 644 server-key.pem
fi
echo "dev CA and NATS server certificate in $PWD (clients trust ca.pem)"

#!/usr/bin/env bash
# Make the certificates of a Dask cluster with mutual TLS (see cluster/README.md, "TLS").
#
#   cluster/tls/make-certs.sh [OUT_DIR]            # default OUT_DIR: ./certs
#   SAN=DNS:scheduler.example.org,IP:10.0.0.5 DAYS=90 cluster/tls/make-certs.sh certs
#
# Writes, with openssl (ECDSA P-256 keys):
#   ca.pem, ca-key.pem          the cluster's own certificate authority; keep ca-key.pem offline
#   node.pem, node-key.pem      scheduler and workers (server and client use; SAN from $SAN)
#   client.pem, client-key.pem  users' jobs (client use only)
# Every party gets ca.pem and accepts only peers whose certificate it signed: a client
# without client.pem (or with a certificate from another CA) is refused by the scheduler.
set -euo pipefail

out=${1:-certs}
days=${DAYS:-365}
san=${SAN:-DNS:localhost,IP:127.0.0.1}

mkdir -p "$out"
cd "$out"
umask 077  # private keys readable by their owner only

serial() { echo "0x$(openssl rand -hex 16)"; }

openssl ecparam -name prime256v1 -genkey -noout -out ca-key.pem
openssl req -x509 -new -key ca-key.pem -sha256 -days "$days" -subj "/CN=edlae-dask cluster CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -set_serial "$(serial)" -out ca.pem

# issue NAME COMMON_NAME EXTENDED_KEY_USAGE [MORE_EXTENSION_LINES...]
issue() {
  local name=$1 cn=$2 eku=$3
  shift 3
  openssl ecparam -name prime256v1 -genkey -noout -out "$name-key.pem"
  openssl req -new -key "$name-key.pem" -subj "/CN=$cn" -out "$name.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=$eku" "$@" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -set_serial "$(serial)" \
    -days "$days" -sha256 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

issue node "edlae-dask node" serverAuth,clientAuth "subjectAltName=$san"
issue client "edlae-dask client" clientAuth

chmod 644 ca.pem node.pem client.pem
openssl verify -CAfile ca.pem node.pem client.pem
echo "wrote $(pwd)/{ca,node,client}.pem and their -key.pem files"

#!/usr/bin/env bash
# A throwaway certificate authority and one certificate per role (scheduler, worker, client) for
# napari-medit's dask cluster over TLS (docs/compute.md). dask's TLS is mutual: each side shows its
# own certificate, signed by the CA, and checks the other's. Keep the CA key off the laptop; give the
# laptop only ca.pem, client.pem and client-key.pem.
#
#   bash docs/tls-certificates.sh FOLDER [HOST]
#
# HOST: the name or IP the scheduler is reached by (default 127.0.0.1, for an SSH tunnel).
set -euo pipefail
out=${1:?usage: tls-certificates.sh FOLDER [HOST]}
host=${2:-127.0.0.1}
days=30
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca.pem -days "$days" \
    -subj "/CN=napari-medit throwaway CA" 2>/dev/null
if [[ $host =~ ^[0-9.]+$ ]]; then names="IP:$host,DNS:localhost"; else names="DNS:$host,IP:127.0.0.1"; fi
for role in scheduler worker client; do
    openssl req -newkey rsa:2048 -nodes -keyout "$role-key.pem" -out "$role.csr" \
        -subj "/CN=napari-medit $role" 2>/dev/null
    openssl x509 -req -in "$role.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out "$role.pem" \
        -days "$days" -extfile <(printf "subjectAltName=%s" "$names") 2>/dev/null
    rm "$role.csr"
done
rm -f ca.srl
chmod 600 ./*-key.pem
echo "certificates in $out: ca.pem; scheduler, worker, client (.pem and -key.pem)"

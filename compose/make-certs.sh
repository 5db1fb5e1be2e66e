#!/bin/sh
# Certificates for EagleEye's TLS/mTLS variants (compose/docker-compose.tls.yml, deploy/kubernetes/tls):
# a CA, a server certificate for each service and client certificates, with openssl.
#
#   compose/make-certs.sh [DIR]          (DIR defaults to compose/certs, which git ignores)
#
# Writes, each leaf in a directory of its own laid out like a Kubernetes TLS Secret (tls.crt,
# tls.key, ca.crt), so that a directory is what a container mounts:
#   DIR/ca.crt, DIR/ca.key          the CA (ECDSA P-256, 10 years); ca.key never leaves this host
#   DIR/detector-primary/           server certificate of the primary worker
#   DIR/detector-standby/           server certificate of the standby worker
#   DIR/router/                     server certificate of the router (client and admin ports)
#   DIR/router-backend/             client certificate the router presents to the workers (mTLS)
#   DIR/client/                     client certificate for operators and clients (eagleeye --tls-cert)
# Server names: the compose service name, the Kubernetes Service name in namespace
# $EAGLEEYE_NAMESPACE (default eagleeye: NAME, NAME.NS, NAME.NS.svc, NAME.NS.svc.cluster.local),
# localhost and 127.0.0.1. Worker certificates also name eagleeye-detector, the one name the routers
# check on every worker (--backend-tls-server-name: in a pool they dial workers at their addresses).
# Extra names for every server certificate: EXTRA_SANS="DNS:a.example,IP:10.0.0.5".
#
# Run again to rotate: an existing CA is kept (delete DIR/ca.* for a new one), every leaf is
# re-issued with a new key and replaces the old files by rename; the running services re-read them.
#
# Keys are readable by everyone by default (0644), because the containers run as uid 10001 and read
# them through a bind mount. On a shared host, run as root with CERT_OWNER=10001:10001 instead: the
# service keys are then owned by that user and 0600 (the client/ key stays yours).
set -eu

umask 077
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/certs}
ns=${EAGLEEYE_NAMESPACE:-eagleeye}
extra=${EXTRA_SANS:-}
owner=${CERT_OWNER:-}
days_ca=3650
days_leaf=825

command -v openssl >/dev/null || { echo "make-certs.sh: openssl is needed" >&2; exit 1; }
mkdir -p "$dir"
chmod 755 "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() {  # FILE: a fresh ECDSA P-256 key (PKCS#8 PEM)
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

if [ ! -s "$dir/ca.crt" ] || [ ! -s "$dir/ca.key" ]; then
    newkey "$tmp/ca.key"
    cat >"$tmp/ca.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = EagleEye CA
[ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -new -key "$tmp/ca.key" -config "$tmp/ca.cnf" -extensions ca \
        -days "$days_ca" -sha256 -out "$tmp/ca.crt"
    mv "$tmp/ca.key" "$dir/ca.key"
    chmod 644 "$tmp/ca.crt"
    mv "$tmp/ca.crt" "$dir/ca.crt"
    echo "made a new CA: $dir/ca.crt"
else
    echo "using the existing CA: $dir/ca.crt"
fi
chmod 600 "$dir/ca.key"

# NAME CN USAGE [SANS]: issue DIR/NAME/{tls.crt,tls.key,ca.crt}; USAGE is serverAuth or clientAuth.
issue() {
    name=$1 cn=$2 usage=$3 sans=${4:-}
    out="$dir/$name"
    mkdir -p "$out"
    chmod 755 "$out"
    newkey "$tmp/$name.key"
    {
        printf '[leaf]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n'
        printf 'extendedKeyUsage = %s\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n' "$usage"
        if [ -n "$sans" ]; then printf 'subjectAltName = %s\n' "$sans"; fi
    } >"$tmp/$name.ext"
    openssl req -new -key "$tmp/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
    openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days_leaf" -sha256 \
        -extfile "$tmp/$name.ext" -extensions leaf -out "$tmp/$name.crt" 2>/dev/null
    case $usage in serverAuth) purpose=sslserver ;; *) purpose=sslclient ;; esac
    openssl verify -CAfile "$dir/ca.crt" -purpose "$purpose" "$tmp/$name.crt" >/dev/null
    cp "$dir/ca.crt" "$tmp/$name.ca"
    chmod 644 "$tmp/$name.crt" "$tmp/$name.ca" "$tmp/$name.key"
    if [ -n "$owner" ] && [ "$name" != client ]; then
        chown "$owner" "$tmp/$name.key" && chmod 600 "$tmp/$name.key"
    fi
    # Key first, then certificate: a reader that sees the new certificate also finds its key.
    mv "$tmp/$name.ca" "$out/ca.crt"
    mv "$tmp/$name.key" "$out/tls.key"
    mv "$tmp/$name.crt" "$out/tls.crt"
    echo "issued $out/tls.crt (CN=$cn, $usage${sans:+, $sans})"
}

# SERVICE K8S_NAME: the names a server certificate covers.
names() {
    s="DNS:$1,DNS:$2,DNS:$2.$ns,DNS:$2.$ns.svc,DNS:$2.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
    if [ -n "$extra" ]; then s="$s,$extra"; fi
    echo "$s"
}

worker=DNS:eagleeye-detector  # what the routers check on every worker, at whatever address they dial it
issue detector-primary eagleeye-detector-primary serverAuth "$worker,$(names detector-primary eagleeye-detector-primary)"
issue detector-standby eagleeye-detector-standby serverAuth "$worker,$(names detector-standby eagleeye-detector-standby)"
issue router eagleeye-router serverAuth \
    "$(names router eagleeye-router),DNS:eagleeye-router-admin,DNS:eagleeye-router-admin.$ns,DNS:eagleeye-router-admin.$ns.svc,DNS:eagleeye-router-admin.$ns.svc.cluster.local"
issue router-backend eagleeye-router clientAuth
issue client eagleeye-operator clientAuth

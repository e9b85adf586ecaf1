#!/usr/bin/env bash
# Creates what deploy/compose.yaml's nodes and CLI need, under DIR
# (default deploy/certs): a cluster CA (ca/, whose key stays here, never
# on a node), node certificates for n1, n2 and n3 (their --tls-dir), and an
# admin client certificate (client/). It runs the node image's own
# 'zerogrid cert', so the host needs only docker. Existing files are kept.
#
# Usage: deploy/certs.sh [DIR]      (IMAGE=zerogrid:latest by default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${1:-$here/certs}; image=${IMAGE:-zerogrid:latest}
mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
zg() { docker run --rm --network none -v "$dir:/certs" "$image" "$@" >/dev/null; }
[ -f "$dir/ca/ca.key" ] || zg cert ca --dir /certs/ca --name "zerogrid compose CA"
for i in 1 2 3; do
  [ -f "$dir/n$i/node.crt" ] || zg cert node --ca /certs/ca --id "n$i" --host "n$i" --out "/certs/n$i"
done
[ -f "$dir/client/client.crt" ] || zg cert client --ca /certs/ca --name admin --roles admin --out /certs/client
echo "certificates in $dir (keep $dir/ca/ca.key safe: it issues certificates)"

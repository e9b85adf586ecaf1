#!/usr/bin/env bash
# Idle CPU of a 3-node cluster in containers sized like a Raspberry Pi Zero
# (--cpus 0.125 --memory 512m, one node per container), zerogrid and then
# etcd (Debian's etcd-server binary with its libc, imported as an image).
# Prints each container's CPU as a percentage of its quota (0.125 core),
# averaged over SECONDS after a settling time.
#
# Usage: [INSECURE=1] test/bench/pizero/idle.sh [PARTITIONS] [SECONDS] [PROFILE] (PROFILE=small:
# also gives the nodes --profile small; INSECURE=1: nodes without TLS)
set -euo pipefail
parts=${1:-32}; secs=${2:-60}; profile=${3:-default}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../../.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
net=zg-pizero

(cd "$root" && CGO_ENABLED=0 go build -o "$tmp/zerogrid" ./cmd/zerogrid)
cp "$here/Dockerfile" "$tmp/"
docker build -q -t zerogrid-pizero "$tmp" >/dev/null

if command -v etcd >/dev/null; then
  mkdir -p "$tmp/etcd-root/bin"
  cp "$(command -v etcd)" "$tmp/etcd-root/bin/etcd"
  for lib in $(ldd "$(command -v etcd)" | grep -o '/[^ ]*'); do
    mkdir -p "$tmp/etcd-root$(dirname "$lib")"; cp -L "$lib" "$tmp/etcd-root$lib"
  done
  tar -C "$tmp/etcd-root" -c . | docker import -c 'ENTRYPOINT ["/bin/etcd"]' - etcd-pizero >/dev/null
fi

docker network rm "$net" >/dev/null 2>&1 || true
docker network create "$net" >/dev/null
cleanup() { docker rm -f z1 z2 z3 e1 e2 e3 >/dev/null 2>&1 || true; docker network rm "$net" >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT

# usage_ns NAME: the container's CPU time so far (cgroup v1 or v2).
usage_ns() {
  local id; id=$(docker inspect -f '{{.Id}}' "$1")
  for f in /sys/fs/cgroup/cpuacct/docker/$id/cpuacct.usage /sys/fs/cgroup/cpu,cpuacct/docker/$id/cpuacct.usage; do
    [ -r "$f" ] && { cat "$f"; return; }
  done
  for f in /sys/fs/cgroup/system.slice/docker-$id.scope/cpu.stat /sys/fs/cgroup/docker/$id/cpu.stat; do
    [ -r "$f" ] && { awk '/usage_usec/{print $2 * 1000}' "$f"; return; }
  done
  echo "no cgroup CPU counter for $1" >&2; return 1
}

# cpu_pct NAME...: each container's CPU over secs, in % of 0.125 core.
cpu_pct() {
  declare -A a
  for c in "$@"; do a[$c]=$(usage_ns "$c"); done
  sleep "$secs"
  for c in "$@"; do
    awk -v a="${a[$c]}" -v b="$(usage_ns "$c")" -v s="$secs" -v c="$c" \
      'BEGIN{printf "%s %.1f%% of its 0.125-core quota\n", c, (b-a)/1e9/s/0.125*100}'
  done
}

limits=(--cpus 0.125 --memory 512m --network "$net")
peers=n1=z1:7100,n2=z2:7100,n3=z3:7100
# Mutual TLS, as nodes run by default: a CA and one certificate per node
# (INSECURE=1: --insecure instead).
"$tmp/zerogrid" cert ca --dir "$tmp/ca" >/dev/null
for i in 1 2 3; do
  "$tmp/zerogrid" cert node --ca "$tmp/ca" --id n$i --host z$i --out "$tmp/tls$i" >/dev/null
  sec=(--tls-dir /tls); [ "${INSECURE:-}" = 1 ] && sec=(--insecure)
  docker run -d --name z$i "${limits[@]}" -v "$tmp/tls$i:/tls:ro" zerogrid-pizero node --id n$i --listen 0.0.0.0:7100 \
    --data-dir /data "${sec[@]}" --peers $peers --partitions "$parts" --replicas 3 --profile "$profile" >/dev/null
done
sleep 30
echo "zerogrid, $parts partitions, $profile profile:"
cpu_pct z1 z2 z3
docker rm -f z1 z2 z3 >/dev/null

if docker image inspect etcd-pizero >/dev/null 2>&1; then
  cluster=e1=http://e1:2380,e2=http://e2:2380,e3=http://e3:2380
  for i in 1 2 3; do
    docker run -d --name e$i "${limits[@]}" etcd-pizero --name e$i --data-dir /data \
      --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://e$i:2380 \
      --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://e$i:2379 \
      --initial-cluster $cluster >/dev/null
  done
  sleep 30
  echo "etcd 3.4, defaults:"
  cpu_pct e1 e2 e3
fi

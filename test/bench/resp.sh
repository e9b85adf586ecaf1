#!/usr/bin/env bash
# The Redis front door side by side with redis-server: redis-benchmark
# (Debian redis-tools) against a 3-node zerogrid cluster's RESP port and
# against one redis-server with appendonly yes / appendfsync always, in the
# same run. zerogrid's own gRPC client at the same shape is the bench tool:
#   go run . -ops put,get -clients 1,16,64 -value-size 256 -keyspace 100000 -skip-etcd [-insecure]
#
# Usage: test/bench/resp.sh [tls|insecure] [requests] [clients...]
# e.g.   test/bench/resp.sh tls 20000 1 16 64
set -euo pipefail
mode=${1:-tls}
n=${2:-20000}
shift 2 || true
clients=("${@:-1 16 64}")
[ ${#clients[@]} -eq 1 ] && read -r -a clients <<<"${clients[0]}"
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d /tmp/zerogrid-respbench-XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

for tool in redis-benchmark redis-server; do
  command -v $tool >/dev/null || { echo "need $tool (apt-get install redis-tools redis-server)" >&2; exit 1; }
done
(cd "$root" && go build -o "$dir/zerogrid" ./cmd/zerogrid)
zg="$dir/zerogrid"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

peers=""
declare -A grpc resp
for id in n1 n2 n3; do
  grpc[$id]=127.0.0.1:$(port)
  resp[$id]=127.0.0.1:$(port)
  peers+="${peers:+,}$id=${grpc[$id]}"
done
sec=(--insecure)
rb_tls=()
cli_tls=(--insecure)
if [ "$mode" = tls ]; then
  "$zg" cert ca --dir "$dir/ca" >/dev/null
  "$zg" cert client --ca "$dir/ca" --name bench --roles admin --out "$dir/client" >/dev/null
  rb_tls=(--tls --cacert "$dir/client/ca.crt" --cert "$dir/client/client.crt" --key "$dir/client/client.key")
  cli_tls=(--tls-dir "$dir/client")
fi
for id in n1 n2 n3; do
  if [ "$mode" = tls ]; then
    "$zg" cert node --ca "$dir/ca" --id $id --host 127.0.0.1 --out "$dir/tls-$id" >/dev/null
    sec=(--tls-dir "$dir/tls-$id")
  fi
  "$zg" node --id $id --listen "${grpc[$id]}" --data-dir "$dir/$id" --peers "$peers" "${sec[@]}" \
    --resp-listen "${resp[$id]}" >"$dir/$id.log" 2>&1 &
  pids+=($!)
done
for i in $(seq 100); do
  "$zg" map create redis --addr "${grpc[n1]}" "${cli_tls[@]}" >/dev/null 2>&1 && break
  sleep 0.2
done
sleep 3 # let the partitions elect leaders

rport=$(port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$dir" --appendonly yes --appendfsync always --save "" \
  --daemonize no >"$dir/redis.log" 2>&1 &
pids+=($!)
sleep 1

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "zerogrid: 3 nodes, 32 partitions, 3 replicas, $mode; redis-server $(redis-server --version | grep -o 'v=[^ ]*'), appendonly yes, appendfsync always"
echo "redis-benchmark -t set,get -n $n -d 256 -r 100000 -c C (zerogrid through n1's RESP port)"
echo
echo "| target | clients | SET ops/s | SET p50 / p99 ms | GET ops/s | GET p50 / p99 ms |"
echo "|---|---:|---:|---:|---:|---:|"
bench() { # target host port clients tls...
  local target=$1 host=$2 p=$3 c=$4
  shift 4
  local out
  out=$(redis-benchmark -h "$host" -p "$p" "$@" -t set,get -n "$n" -d 256 -r 100000 -c "$c" --csv 2>/dev/null)
  local set get
  # --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
  cell() { echo "$out" | grep "^\"$1\"" | tr -d '"' | awk -F, '{printf "%.0f | %s / %s", $2, $5, $7}'; }
  set=$(cell SET)
  get=$(cell GET)
  echo "| $target | $c | $set | $get |"
}
for c in "${clients[@]}"; do
  bench "zerogrid RESP ($mode)" 127.0.0.1 "${resp[n1]##*:}" "$c" "${rb_tls[@]}"
  bench "redis-server (fsync always)" 127.0.0.1 "$rport" "$c"
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Idle CPU of 3 zerogrid node processes on loopback (default profile): 15 s
# to settle, then CPU time from /proc/PID/stat over SECONDS, summed, in cores.
#
# Usage: test/bench/idle-loopback.sh BINARY [PARTITIONS] [SECONDS]
# BINARY may be an etcd server binary: 3 etcd members with their defaults.
# zerogrid nodes run with mutual TLS (their default); INSECURE=1 runs them
# with --insecure instead. NODE_ARGS are added to every node's command line
# (e.g. NODE_ARGS="--ops-listen 127.0.0.1:0 --ops-pprof" to profile one).
set -euo pipefail
bin=$1; parts=${2:-32}; secs=${3:-20}
d=$(mktemp -d); base=$((7300 + RANDOM % 500))
peers="n1=127.0.0.1:$base,n2=127.0.0.1:$((base+1)),n3=127.0.0.1:$((base+2))"
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$d"; }
trap cleanup EXIT
if [ "$(basename "$bin")" = etcd ]; then
  # etcd with its defaults, 3 members, for the side-by-side figure.
  cluster="e1=http://127.0.0.1:$((base+10)),e2=http://127.0.0.1:$((base+11)),e3=http://127.0.0.1:$((base+12))"
  for i in 1 2 3; do
    "$bin" --name e$i --data-dir "$d/e$i" --listen-client-urls http://127.0.0.1:$((base+i-1)) \
      --advertise-client-urls http://127.0.0.1:$((base+i-1)) --listen-peer-urls http://127.0.0.1:$((base+9+i)) \
      --initial-advertise-peer-urls http://127.0.0.1:$((base+9+i)) --initial-cluster "$cluster" \
      --initial-cluster-state new > "$d/e$i.log" 2>&1 &
    pids+=($!)
  done
  parts=etcd
else
  # Mutual TLS, as nodes run by default (INSECURE=legacy: no security flag
  # at all, for binaries older than TLS).
  [ -n "${INSECURE:-}" ] || "$bin" cert ca --dir "$d/ca" >/dev/null
  for i in 1 2 3; do
    case "${INSECURE:-}" in
      1) sec=(--insecure) ;;
      legacy) sec=() ;;
      *) sec=(--tls-dir "$d/tls$i")
         "$bin" cert node --ca "$d/ca" --id n$i --host 127.0.0.1 --out "$d/tls$i" >/dev/null ;;
    esac
    "$bin" node --id n$i --listen 127.0.0.1:$((base+i-1)) --data-dir "$d/n$i" --peers "$peers" \
      ${sec[@]+"${sec[@]}"} --partitions "$parts" --replicas 3 ${NODE_ARGS:-} > "$d/n$i.log" 2>&1 &
    pids+=($!)
  done
fi
sleep 15
tick=$(getconf CLK_TCK)
sum() { local s=0 f; for p in "${pids[@]}"; do read -r -a f < "/proc/$p/stat"; s=$((s + f[13] + f[14])); done; echo "$s"; }
a=$(sum); sleep "$secs"; b=$(sum)
awk -v a="$a" -v b="$b" -v t="$tick" -v s="$secs" -v p="$parts" 'BEGIN{printf "%s partitions: %.3f cores for 3 idle nodes\n", p, (b-a)/t/s}'

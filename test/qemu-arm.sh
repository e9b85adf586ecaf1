#!/usr/bin/env bash
# Runs a package's tests (default: replication) as a 32-bit ARMv6 binary (the
# Raspberry Pi Zero's arch) under qemu user-mode emulation, so the bbolt engine
# is exercised with 32-bit ints and a 32-bit address space.
#
# Usage: [PKG=query] test/qemu-arm.sh [run-regexp] [test-binary-flags...]
#   run-regexp defaults to '^TestEngine'; extra flags (e.g. -test.short) are
#   passed to the test binary. Needs qemu-arm-static (Debian: qemu-user-static);
#   set QEMU_ARM to use another qemu-arm binary.
set -euo pipefail

run=${1:-'^TestEngine'}
shift || true
qemu=${QEMU_ARM:-qemu-arm-static}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if ! command -v "$qemu" >/dev/null; then
	echo "qemu-arm.sh: $qemu not found (apt-get install qemu-user-static)" >&2
	exit 1
fi

pkg=${PKG:-replication}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "qemu-arm.sh: building $pkg tests for linux/arm GOARM=6"
(cd "$root" && GOOS=linux GOARCH=arm GOARM=6 CGO_ENABLED=0 go test -c -o "$tmp/$pkg.test" "./$pkg/")

echo "qemu-arm.sh: running $tmp/$pkg.test -test.run '$run' under $qemu"
# Run in the package directory, as go test does, so testdata paths resolve.
# pipefail makes a failing test binary fail the script despite tee.
(cd "$root/$pkg" && "$qemu" "$tmp/$pkg.test" -test.run "$run" -test.v -test.count=1 -test.timeout=10m "$@") 2>&1 |
	tee "$tmp/out"

if ! grep -q '^=== RUN' "$tmp/out"; then
	echo "qemu-arm.sh: no test matched '$run'" >&2
	exit 1
fi
echo "qemu-arm.sh: PASS"

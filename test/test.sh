#!/usr/bin/env bash
# The one test command (README.md, .ci/run): formatting, vet, the unit and
# integration tests with the race detector, cross-builds for the Pi and
# servers, and the storage-engine contract plus replication unit tests run as
# real 32-bit ARM code under qemu-arm-static, and the cross-arch Starlark
# golden test likewise.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "not gofmt-formatted:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== cross-builds (CGO_ENABLED=0)"
for target in arm:6 arm64: amd64:; do
  arch=${target%%:*}; arm=${target#*:}
  CGO_ENABLED=0 GOARCH=$arch GOARM=$arm go build -o /dev/null ./cmd/zerogrid
  echo "   built linux/$arch${arm:+ (GOARM=$arm)}"
done

echo "== 32-bit ARM under qemu: engine contract, shared Raft log store + replication, lock, TTL, change-log and apply unit tests"
bash test/qemu-arm.sh '^(TestEngine|TestCluster|TestLock|TestTTL|TestBadTTL|TestExpireOp|TestChangeLog|TestChanged|TestLargeValues|TestEarlyRecords|TestCASKeepExpiry|TestDedupPrune|TestApply|TestLog)'
echo "== 32-bit ARM under qemu: the same Starlark jobs give the same results as on amd64"
PKG=query bash test/qemu-arm.sh '^TestCrossArchGolden$'

echo "== short fuzz runs (every decoder of outside bytes; go test -fuzz FuzzX ./PKG explores longer)"
for target in replication:FuzzDecodeLog replication:FuzzDecodeIntentOp replication:FuzzDecodeEntry \
  replication:FuzzApplyCommand replication:FuzzRestoreSnapshot \
  query:FuzzParseJSON query:FuzzCompileFilter query:FuzzCompileScript node:FuzzGRPCRequests; do
  pkg=${target%%:*}; fn=${target#*:}
  if ! out=$(go test "./$pkg" -run '^$' -fuzz "^$fn\$" -fuzztime 3s 2>&1); then
    # Go's fuzzer can stop with "context deadline exceeded" when a worker is
    # busy as its time runs out (a loaded machine); that is no finding (a
    # finding names a failing input), so run it once more.
    if grep -q "context deadline exceeded" <<<"$out" && ! grep -q "Failing input written" <<<"$out"; then
      echo "   $fn: the fuzzer timed out without a finding; running it again"
      out=$(go test "./$pkg" -run '^$' -fuzz "^$fn\$" -fuzztime 3s 2>&1) || {
        echo "fuzz $fn failed (the failing input is in $pkg/testdata/fuzz/$fn):"; echo "$out"; exit 1; }
    else
      echo "fuzz $fn failed (the failing input is in $pkg/testdata/fuzz/$fn):"; echo "$out"; exit 1
    fi
  fi
  echo "   $fn: 3s, no failure"
done

echo "== go test -race"
go test -race -count=1 -timeout 20m ./...

#!/usr/bin/env bash
# Builds the zerogrid node image (deploy/Dockerfile: FROM scratch with the
# static binary) for linux/amd64, linux/arm64 and linux/arm/v6, tagged
# IMAGE:amd64, IMAGE:arm64 and IMAGE:armv6, and IMAGE:latest for this
# machine's architecture. Nothing is pulled: scratch is empty.
#
# Usage: deploy/build-images.sh [IMAGE]     (default: zerogrid)
# ONLY=amd64 (or arm64, armv6) builds that one.
# To run the arm images on an x86 host for a test, install qemu-user-static.
set -euo pipefail
image=${1:-zerogrid}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp "$root/deploy/Dockerfile" "$tmp/"
for target in amd64: arm64: arm:6; do
  arch=${target%%:*}; arm=${target#*:}
  tag=$arch${arm:+v$arm}
  [ -z "${ONLY:-}" ] || [ "$ONLY" = "$tag" ] || continue
  (cd "$root" && CGO_ENABLED=0 GOOS=linux GOARCH=$arch GOARM=$arm go build -trimpath -o "$tmp/zerogrid" ./cmd/zerogrid)
  docker build -q --platform "linux/$arch${arm:+/v$arm}" -t "$image:$tag" "$tmp" >/dev/null
  echo "built $image:$tag (linux/$arch${arm:+/v$arm})"
done
case $(uname -m) in
  x86_64) host=amd64 ;;
  aarch64) host=arm64 ;;
  armv6l|armv7l) host=armv6 ;;
  *) host="" ;;
esac
if [ -n "$host" ] && docker image inspect "$image:$host" >/dev/null 2>&1; then
  docker tag "$image:$host" "$image:latest"
  echo "tagged $image:latest = $image:$host"
fi

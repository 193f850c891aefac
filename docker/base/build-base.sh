#!/usr/bin/env bash
# Build the local base image when no registry can be reached:
#   debootstrap bookworm (minbase + python3, python3-venv, ca-certificates) -> docker import.
# Idempotent: does nothing when the image already exists. Needs root (debootstrap) and a Docker client.
#
#   docker/base/build-base.sh [IMAGE]          default IMAGE: pinmatrix/base:bookworm-py311
# Environment: PINMATRIX_DOCKER (client), DEBIAN_MIRROR (default http://deb.debian.org/debian),
#              SUITE (default bookworm).
set -euo pipefail

IMAGE="${1:-pinmatrix/base:bookworm-py311}"
SUITE="${SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER="${PINMATRIX_DOCKER:-}"
if [[ -z "$DOCKER" ]]; then
  if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker || true)"; fi
fi

die() { echo "build-base.sh: error: $*" >&2; exit 1; }

[[ -n "$DOCKER" && -x "$DOCKER" ]] || die "no docker client found (set PINMATRIX_DOCKER)"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 \
  || die "the Docker daemon is not reachable through $DOCKER (is dockerd running?)"

if "$DOCKER" image inspect --format '{{.Id}}' "$IMAGE" >/dev/null 2>&1; then
  echo "build-base.sh: $IMAGE exists; nothing to do"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install -y debootstrap)"
[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"

ROOTFS="$(mktemp -d /tmp/pinmatrix-rootfs.XXXXXX)"
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

start=$SECONDS
echo "build-base.sh: debootstrap $SUITE from $MIRROR into $ROOTFS"
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1; then
  tail -n 30 "$ROOTFS.log" >&2
  die "debootstrap failed (full log: $ROOTFS.log)"
fi
# Smaller image: package lists and caches are not needed at run time.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*

# mktemp made the rootfs 0700, and tar records `./` with that mode: Docker's overlay driver ignores
# it, but rootless Podman (vfs storage) gives the image's / mode 0700, and the probe's uid 1000
# cannot even exec /bin/sh ("stat /bin/sh: permission denied").
chmod 0755 "$ROOTFS"
echo "build-base.sh: importing as $IMAGE"
tar -C "$ROOTFS" --numeric-owner -c . \
  | "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' \
      - "$IMAGE" >/dev/null \
  || die "docker import failed"
"$DOCKER" run --rm --network none "$IMAGE" python3 -c 'import venv, ssl; print("python ok")' >/dev/null \
  || die "the imported image cannot run python3"
rm -f "$ROOTFS.log"
echo "build-base.sh: built $IMAGE in $((SECONDS - start))s"

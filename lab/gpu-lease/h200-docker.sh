#!/usr/bin/env bash
# Issue 18 on the lent H200: the cells run by the docker runner, with the GPU inside the container, on a
# machine with no Docker, no registry and no network. In one call:
#   1. the engine: the machine's own dockerd, else Debian's docker.io 20.10 binaries carried in
#      .gpu/docker/docker-20.10-bookworm-bin.tar.xz, started as a daemon of its own (own socket and data
#      root, no bridge: builds are --network none and so are the cells);
#   2. the base image from the machine's own Python and torch (`python -m pinmatrix base-image`);
#   3. a CDI spec for the GPUs (`python -m pinmatrix cdi-spec`), when /dev/nvidia0 exists;
#   4. `pinmatrix matrix --runner docker --offline --pull never` on PM_MATRIX, from the wheelhouse PM_WHEELS;
#   5. the venv route on the same lease for the side-by-side (lab/gpu-lease/h200-device.sh, the H200 table's
#      tf 5.17.0 cell), where the site layers were carried;
#   6. the docker run folder, with the daemon's log, `docker info` and the base image's record, back as
#      $OUT/<label>-docker.tgz (the venv route's as $OUT/<label>-venv.tgz).
#
#   lab/gpu-lease/h200-docker.sh LABEL [SELECTOR...]
# Environment:
#   PM_TORCH_PY  the interpreter whose torch goes into the base image (the H200: /opt/torch/.venv/bin/python)
#   PM_WHEELS    wheelhouse with every non-torch wheel of the cells and uv's own wheel (default .gpu/wheelhouse)
#   PM_MATRIX    default lab/gpu-lease/h200-docker.yaml (its base_image tag is the one made in step 2)
#   PM_PY        the interpreter that runs pinmatrix (default python3), with .gpu/sites/harness if present
#   PM_TIMEOUT   seconds for each matrix run, SIGINT at the limit so the report is still written (300)
#   PM_VENV=0    skip step 5
#   PM_CARRIED_ENGINE=1  use the carried binaries even where the host has dockerd installed (to rehearse step 1)
#   PM_USE_RUNNING_ENGINE=1  run on the daemon that already answers (DOCKER_HOST) instead of starting one
# What travels (64 MiB a call): .gpu/docker (43 MB) and the wheelhouse for the tf 5.17.0 cell, cp312, uv
# included (71 MB, kept as .gpu/wheelhouse-1 and -2 of 36 MB). So: two calls that each carry one part
# and copy it to $HOME/stash (the machine stays warm 30 s between calls), then this script with
# PM_WHEELS=$HOME/stash/wheelhouse and the engine unpacked from $HOME/stash.
# Rehearsed on a CPU host (2026-11-29), with that host's dockerd binary and with the carried ones, each
# started as a second daemon: base image from a venv's Python 3.11 and torch 2.13.0+cpu (910 MiB, 10 s),
# then the tf 4.57.6 cell built with --network none from a local wheelhouse and probed: works, 17 s. That
# second daemon deleted the first one's docker0 (see above), which is why the script now refuses it. The
# GPU parts (cdi-spec, --gpus with the translated spec) are what the H200 adds.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
label=${1:?usage: lab/gpu-lease/h200-docker.sh LABEL [SELECTOR...]}; shift
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/h200-docker-$label; rm -rf "$W"; mkdir -p "$W"
REPORTS=/tmp/pm-reports-$label; mkdir -p "$REPORTS"
PY=${PM_PY:-python3}
TORCH_PY=${PM_TORCH_PY:?set PM_TORCH_PY to the interpreter that holds torch}
WHEELS=$(realpath "${PM_WHEELS:-.gpu/wheelhouse}")
MATRIX=${PM_MATRIX:-lab/gpu-lease/h200-docker.yaml}
LIMIT=${PM_TIMEOUT:-300}
say() { echo "[h200-docker $(date +%T)] $*"; }
# pinmatrix, with the harness layer (jsonschema: the H200 image lacks it) on its own path only, and only
# where the interpreter lacks what the layer holds
if ! "$PY" -c "import jsonschema" 2>/dev/null && [ -f .gpu/sites/harness.txz ]; then
  [ -d /tmp/sites/harness ] || { mkdir -p /tmp/sites/harness && "$PY" -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" .gpu/sites/harness.txz /tmp/sites/harness; }
  PM=("$PY" -c "import runpy, sys; sys.path.insert(1, '/tmp/sites/harness'); sys.argv[0] = 'pinmatrix'; runpy.run_module('pinmatrix', run_name='__main__', alter_sys=True)")
else
  PM=("$PY" -m pinmatrix)
fi

# 1. the engine
if [ "${PM_USE_RUNNING_ENGINE:-0}" != 1 ] && { [ "${PM_CARRIED_ENGINE:-0}" = 1 ] || ! command -v dockerd >/dev/null 2>&1; }; then
  say "unpacking the carried docker.io 20.10 binaries into /opt/docker"
  engine_tar=.gpu/docker/docker-20.10-bookworm-bin.tar.xz
  [ -f "$engine_tar" ] || engine_tar=$HOME/stash/docker-20.10-bookworm-bin.tar.xz
  mkdir -p /opt/docker && tar -C /opt/docker -xJf "$engine_tar" || exit 1
  export PATH=/opt/docker/usr/bin:/opt/docker/usr/sbin:$PATH
  export LD_LIBRARY_PATH=/opt/docker/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
# A daemon of its own runs with --bridge=none, and dockerd then deletes the host's docker0 interface: a
# rehearsal beside another daemon (2026-11-29, on the CI host) left that daemon unable to run any build
# ("could not find bridge docker0") until it was restarted. So: never beside another daemon. Where one
# answers already, PM_USE_RUNNING_ENGINE=1 uses it instead (DOCKER_HOST as set), else this stops.
if [ "${PM_USE_RUNNING_ENGINE:-0}" = 1 ]; then
  docker info >"$W/docker-info.txt" 2>&1 || { say "PM_USE_RUNNING_ENGINE=1 but no daemon answers"; exit 1; }
  export DOCKER_BUILDKIT=1 PINMATRIX_DOCKER=${PINMATRIX_DOCKER:-$(command -v docker)}
  say "using the running daemon: $(docker version --format '{{.Server.Version}}')"
  start_engine=0
elif pgrep -x dockerd >/dev/null 2>&1; then
  say "another dockerd runs here: starting one of our own (--bridge=none) would delete its docker0;"
  say "stop it first, or set PM_USE_RUNNING_ENGINE=1 to run on it"
  exit 2
else
  start_engine=1
fi
D=/tmp/pm-docker-$label
mkdir -p "$D"
if [ "$start_engine" = 1 ]; then
  say "starting dockerd ($(dockerd --version 2>&1 | head -1)) on unix://$D/sock"
  setsid nohup dockerd --host "unix://$D/sock" --data-root "$D/data" --exec-root "$D/exec" \
    --pidfile "$D/pid" --iptables=false --ip6tables=false --bridge=none \
    --containerd-namespace "pm-$label" --containerd-plugins-namespace "pm-$label-plugins" \
    >"$W/dockerd.log" 2>&1 </dev/null &
  export DOCKER_HOST=unix://$D/sock DOCKER_BUILDKIT=1 PINMATRIX_DOCKER=$(command -v docker)
  for i in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >"$W/docker-info.txt" 2>&1 || { say "dockerd did not come up:"; tail -20 "$W/dockerd.log"; exit 1; }
  say "dockerd up after ${i}s: $(docker version --format '{{.Server.Version}}')"
  stop_engine() { [ -f "$D/pid" ] && kill "$(cat "$D/pid")" 2>/dev/null; }
  trap stop_engine EXIT
fi

# 2. the base image from this machine's Python and torch (the tag PM_MATRIX names)
tag=$(sed -n 's/^  base_image: \["\(.*\)"\].*/\1/p' "$MATRIX" | head -1)
say "base image $tag from $TORCH_PY"
"${PM[@]}" base-image --python "$TORCH_PY" --tag "$tag" >"$W/base-image.json" 2>"$W/base-image.log" \
  || { tail -20 "$W/base-image.log"; exit 1; }
tail -3 "$W/base-image.log"

# 3. GPUs into the container: a CDI spec (the runner picks native CDI, the NVIDIA runtime or flags
#    translated from the spec, and records which in each outcome's gpu_access)
if [ -e /dev/nvidia0 ]; then
  mkdir -p /etc/cdi && "${PM[@]}" cdi-spec -o /etc/cdi/pinmatrix-nvidia.yaml && cp /etc/cdi/pinmatrix-nvidia.yaml "$W/"
  gpu_args=(--gpus 0)
else
  say "no /dev/nvidia0: a CPU rehearsal"
  gpu_args=(--cpu)
fi

# 4. the docker runner, air-gapped
t=$(date +%s)
timeout -s INT -k 20 "$LIMIT" "${PM[@]}" matrix --matrix "$MATRIX" --runner docker --offline --pull never \
  --find-links "$WHEELS" "${gpu_args[@]}" --label "$label-docker" --reports "$REPORTS" --rerun=all "$@" \
  >"$W/docker-run.log" 2>&1
say "docker runner: exit $? in $(( $(date +%s) - t )) s"
grep -v '^\s*$' "$W/docker-run.log" | grep -v '^\[' | tail -8

# 5. the venv route on the same lease, for the side-by-side: the H200 table's tf 5.17.0 cell with the
#    device's own torch (lab/gpu-lease/h200-device.sh; same checks, its packages from the site layers)
if [ "${PM_VENV:-1}" != 0 ] && [ -d .gpu/sites ]; then
  PM_ENV_CHECK=0 PM_TIMEOUT=$LIMIT bash lab/gpu-lease/h200-device.sh "$label-venv" 0 transformers=5.17.0 unsloth=none \
    >"$W/venv-run.log" 2>&1
  say "venv route: exit $? (its run folder: $OUT/$label-venv.tgz)"
fi

# 6. back: the docker run folder with this call's logs, the engine's info and the base image's record
run=$(ls -d "$REPORTS"/*-"$label"-docker 2>/dev/null | tail -1)
if [ -n "$run" ]; then
  cp "$W"/*.log "$W"/*.txt "$W"/*.json "$W"/*.yaml "$run"/ 2>/dev/null
  tar -C "$REPORTS" -czf "$OUT/$label-docker.tgz" "$(basename "$run")" && say "wrote $OUT/$label-docker.tgz"
  [ -f "$run/summary.md" ] && sed -n '/^## Speed/,/^## Probe time/p' "$run/summary.md" | head -20
else
  say "no run folder: see $W/docker-run.log"; tail -20 "$W/docker-run.log"
fi

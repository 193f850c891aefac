#!/usr/bin/env bash
# The lent H200s: unpack the site layers (.gpu/sites/*.txz, made by lab/gpu-lease/h200-sites.sh), check that
# each cell's environment is consistent, and run the selected cells of lab/gpu-lease/h200-prepared.yaml with
# the venv runner on the device's own torch. Everything comes back as $OUT/<label>.tgz plus logs.
#
#   lab/gpu-lease/h200-device.sh LABEL GPUS [--rogue] [SELECTOR...]
#     GPUS: 0 (the single-GPU table) or 0,1 (two cells at once, issue 15)
#     --rogue: while the cells run, start one process that carries a cell's PINMATRIX_CELL_ID (as any
#              child of that cell would) but ignores CUDA_VISIBLE_DEVICES and takes memory on every GPU,
#              so pinmatrix/run/gpu_watch.py has a trespass to find
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
label=$1; gpus=$2; shift 2
rogue=0; if [ "${1:-}" = "--rogue" ]; then rogue=1; shift; fi
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
W=/tmp/dev-$label; rm -rf "$W"; mkdir -p "$W"   # machine.txt, env-check.jsonl, device.log, rogue.log: into the run folder
S=/tmp/sites; mkdir -p $S
PY=$(command -v python3)
# A frozen copy of the probes (.gpu/probes-frozen), when carried: runs in separate calls then share one probe
if [ -d .gpu/probes-frozen ]; then rm -rf probes && cp -r .gpu/probes-frozen probes && echo "probes: the frozen copy"; fi
t0=$(date +%s)
# Layers come from $PM_SITES (default .gpu/sites) as NAME.txz, or as NAME.tgz.part-NN pieces there or in
# $PM_STASH (default /root/stash: earlier calls of the same warm machine copied theirs there, because the
# repo folder is laid anew at every call). A layer that is in neither is left out, with its --extra-site
# entries: a run of the transformers 5.x cells carries no 4.57.6 layer.
SRC=${PM_SITES:-.gpu/sites}; STASH=${PM_STASH:-/root/stash}
parts_of() {  # NAME.EXT: its parts in $SRC and $STASH, each part once, in order
  ls "$SRC/$1.part-"* "$STASH/$1.part-"* 2>/dev/null | awk -F/ '{print $NF" "$0}' | sort -u -k1,1 | cut -d" " -f2
}
for n in harness common tf4576 tf550 uns u1010 u914 diff039 diff042 fa4 liger; do
  [ -d $S/$n ] && continue
  parts=$(parts_of "$n.tgz"); xparts=$(parts_of "$n.txz")
  if [ -n "$xparts" ]; then   # h200-sites.sh's carry layout: an xz layer in parts
    ( rm -rf $S/$n.tmp && mkdir -p $S/$n.tmp && cat $xparts | xz -dc | tar -C $S/$n.tmp -xf - && mv $S/$n.tmp $S/$n ) &
  elif [ -f "$SRC/$n.txz" ]; then
    ( rm -rf $S/$n.tmp && mkdir -p $S/$n.tmp && \
      $PY -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$SRC/$n.txz" $S/$n.tmp && \
      mv $S/$n.tmp $S/$n ) &
  elif [ -n "$parts" ]; then
    ( rm -rf $S/$n.tmp && mkdir -p $S/$n.tmp && cat $parts | tar -C $S/$n.tmp -xzf - && mv $S/$n.tmp $S/$n ) &
  fi
done
wait
echo "sites unpacked in $(( $(date +%s) - t0 )) s: $(ls $S | tr '\n' ' ')"
# the layers, in path order, with the cells they serve (pinmatrix/environ/site_rules.py)
SITES=()
for rule in common transformers=4.57.6:tf4576 transformers=5.5.0:tf550 unsloth=2026.10.9:u1010 \
            unsloth=2026.9.14:u914 unsloth!=none:uns unsloth!=none,transformers=4.57.6:diff039 \
            unsloth!=none,transformers!=4.57.6:diff042 flash-attn-4!=none:fa4 liger-kernel!=none:liger; do
  name=${rule##*:}; cond=${rule%"$name"}
  if [ -d $S/$name ]; then SITES+=(--extra-site "$cond$S/$name"); else echo "site layer $name: not carried, left out"; fi
done
{
  nvidia-smi -L; nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  nvidia-smi topo -m 2>&1 | head -8
  $PY -c 'import torch,sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.device_count())'
  nproc; free -g | head -2
} > "$W/machine.txt" 2>&1
# every cell's path, consistency-checked (the same layers the venv's .pth gets, then the device's site);
# PM_ENV_CHECK=0 skips it where device time is short: pinmatrix still checks each cell it runs
: > "$W/env-check.jsonl"
[ "${PM_ENV_CHECK:-1}" = 0 ] || for tf in 4.57.6 5.5.0 5.17.0; do for us in 2026.10.9 2026.9.14 none; do
  [ "$tf/$us" = "5.17.0/2026.9.14" ] && continue
  p=$S/common
  case $tf in 4.57.6) p=$p:$S/tf4576;; 5.5.0) p=$p:$S/tf550;; esac
  case $us in 2026.10.9) p=$p:$S/u1010:$S/uns;; 2026.9.14) p=$p:$S/u914:$S/uns;; esac
  if [ $us != none ]; then [ $tf = 4.57.6 ] && p=$p:$S/diff039 || p=$p:$S/diff042; fi
  [ $tf != 4.57.6 ] && p=$p:$S/fa4:$S/liger   # matrix.yaml's include rules: FA4 and Liger on the 5.x lines
  PYTHONPATH=$p $PY lab/gpu-lease/h200_env_check.py "tf$tf-unsloth-$us"
done; done > "$W/env-check.jsonl" 2>&1
$PY - "$W/env-check.jsonl" <<'PYEOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        d = json.loads(line)
    except ValueError:
        print("env-check:", line.strip()[:300]); continue
    print(f"env-check {d['label']}: consistent={d['consistent']} unmet(sites)={d['unmet_involving_sites'][:4]} "
          f"unmet(device)={len(d['unmet_among_device_packages'])}")
PYEOF
if [ $rogue = 1 ]; then
  ( sleep 25
    cell=$($PY -c "import runpy, sys; sys.path.insert(1, '$S/harness'); sys.argv[0] = 'pinmatrix'; runpy.run_module('pinmatrix', run_name='__main__', alter_sys=True)" list --matrix "${PM_MATRIX:-lab/gpu-lease/h200-prepared.yaml}" "$@" | head -1)
    echo "rogue: as $cell, on every GPU, CUDA_VISIBLE_DEVICES ignored" >&2
    env -u CUDA_VISIBLE_DEVICES PINMATRIX_CELL_ID="$cell" $PY -c '
import time, torch
xs = [torch.empty(2 * 2**30, dtype=torch.uint8, device=f"cuda:{i}") for i in range(torch.cuda.device_count())]
torch.cuda.synchronize(); time.sleep(12)' ) > "$W/rogue.log" 2>&1 &
fi
export PINMATRIX_COMPILE_CACHE_DIR=/tmp/compile-$label PINMATRIX_VENV_DIR=/tmp/venvs-$label   # cold, like a fresh machine
t1=$(date +%s)
# SIGINT at the limit: the run still writes its report, and what finished comes back
# The harness's own needs (jsonschema; the H200 image lacks it) go on its sys.path only, never into a cell.
pm() {   # pm LOG ARGS...: one pinmatrix matrix run on the lent GPU
  local log=$1; shift
  timeout -s INT -k 20 "${PM_TIMEOUT:-540}" $PY -c "import runpy, sys; sys.path.insert(1, '$S/harness'); sys.argv[0] = 'pinmatrix'; runpy.run_module('pinmatrix', run_name='__main__', alter_sys=True)" matrix --runner venv --no-install --system-site-packages \
    --venv-python "$PY" --gpus "$gpus" --reports /tmp/pm-reports --rerun=all "${SITES[@]}" "$@" > "$log" 2>&1
}
# PM_SPEED_CELLS (cell ids, space-separated): those cells run every group of $PM_MATRIX; the selected
# others run $PM_COMPAT_MATRIX (no throughput), PM_CELLS_PER_GPU at once on the same GPU. The two runs go
# at the same time: every speed phase waits for the GPU alone (probes/gpu_share.py, a host-wide lock).
labels=("$label")
# PM_BESIDE: a command run at the same time as the cells (a repro script, say), holding the GPU lock shared
# like compat work, so no speed phase measures beside it; its output goes to $OUT/beside.txt
if [ -n "${PM_BESIDE:-}" ]; then
  lockdir=${PINMATRIX_GPU_LOCK_DIR:-/tmp/pinmatrix-gpu-locks-$(id -u)}; mkdir -p "$lockdir"
  lock=(); command -v flock >/dev/null && lock=(flock -s "$lockdir/gpu-${gpus%%,*}.lock")
  ( S=$S "${lock[@]}" bash -c "$PM_BESIDE" > "$OUT/beside.txt" 2>&1; echo "beside: exit $?" >> "$OUT/beside.txt" ) &
  beside=$!
fi
if [ -n "${PM_SPEED_CELLS:-}" ]; then
  labels=("$label-speed" "$label-compat")
  pm "$W/device-speed.log" --matrix "${PM_MATRIX:-lab/gpu-lease/h200-prepared.yaml}" --label "$label-speed" \
     --cells-per-gpu "$(echo $PM_SPEED_CELLS | wc -w)" $PM_SPEED_CELLS & p1=$!
  skip=(); for c in $PM_SPEED_CELLS; do skip+=("$c"); done
  compat=$($PY -c "import runpy, sys; sys.path.insert(1, '$S/harness'); sys.argv[0] = 'pinmatrix'; runpy.run_module('pinmatrix', run_name='__main__', alter_sys=True)" list --matrix "${PM_COMPAT_MATRIX:-lab/gpu-lease/h200-compat.yaml}" "$@" | grep -vxF -f <(printf '%s\n' "${skip[@]}"))
  echo "speed cells: $PM_SPEED_CELLS"; echo "compat cells: $compat"
  pm "$W/device-compat.log" --matrix "${PM_COMPAT_MATRIX:-lab/gpu-lease/h200-compat.yaml}" --label "$label-compat" \
     --cells-per-gpu "${PM_CELLS_PER_GPU:-4}" $compat & p2=$!
  wait $p1; rc1=$?; wait $p2; rc2=$?; rc=$(( rc1 > rc2 ? rc1 : rc2 ))
else
  pm "$W/device.log" --matrix "${PM_MATRIX:-lab/gpu-lease/h200-prepared.yaml}" --label "$label" \
     --cells-per-gpu "${PM_CELLS_PER_GPU:-1}" "$@"
  rc=$?
fi
echo "pinmatrix matrix: exit $rc in $(( $(date +%s) - t1 )) s"
wait
[ -n "${beside:-}" ] && { echo "== beside"; grep -v '^RESULT' "$OUT/beside.txt" | tail -30; }
for l in "${labels[@]}"; do
  run=$(ls -d /tmp/pm-reports/*-"$l" 2>/dev/null | tail -1)
  [ -n "$run" ] || { echo "$l: no run folder"; continue; }
  cp "$W"/* "$run"/
  tar -C /tmp/pm-reports -czf "$OUT/$l.tgz" "$(basename "$run")"
  [ -f "$run/summary.md" ] && sed -n '/^## transformers/,/^## Failures/p;/^## Speed/,/^## Probe time/p;/^## GPU timeline/,$p' "$run/summary.md" | head -60
done
for f in "$W"/device*.log; do echo "== $f"; grep -v '^\s*$' "$f" | grep -v '^\[' | tail -12; done
exit $rc

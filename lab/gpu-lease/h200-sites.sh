#!/usr/bin/env bash
# Pack what the lent H200 lacks for the default matrix's cells as site layers in .gpu/sites/*.txz
# (then: lab/gpu-lease/h200-device.sh). Each layer is one package set that a group of cells shares; the
# versions are uv's locks of the default matrix re-resolved with the device's installed versions as
# preferences (`uv pip compile -o` with the device's list as the existing output), keeping only what
# differs from the device. xz, not gzip: transformers packs to 5.8 MB instead of 13.6, and all eight
# layers (38 MB) travel in one device call.
set -euo pipefail
B=${DEVICE_BUNDLE:-../shared/tools/device-bundle}
cd "$(dirname "$0")/../.."
mkdir -p .gpu/sites
layer() {  # NAME SPEC...
  local name=$1; shift
  local tmp; tmp=$(mktemp -d)
  "$B" "$tmp/$name.tgz" "$@"
  local d; d=$(mktemp -d); tar -C "$d" -xzf "$tmp/$name.tgz"
  tar -C "$d" -cf - . | xz -9 -T2 > ".gpu/sites/$name.txz"
  rm -rf "$tmp" "$d"
}
layer common  bitsandbytes==0.50.2 peft==0.21.2 xformers==0.0.35                     # every cell
# transformers 4.57.6; the device's sentence-transformers 6.0.1 needs transformers>=5 and hub>=1.3: 5.7.0 does not
layer tf4576  transformers==4.57.6 tokenizers==0.22.2 huggingface-hub==0.36.2 sentence-transformers==5.7.0
layer tf550   transformers==5.5.0 tokenizers==0.22.2                                  # transformers 5.5.0
layer uns     annotated-types==0.8.0 certifi==2026.10.19.post1 cut-cross-entropy==25.1.1 docstring-parser==0.18.0 \
              hf-transfer==0.1.9 importlib-metadata==10.2.0 lazy-importer==0.1.0 msgspec==0.23.0 nest-asyncio==1.6.0 \
              pydantic==2.14.4 pydantic-core==2.50.5 structlog==26.1.0 torchao==0.18.0 typeguard==4.6.1 \
              typing-inspection==0.4.5 tyro==1.0.17 unsloth-zoo==2026.10.9                 # any unsloth
layer u1010   unsloth==2026.10.9 trl==1.15.0 datasets==4.8.5 dill==0.4.1 fsspec==2026.2.0 json5==0.17.3 multiprocess==0.70.19
layer u914    unsloth==2026.9.14 trl==0.24.0 datasets==4.3.0 dill==0.4.0 fsspec==2025.9.0 multiprocess==0.70.16
layer diff039 diffusers==0.39.0                                                       # unsloth with transformers 4.57.6
layer diff042 diffusers==0.42.1                                                       # unsloth with transformers 5.x
# issue 14 (transformers 5.x cells): FlashAttention 4 and Liger Kernel. Not yet built or tried on the device.
# nvidia-cutlass-dsl reaches its `cutlass` package only through its own .pth; the venv runner adds extra sites
# with site.addsitedir, which applies it (PYTHONPATH does not: device-bundle's sitecustomize.py does it there).
# Check `import flash_attn.cute` before the run (catalogue: flash-attn-4-cutlass-dsl-missing). libs-cu13 is
# ~92 MB: this layer may need the split-and-stash calls of ../shared/tools/device-bundle.
# Since cutlass-dsl 4.4 the `nvidia-cutlass-dsl` wheel is a 10 KB shim and the Python DSL (cutlass/cute) is in
# nvidia-cutlass-dsl-libs-core, which libs-base requires: without it `import cutlass.cute` fails (seen here on
# CPU, 2026-11-29; with it, flash_attn.cute imports on a CPU torch 2.13 + triton 3.6 + cuda-bindings 13.5).
# libs-cu13, not the shim's default libs-cu12: flash-attn-4's README says `pip install "flash-attn-4[cu13]"`
# on CUDA 13, and the device's torch is cu130. cuda-bindings, protobuf and triton are the device's.
layer fa4     flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
              nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 \
              quack-kernels==0.6.5 einops==0.8.2
layer liger   liger-kernel==0.8.5                                                     # triton: the device torch's
layer harness jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1  # pinmatrix itself, not the cells
ls -la .gpu/sites
# The carry layout for the device calls (one call carries at most 64 MiB, and /root/stash lasts only while
# the machine stays warm): the fa4 layer in 40 MiB parts, each but the last in a folder of its own that an
# earlier call copies to /root/stash; the last call carries every other layer and fa4's last part.
rm -rf .gpu/carry && mkdir -p .gpu/carry/run
cp .gpu/sites/*.txz .gpu/carry/run/ && rm .gpu/carry/run/fa4.txz
split -b 40M -d -a 2 .gpu/sites/fa4.txz .gpu/carry/fa4.txz.part-
parts=(.gpu/carry/fa4.txz.part-*); last=${parts[-1]}
mv "$last" .gpu/carry/run/
for part in .gpu/carry/fa4.txz.part-*; do d=.gpu/carry/stash-${part##*-}; mkdir -p "$d"; mv "$part" "$d/"; done
du -sh .gpu/carry/*

#!/usr/bin/env bash
# Half precision on a CUDA GPU (issue 24), in one short run on a lent machine:
#   - the CUDA precision tests (tests/test_precision.py; they skip without a GPU),
#   - benchmarks/backbones.py: fp32, channels-last, bf16 and fp16 as ratios to fp32 on the GPU,
#   - benchmarks/default_model.py --precision fp16 / bf16: the default model's PSNR change on CBSD68.
# Needs the wheels of ../shared/tools/device-wheels.sh in .wheels and the first 20 CBSD68 images in
# shared/data/CBSD68 (both git-ignored, carried to the machine). Results go to $OUT.
#
#   ../shared/tools/device-wheels.sh .wheels
#   mkdir -p shared/data/CBSD68 && cp $(ls -d ../shared/data/CBSD68/*.png | head -20) shared/data/CBSD68/
#   bash tools/device_precision.sh          # OUT=folder for the results (default benchmarks/results)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VLIR_SHARED=$PWD/shared
log=$OUT/device_precision.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .wheels/*.whl \
  >>"$log" 2>&1 || { echo "wheel install failed" | tee -a "$log"; exit 1; }
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile -e . >>"$log" 2>&1 \
  || { echo "vlir install failed" | tee -a "$log"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c \
  "import torch, vlir; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
  2>&1 | tee -a "$log"
note="$(python3 -c 'import torch; print(torch.cuda.get_device_name())') alone on a lent machine"
step() {  # step SECONDS NAME COMMAND...: one capped step, its output in the log
  local cap=$1 name=$2; shift 2
  echo "== $name ($(date +%T), cap ${cap}s)" | tee -a "$log"
  timeout "$cap" "$@" 2>&1 | tee -a "$log" | tail -n 25
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log"
}
step 150 tests python3 -m pytest -q -p no:cacheprovider tests/test_precision.py
step 200 backbones python3 benchmarks/backbones.py --device cuda --backbones restormer nafnet --sizes 256 512 \
  --precisions fp32,fp32+cl,bf16,bf16+cl,fp16,fp16+cl --skip-tiled --skip-sde --repeat 20 --warmup 3 \
  --note "$note" --out "$OUT/backbones_cuda_precision.json"
for p in fp16 bf16; do
  step 120 "default model $p" python3 benchmarks/default_model.py --device cuda --precision $p --limit 20 \
    --limit-others 20 --no-baselines --note "first 20 CBSD68 images; $note" --out "$OUT/default_model_cuda_$p.json"
done
echo "done $(date +%T)" | tee -a "$log"

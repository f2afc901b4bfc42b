#!/usr/bin/env bash
# Trains vlir's built-in default model (specs/default.yaml) and installs it in core/assets/default/.
# The stages are independent enough to run as one-thread processes side by side on a 2-core CPU:
#   1. `perceiver` and `restorer` at once (the restorer is routed by the degradation labels while
#      training: condition.teacher), about 40 minutes;
#   2. `noise`, `jpeg` and `haze` at once, all starting from the restorer's weights; each trains only its
#      own expert (stage.degradations): about 55 minutes for noise, 30 for haze; the JPEG expert
#      took 2 hours at its earlier 4.4M shape and takes longer at 7.0M.
# Then the trained perceiver and the experts join one pipeline, saved in fp16.
# (`vlir train specs/default.yaml` runs the spec's stages one after another in one process.)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs}
train() {  # stage, extra args...
    local stage=$1; shift
    vlir train specs/default.yaml --stages "$stage" --out "$runs/default-$stage" --threads 1 --quiet "$@"
}
train perceiver & p1=$!
train restorer & p2=$!
wait $p1 && wait $p2
init="backbone.weights=$runs/default-restorer/pipeline/backbone.safetensors"
train noise --set "$init" & p1=$!
train jpeg --set "$init" & p2=$!
train haze --set "$init" --set "data.degradations.4.params.beta=[0.0, 1.8]" & p3=$!  # haze down to none
wait $p1 && wait $p2 && wait $p3
# Last, where CBSD432 names a folder of CBSD432 images (BSD500 less CBSD68: `python tools/cbsd432.py SRC DIR`),
# the JPEG expert is fine-tuned on them: 4000 steps of batch 24 on 192-pixel crops in bf16, 6 minutes on an
# H100 (`--device cuda`, 12 loader workers), many hours on this CPU. assemble_default.py then takes the JPEG
# expert from this run.
if [ -n "${CBSD432:-}" ]; then
    s=train.stages.3  # the jpeg stage, with these settings
    vlir train specs/default.yaml --stages jpeg --out "$runs/default-jpeg-bsd" --quiet \
        --set "backbone.weights=$runs/default-jpeg/pipeline/backbone.safetensors" \
        --set "data.train=[$CBSD432]" --set "data.val=[]" --set data.seed=17 --set data.num_workers="${WORKERS:-2}" \
        --set "losses=[{type: psnr}]" --set train.amp=bf16 --set train.channels_last=true \
        --set $s.iterations=4000 --set $s.lr=1.5e-4 --set $s.warmup=200 --set $s.ema=0.999 \
        --set $s.batch_size=24 --set $s.patch_size=192 --set "$s.augment={rot90: true, channels: true}"
fi
python tools/assemble_default.py "$runs" core/assets/default

#!/usr/bin/env bash
# Trains vlir's built-in default model (specs/default.yaml) and installs it in core/assets/default/.
# The stages are independent enough to run as one-thread processes side by side on a 2-core CPU:
#   1. `perceiver` and `restorer` at once (the restorer is routed by the degradation labels while
#      training: condition.teacher), about 40 minutes;
#   2. `noise`, `jpeg` and `haze` at once, all starting from the restorer's weights; each trains only its
#      own expert (stage.degradations): about 55 minutes for noise, 30 for haze; the JPEG expert
#      took 2 hours at its earlier 4.4M shape and takes longer at 7.0M.
# Then the trained perceiver and the experts join one pipeline, saved in fp16.
# (`vlir train specs/default.yaml` runs the same four stages one after another in one process.)
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
python tools/assemble_default.py "$runs" core/assets/default

#!/usr/bin/env bash
# Trains vlir's built-in default model (specs/default.yaml) and installs it in core/assets/default/.
# The perceiver and restorer stages are independent (the restorer is routed by the degradation
# labels while training: condition.teacher), so on a 2-core CPU they run as two one-thread
# processes at once; then the trained perceiver joins the restorer's pipeline, saved in fp16.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs}
vlir train specs/default.yaml --stages perceiver --out "$runs/default-perceiver" --threads 1 --quiet &
vlir train specs/default.yaml --stages restorer --out "$runs/default-restorer" --threads 1 --quiet &
wait %1 && wait %2
python - "$runs" <<'PY'
import sys
from vlir.core import Pipeline
runs = sys.argv[1]
pipe = Pipeline.from_spec("specs/default.yaml", build_losses=False)
pipe.backbone.load_weights(f"{runs}/default-restorer/pipeline/backbone.safetensors")
pipe.perceivers["daclip"].load_weights(f"{runs}/default-perceiver/pipeline/perceiver.daclip.safetensors")
pipe.half().save("core/assets/default")
print("installed core/assets/default")
PY

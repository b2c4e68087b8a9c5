#!/usr/bin/env bash
# One command for a machine with one CUDA GPU, about 10 minutes: the GPU tests, the training-speed
# table (benchmarks/gpu_speed.py) and the 5-minute Multi30k recipe with its test BLEU.
#
#   bash benchmarks/gpu_check.sh [SHARED_DIR] [OUT_DIR]
#
# SHARED_DIR holds data/multi30k and bench/joeynmt/spm/spm8k.model (default ../shared; without
# them the recipe is skipped). OUT_DIR (default outputs/gpu_check) receives tests.log,
# gpu_speed.log, gpu_speed.json, recipe.log and the recipe's run folder. Each part has its own time
# limit, and a part that fails does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
OUT=${2:-outputs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# A machine whose Python lacks attnmt's pure-Python dependencies (hydra-core, omegaconf, antlr4) can
# take them as wheels in .whl/ (pip download --no-deps hydra-core omegaconf antlr4-python3-runtime==4.9.3).
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --target /tmp/attnmt-site .whl/*.whl || exit 1
        export PYTHONPATH="$PYTHONPATH:/tmp/attnmt-site"
    else
        echo "hydra-core is not installed: pip install -e . (or put its wheels in .whl/)"; exit 1
    fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== GPU tests"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider \
    tests/test_step_sync.py tests/test_precision.py tests/test_models.py -k "cuda or gpu" 2>&1 | tee "$OUT/tests.log"

echo "== training speed"
timeout 270 python3 benchmarks/gpu_speed.py --json "$OUT/gpu_speed.json" 2>&1 \
    | grep -v -E "^(GPU|TPU|HPU) available|LOCAL_RANK|litlogger|max_steps=.*reached" | tee "$OUT/gpu_speed.log"

echo "== 5-minute recipe"
if [[ -d "$SHARED/data/multi30k" && -f "$SHARED/bench/joeynmt/spm/spm8k.model" ]]; then
    timeout 420 python3 train.py experiment=multi30k_transformer_gpu "data.source_dir=$SHARED/data/multi30k" \
        "data.spm_model=$SHARED/bench/joeynmt/spm/spm8k.model" "hydra.run.dir=$OUT/recipe" 2>&1 \
        | tail -n 40 | tee "$OUT/recipe.log"
    timeout 120 python3 evaluate.py "ckpt=$OUT/recipe" eval.num_plots=0 2>&1 | tail -n 15 | tee -a "$OUT/recipe.log"
else
    echo "skipped: $SHARED/data/multi30k or $SHARED/bench/joeynmt/spm/spm8k.model not found" | tee "$OUT/recipe.log"
fi

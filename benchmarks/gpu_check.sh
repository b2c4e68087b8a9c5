#!/usr/bin/env bash
# One command for a machine with one CUDA GPU, under 10 minutes: the GPU tier (pytest -m gpu) and
# the decoding-speed table (benchmarks/decode_speed.py). With "training" as third argument it runs
# instead the training-speed table (benchmarks/gpu_speed.py) and the 5-minute Multi30k recipe.
#
#   bash benchmarks/gpu_check.sh [SHARED_DIR] [OUT_DIR] [decoding|training]
#
# SHARED_DIR holds data/multi30k and bench/joeynmt/spm/spm8k.model (default ../shared; without
# them the embedded corpus stands in). OUT_DIR (default outputs/gpu_check) receives tests.log,
# decode_speed.log and decode_speed.json (or gpu_speed.log, gpu_speed.json, recipe.log and the
# recipe's run folder). Each part has its own time limit, and a part that fails does not stop the next.
set -uo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
OUT=${2:-outputs/gpu_check}
PART=${3:-decoding}
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

if [[ "$PART" == "decoding" ]]; then
    echo "== GPU tier (pytest -m gpu)"
    timeout 320 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests 2>&1 | tail -n 60 | tee "$OUT/tests.log"

    echo "== decoding speed"
    timeout 250 python3 benchmarks/decode_speed.py --shared "$SHARED" --budget-s 180 --train-seconds 45 --json "$OUT/decode_speed.json" \
        2>&1 | grep -v -E "^(GPU|TPU|HPU) available|LOCAL_RANK|litlogger|Warning" | tee "$OUT/decode_speed.log"
    exit 0
fi

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

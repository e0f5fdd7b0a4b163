#!/usr/bin/env bash
# One lent-GPU session's measurements, in priority order, each part under its own timeout
# so a slow part cannot starve the rest. Results go to $OUT (or ./gpu-results).
#   bash bench/gpu_session.sh
# Wheels for what the GPU image lacks (diffusers, pydantic, ...) may sit in .whl/.
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

install_missing() {  # module wheel-glob...
  local module=$1; shift
  $PY -c "import $module" 2>/dev/null || $PY -m pip install -q --no-deps --no-index "$@"
}
if [ -d .whl ]; then
  install_missing diffusers .whl/diffusers-*.whl
  install_missing importlib_metadata .whl/importlib_metadata-*.whl
  install_missing pydantic .whl/pydantic-*.whl .whl/pydantic_core-*.whl \
    .whl/annotated_types-*.whl .whl/typing_inspection-*.whl
fi
$PY -c "import torch, diffusers, transformers, pytorch_lightning, peft, pydantic
print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers',
      transformers.__version__, 'lightning', pytorch_lightning.__version__,
      torch.cuda.get_device_name())" 2>&1 | tee "$OUT/versions.txt"

WORK=/tmp/easel-bench
mkdir -p "$WORK"
BUDGET=${BUDGET:-560}  # seconds for all parts together; each part gets at most what is left
STARTED=$SECONDS
part() {  # name seconds command...
  local name=$1 seconds=$2; shift 2
  local left=$((BUDGET - (SECONDS - STARTED)))
  [ "$left" -lt "$seconds" ] && seconds=$left
  [ "$seconds" -lt 20 ] && { echo "=== $name skipped: out of time"; return; }
  echo "=== $name ($(date +%T), up to ${seconds}s)"
  timeout "$seconds" "$@" > "$OUT/$name.txt" 2>&1
  echo "rc=$?" >> "$OUT/$name.txt"
  grep -v -E "Warning|warn|deprecat|^\s*$" "$OUT/$name.txt" | tail -n 40
}

# Measured on 2026-11-26 (bench/README.md): the step breakdown, LoRA fp16 1+1, full bf16 2+2,
# all with the foreach AdamW. Since then easel steps with the fused AdamW (11.7 ms against
# 29.7 ms in the breakdown): these parts measure what that gives, alone and with compile
# (most likely to reach 1.5x), then gradient checkpointing's memory, then bf16 2+2.
SIZE=${SIZE:-sd15} RES=${RES:-512}  # SIZE=tiny RES=32: a CPU dry run of this script
MODEL="$WORK/db/model-$SIZE"
part build_sd15 120 $PY -c "from easel.models.testing.random_pipelines import build_random_sd
build_random_sd('$MODEL', size='$SIZE')"
part dreambooth_fp16_b1 150 $PY bench/bench_dreambooth.py --model "$MODEL" --resolution $RES \
  --steps 40 --precision 16-mixed --variants baseline,easel --workdir "$WORK/db"
part dreambooth_fp16_b1_compile 240 $PY bench/bench_dreambooth.py --model "$MODEL" \
  --resolution $RES --steps 40 --precision 16-mixed --variants baseline,easel-compile \
  --workdir "$WORK/db"
part activation_memory 90 $PY bench/bench_activation_memory.py --device cuda --resolution $RES \
  --batch-size 2
part dreambooth_bf16_b2 150 $PY bench/bench_dreambooth.py --model "$MODEL" --resolution $RES \
  --steps 40 --precision bf16-mixed --batch-size 2 --variants baseline,easel --workdir "$WORK/db"
echo "=== done ($(date +%T))"

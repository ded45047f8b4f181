#!/usr/bin/env bash
# One prepared run for a lent GPU machine (PyTorch with CUDA, CPU-only onnxruntime).
#
#   OUT=/some/dir bash benchmarks/gpu.sh [gpu_check.py options]
#
# 1. prints nvidia-smi;
# 2. if .whl/ holds an onnxruntime-gpu wheel, installs it (no index, no dependencies) into
#    /tmp/site and puts that first on PYTHONPATH, so it shadows the CPU onnxruntime;
# 3. runs benchmarks/gpu_check.py, which checks that CUDAExecutionProvider is the provider really
#    in use, CPU-vs-CUDA parity of the bundled model and images/s (inference alone and the whole
#    pipeline) at batch 1, 8, 32 and 96 -- or, without onnxruntime-gpu, the bundled model rebuilt
#    under PyTorch CUDA with the ONNX file's weights (parity against onnxruntime CPU, throughput).
#
# 4. runs benchmarks/reanalysis.py --device (the re-analysis path at batch 32 and 96).
#
# Writes $OUT/gpu.json, $OUT/reanalysis.json and $OUT/gpu.log. Installs nothing else; bounded
# to under 8 minutes.
# Without a GPU: `bash benchmarks/gpu.sh --cpu-dry-run` exercises every branch on the CPU.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu.log"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi

run() {
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), python: $PY"
    nvidia-smi || echo "nvidia-smi: not available"

    shopt -s nullglob
    gpu_wheels=(.whl/onnxruntime_gpu-*.whl)
    wheels=(.whl/*.whl)
    shopt -u nullglob
    if ((${#gpu_wheels[@]} > 0)); then
        echo "== installing ${wheels[*]} into /tmp/site"
        "$PY" -m pip install --quiet --no-index --no-deps --target /tmp/site "${wheels[@]}"
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "== no .whl/onnxruntime_gpu-*.whl: onnxruntime stays CPU-only, PyTorch CUDA branch"
    fi

    # 280 s leaves room for the nvidia-smi and pip steps inside the 5-minute budget.
    timeout 280 "$PY" benchmarks/gpu_check.py --out "$OUT/gpu.json" "$@"

    # 4. The re-analysis path (issue 16): a stored plate re-scored by a prepare pool feeding
    #    onnxruntime at batch 32 and 96 (CUDA when onnxruntime-gpu was installed above; the
    #    provider really used is in the JSON). Skipped by --cpu-dry-run.
    if [[ " $* " != *" --cpu-dry-run "* ]]; then
        timeout 150 "$PY" benchmarks/reanalysis.py --device --repeats 2 \
            --out "$OUT/reanalysis.json" || echo "reanalysis benchmark: exit $?"
    fi
}

run "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"

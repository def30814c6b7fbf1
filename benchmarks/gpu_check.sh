#!/usr/bin/env bash
# The GPU check: everything the CUDA path needs shown on one GPU, as one prepared script run from the
# repository root of a machine with one CUDA GPU (README "On a GPU"). Parts, each under 10 minutes:
#
#   bash benchmarks/gpu_check.sh prepare      # here, with a network: test wheels into .devwheels/
#   bash benchmarks/gpu_check.sh tests OUT    # pytest -m cuda: the CUDA path, the kernels vs the loop
#   bash benchmarks/gpu_check.sh bench OUT    # benchmarks/gpu.py: throughput, memory, paper GPU-hours
#   bash benchmarks/gpu_check.sh study OUT    # spikeadv run --preset gpu, timed stage by stage
#   bash benchmarks/gpu_check.sh "tests bench" OUT   # several parts in one call
#
# The study uses CIFAR-10 where $SPIKEADV_DATA holds it prepared, else synthetic-cifar (CIFAR-10's sizes
# and shapes: the same time, no accuracy). Its run directory ($STUDY_DIR, default /tmp/gpu-run) resumes
# when the part is run again. DRY=1 runs every part on the CPU at toy sizes, to check the script.
set -uo pipefail
parts=${1:?usage: gpu_check.sh prepare|tests|bench|study|"tests bench ..." [OUT]}
out=${2:-${OUT:-gpu-check}}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1
device=cuda dry=; [ "${DRY:-0}" = 1 ] && device=cpu dry=--dry-run

if [ "$parts" = prepare ]; then  # pure-Python wheels the GPU machine's image lacks (it has no index)
    exec pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .devwheels \
        pytest pluggy iniconfig packaging pygments spikingjelly loguru
fi
mkdir -p "$out"
if ! python -c "import pytest" 2>/dev/null && ls .devwheels/*.whl >/dev/null 2>&1; then
    pip install -q --no-deps --no-index .devwheels/*.whl
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; } > "$out/machine.txt"

for part in $parts; do
case "$part" in
tests)
    if [ "$device" = cuda ]; then
        python -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_kernels.py
    else  # the CPU stand-in: the same tests with the GPU replaced by the CPU
        sed -e 's/GPU = torch.device("cuda", 0)/GPU = torch.device("cpu")/' -e 's/not torch.cuda.is_available()/False/' \
            -e 's/"cuda:0"/"cpu"/g' -e 's/"--device", "cuda"/"--device", "cpu"/' -e 's/> runtime.MAX_FOLD/>= 1/' \
            tests/test_cuda.py > tests/test_cuda_dry.py
        python -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda_dry.py; status=$?
        rm -f tests/test_cuda_dry.py; (exit $status)
    fi 2>&1 | tail -60 > "$out/tests.txt"
    ;;
bench)
    python benchmarks/gpu.py --device "$device" $dry --json "$out/gpu.json" > "$out/bench.txt" 2>&1
    ;;
study)
    run=${STUDY_DIR:-/tmp/gpu-run}
    preset=gpu; dataset=synthetic-cifar
    [ -f "${SPIKEADV_DATA:-/nonexistent}/cifar10/manifest.json" ] && dataset=cifar10
    [ "$device" = cpu ] && { preset=smoke; dataset=synthetic; }
    timeout "${STUDY_SECONDS:-540}" python -m spikeadv run --preset "$preset" --set "dataset=$dataset" \
        --device "$device" --out "$run" > "$out/study.txt" 2>&1
    echo "exit $? after ${SECONDS} s (124: stopped by STUDY_SECONDS; rerun the part to resume)" >> "$out/study.txt"
    cp "$run/run.json" "$out/" 2>/dev/null
    for model in "$run"/models/snn10-*.safetensors; do  # SNN-I's accuracy-vs-T curves (Poisson input)
        for reset in subtract signed; do
            [ -f "$model" ] && python -m spikeadv eval "$model" --T 32,64,128,256 --reset $reset --subset 2000 \
                --device "$device" >> "$out/snn1-curve.txt" 2>&1
        done
    done
    python benchmarks/scaling.py "$run" --workers 1 > "$out/study-times.txt" 2>&1
    ;;
*)
    echo "unknown part $part (prepare, tests, bench or study)" >&2; exit 2
    ;;
esac
done
tail -n 5 "$out"/*.txt

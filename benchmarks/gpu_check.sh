#!/usr/bin/env bash
# The GPU check: everything the CUDA path needs shown on one GPU, as one prepared script run from the
# repository root of a machine with one CUDA GPU (README "On a GPU"). Parts, each under 10 minutes:
#
#   bash benchmarks/gpu_check.sh prepare      # here, with a network: test and peer wheels into .devwheels/
#   bash benchmarks/gpu_check.sh tests OUT    # pytest -m cuda: the CUDA path, the kernels vs the loop
#   bash benchmarks/gpu_check.sh bench OUT    # benchmarks/gpu.py: throughput, memory, paper GPU-hours
#   bash benchmarks/gpu_check.sh study OUT    # spikeadv run --preset gpu, timed stage by stage
#   bash benchmarks/gpu_check.sh curves OUT   # after the study: SNN-I accuracy vs T, the stages' times
#   bash benchmarks/gpu_check.sh "tests bench" OUT   # several parts in one call
#
# Each part runs under its own time limit (PART_SECONDS, default 540; the study's STUDY_SECONDS), so one
# part fits a 10-minute call, and writes what it measured as it goes (unbuffered output; the benchmark
# appends each result to OUT/gpu.jsonl when measured): a call cut short keeps what it had.
# The study uses CIFAR-10 where $SPIKEADV_DATA holds it prepared, else synthetic-cifar (CIFAR-10's sizes
# and shapes: the same time, no accuracy). Its run directory ($STUDY_DIR, default /tmp/gpu-run) resumes
# when the part is run again. DRY=1 runs every part on the CPU at toy sizes, to check the script.
set -uo pipefail
parts=${1:?usage: gpu_check.sh prepare|tests|bench|study|"tests bench ..." [OUT]}
out=${2:-${OUT:-gpu-check}}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 PYTHONUNBUFFERED=1
device=cuda dry=; [ "${DRY:-0}" = 1 ] && device=cpu dry=--dry-run
limit=${PART_SECONDS:-540}
# the interpreter that holds torch (the GPU image documents python3; some machines have only python)
py=; for candidate in python3 python; do
    command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null && { py=$candidate; break; }
done
[ -n "$py" ] || { echo "no python with torch here" >&2; exit 2; }

if [ "$parts" = prepare ]; then  # pure-Python wheels the GPU machine's image lacks (it has no index)
    exec "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .devwheels \
        pytest pluggy iniconfig packaging pygments spikingjelly loguru
fi
mkdir -p "$out"
missing=; for module in pytest spikingjelly loguru; do "$py" -c "import $module" 2>/dev/null || missing=1; done
if [ -n "$missing" ] && ls .devwheels/*.whl >/dev/null 2>&1; then  # whenever one is missing, not only pytest
    "$py" -m pip install -q --no-deps --no-index .devwheels/*.whl
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; } > "$out/machine.txt"

for part in $parts; do
case "$part" in
tests)
    if [ "$device" = cuda ]; then
        timeout "$limit" "$py" -m pytest -m cuda -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_kernels.py
    else  # the CPU stand-in: the same tests with the GPU replaced by the CPU
        sed -e 's/GPU = torch.device("cuda", 0)/GPU = torch.device("cpu")/' -e 's/not torch.cuda.is_available()/False/' \
            -e 's/"cuda:0"/"cpu"/g' -e 's/"--device", "cuda"/"--device", "cpu"/' -e 's/> runtime.MAX_FOLD/>= 1/' \
            tests/test_cuda.py > tests/test_cuda_dry.py
        timeout "$limit" "$py" -m pytest -m cuda -q -p no:cacheprovider tests/test_cuda_dry.py; status=$?
        rm -f tests/test_cuda_dry.py; (exit $status)
    fi > "$out/tests.txt" 2>&1
    ;;
bench)
    timeout "$limit" "$py" benchmarks/gpu.py --device "$device" $dry --json "$out/gpu.jsonl" > "$out/bench.txt" 2>&1
    ;;
study)
    run=${STUDY_DIR:-/tmp/gpu-run}
    preset=gpu; dataset=synthetic-cifar
    [ -f "${SPIKEADV_DATA:-/nonexistent}/cifar10/manifest.json" ] && dataset=cifar10
    [ "$device" = cpu ] && { preset=smoke; dataset=synthetic; }
    start=$SECONDS
    timeout "${STUDY_SECONDS:-$limit}" "$py" -m spikeadv run --preset "$preset" --set "dataset=$dataset" \
        --device "$device" --out "$run" > "$out/study.txt" 2>&1
    echo "exit $? after $((SECONDS - start)) s (124: stopped by STUDY_SECONDS; rerun the part to resume)" >> "$out/study.txt"
    cp "$run/run.json" "$out/" 2>/dev/null
    ;;
curves)
    run=${STUDY_DIR:-/tmp/gpu-run}
    start=$SECONDS
    for model in "$run"/models/snn10-*.safetensors; do  # SNN-I's accuracy-vs-T curves (Poisson input)
        for reset in subtract signed; do
            left=$((limit - (SECONDS - start))); [ "$left" -gt 10 ] || break 2
            [ -f "$model" ] && timeout "$left" "$py" -m spikeadv eval "$model" --T 32,64,128,256 --reset $reset \
                --subset 2000 --device "$device" >> "$out/snn1-curve.txt" 2>&1
        done
    done
    timeout 60 "$py" benchmarks/scaling.py "$run" --workers 1 > "$out/study-times.txt" 2>&1
    ;;
*)
    echo "unknown part $part (prepare, tests, bench, study or curves)" >&2; exit 2
    ;;
esac
done
tail -n 5 "$out"/*.txt

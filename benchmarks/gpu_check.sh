#!/usr/bin/env bash
# The GPU check (issue 27, item 4) as one script: under 8 minutes on one H200, each stage under its own `timeout`,
# the script going on past a stage that fails or runs out of time.
#
#   (a) the CUDA tests: tests/test_kernels_radial_loss.py with the Triton twins compiled for real, against the
#       float64 PyTorch twin (`fused_loss`) and, through LatHAdapter, against `impl=reference` for every radius and
#       hierarchy, in float32 on CUDA; tests/test_graphed.py, the captured steps against the uncaptured ones;
#       tests/test_diverged.py, a run diverging beside another in one stacked, captured CUDA batch;
#   (b) benchmarks/lathadapter_step.py --device cuda (the Triton path, the PyTorch twins, the captured step);
#   (c) benchmarks/fit.py --device cuda --only caltech (LatHAdapter's fit, target <= 0.25 s), captured (the
#       default) and with LATHADAPTER_GRAPHS=off;
#       benchmarks/fit_profile.py --device cuda: where a captured fit's time goes;
#   (d) benchmarks/grid.py --device cuda with stacked, captured runs on 1, 4 and 8 trainer threads (runs/min,
#       target >= 2,000), with 3 seeds and with 10, and a profile of one trainer's grid; the 10-seed grid on
#       `grid --workers 2,4` worker processes (each with its own CUDA context, started inside the timed grid) of 1
#       and 4 trainer threads;
#   (e) benchmarks/radial_loss.py --device cuda (the loss stage: Triton, with tiles of 16, 8 and 4 images, against
#       the eager PyTorch twin and torch.compile of it, hier=cone, Caltech- and ImageNet-like; last, since compiling
#       may take long: it gets what is left of the budget).
#   The one-time cache build (benchmarks/cache_build.py --device cuda, a random ViT-B-16, 15 decoding workers, in
#   $GPU_CHECK_PRECISION, default amp) runs when stages are named: GPU_CHECK_STAGES="... cache_build_cuda.txt"
#   (stop 9's check measured it in fp32 with 0, 8 and 15 workers: benchmarks/results/gpu_check_cuda.txt).
#
# Each stage's output goes to $OUT/<stage>_cuda.txt and a copy to benchmarks/results/<stage>_cuda.txt on the
# machine; at the end the tables and the JSON files the scripts wrote under benchmarks/results/ are packed into
# $OUT/results.tar (at most 8 files come back from the device machine). $OUT/gpu_check.txt holds the machine, the
# versions and each stage's exit status (124: out of time).
#
# The device machine's image has torch, triton, h5py and pytest but not open_clip: carry its wheels in .whl/
# (open_clip_torch, ftfy, wcwidth; made here with the device README's pip-download recipe). The lead's call:
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=470, carry=[".whl"])
# A dry run on the CPU with tiny sizes (checks the commands, not the speed): GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_SECONDS:-465}
STAGES=${GPU_CHECK_STAGES:-all}  # a rerun of some stages: their output files, e.g. "fit_cuda.txt grid_cuda.txt"  # every stage ends by then; the call's timeout_s leaves the start and transfers
OUT=${OUT:-$ROOT/runs/gpu_check}
RESULTS=$ROOT/benchmarks/results
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$RESULTS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# packages missing from the image, from the carried wheels
SITE=""
if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=/tmp/gpu_check_site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || echo "installing the wheels of .whl/ failed"
fi
# the repository root is the package `lathadapter`: import it through a folder holding a link named so
PACKAGE_DIR=$(mktemp -d)
ln -s "$ROOT" "$PACKAGE_DIR/lathadapter"
export PYTHONPATH="$PACKAGE_DIR${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"

SUMMARY=$OUT/gpu_check.txt
{
    echo "# benchmarks/gpu_check.sh on $(hostname), $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, budget ${BUDGET}s"
    echo "# commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    "$PY" -c "import sys, torch, triton, open_clip, h5py; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| triton', triton.__version__, '| open_clip', open_clip.__version__, '| h5py', h5py.__version__,
'| cuda', torch.cuda.is_available(), '|', torch.get_num_threads(), 'threads')" 2>&1 | tail -n 1
} > "$SUMMARY"
cat "$SUMMARY"

# stage FILE LIMIT COMMAND...: run COMMAND under `timeout`, within what is left of the budget, appending its output
# to $OUT/FILE (and its copy under benchmarks/results/); a failure is recorded and the script goes on.
stage() {
    local file=$1 limit=$2
    shift 2
    if [[ $STAGES != all && " $STAGES " != *" $file "* ]]; then
        return
    fi
    local left=$((BUDGET - SECONDS - 5))
    if ((left < 15)); then
        echo "$file: skipped, the budget is spent: $*" | tee -a "$SUMMARY"
        return
    fi
    ((limit > left)) && limit=$left
    echo "=== $* (limit ${limit}s)" | tee -a "$OUT/$file"
    local start=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$OUT/$file" 2>&1
    local rc=$?
    echo "--- exit $rc after $((SECONDS - start)) s" >>"$OUT/$file"
    echo "$file: exit $rc after $((SECONDS - start)) s (limit ${limit}s): $*" | tee -a "$SUMMARY"
    tail -n 30 "$OUT/$file"
    if [[ $DEVICE == cuda ]]; then cp "$OUT/$file" "$RESULTS/$file"; fi
}

if [[ $DEVICE == cuda ]]; then
    # (a) the kernel cases and LatHAdapter through the Triton twin, compiled for CUDA (no interpreter); the captured
    #     steps against the uncaptured ones (bit for bit) and the plain trainer
    # shellcheck disable=SC2086  # GPU_CHECK_TESTS: the test files, split on spaces
    stage kernel_tests_cuda.txt 110 env -u TRITON_INTERPRET "$PY" -m pytest -q -rs -p no:cacheprovider \
        --durations=8 ${GPU_CHECK_TESTS:-tests/test_kernels_radial_loss.py tests/test_graphed.py tests/test_diverged.py tests/test_calibration.py::test_ece_and_bins_on_cuda_are_the_restated_ones}
    # (b) where a step goes: the Triton path, the PyTorch twins forced (kernels = torch), the captured step
    stage lathadapter_step_cuda.txt 50 "$PY" benchmarks/lathadapter_step.py --device cuda --only caltech \
        --steps 30 --repeats 5
    # (c) LatHAdapter's fit on the Caltech-like cache: captured steps (the default on CUDA), then uncaptured
    #     (LATHADAPTER_GRAPHS=off: the Triton twin, op by op)
    # (each fit a fresh child process: stop 11's call 2 ran out of 40 s after two)
    stage fit_cuda.txt 60 "$PY" benchmarks/fit.py --device cuda --only caltech --methods lathadapter --repeats 3
    stage fit_uncaptured_cuda.txt 35 env LATHADAPTER_GRAPHS=off "$PY" benchmarks/fit.py --device cuda --only caltech \
        --methods lathadapter --repeats 2 --out "$RESULTS/fit_uncaptured_cuda.json"
    # where the captured fit's time goes (cProfile of a third fit), and the first fit's (what a fresh process pays)
    stage fit_profile_cuda.txt 40 "$PY" benchmarks/fit_profile.py --device cuda
    stage fit_first_cuda.txt 40 "$PY" benchmarks/fit_profile.py --device cuda --first
    # (d) a 3-method x 5-shot x 3-seed grid, each method's runs of one shot count stacked and captured, on 1, 4 and
    #     8 trainer threads (each on its own stream), after an untimed warm-up; then the same grid with 10 seeds
    stage grid_cuda.txt 100 "$PY" benchmarks/grid.py --device cuda --methods clip-adapter,tip-adapter-f,lathadapter \
        --batch-runs 45 --stack on --trainers "${GPU_CHECK_TRAINERS:-1,4,8}" --warmup \
        --out "$RESULTS/grid_cuda.json"
    stage grid_cuda.txt 90 "$PY" benchmarks/grid.py --device cuda --methods clip-adapter,tip-adapter-f,lathadapter \
        --batch-runs 45 --stack on --trainers "${GPU_CHECK_TRAINERS:-1,4,8}" \
        --seeds 1,2,3,4,5,6,7,8,9,10 --warmup --out "$RESULTS/grid_seeds10_cuda.json"
    #     where one trainer's grid time goes (cProfile of the main thread), 10 seeds
    stage grid_profile_cuda.txt 40 "$PY" benchmarks/grid.py --device cuda \
        --methods clip-adapter,tip-adapter-f,lathadapter --batch-runs 45 --stack on --warmup --profile 30 \
        --seeds 1,2,3,4,5,6,7,8,9,10 --out "$RESULTS/grid_profile_cuda.json"
    #     the 10-seed grid on 2 and 4 worker processes of `grid` (--workers), 1 and 4 trainer threads each; the
    #     processes' start (interpreter, CUDA context, captures) is inside the timed grid, as `grid` pays it
    stage grid_workers_cuda.txt 110 "$PY" benchmarks/grid.py --device cuda \
        --methods clip-adapter,tip-adapter-f,lathadapter --batch-runs 45 --stack on \
        --workers "${GPU_CHECK_WORKERS:-2,4}" --trainers 1,4 --seeds 1,2,3,4,5,6,7,8,9,10 --warmup \
        --out "$RESULTS/grid_workers_cuda.json"
    # (e) the loss stage alone: Triton, eager PyTorch twin, torch.compile (dynamic=False: one compile per shape)
    if [[ $STAGES != all ]]; then
        stage cache_build_cuda.txt 90 "$PY" benchmarks/cache_build.py --device cuda --model ViT-B-16 \
            --pretrained none --sizes 224 --views 10 --workers 15 --batch-size 64 --threads 4 \
            --precision "${GPU_CHECK_PRECISION:-amp}" --out "$RESULTS/cache_build_cuda.json"
    fi
    stage radial_loss_cuda.txt 90 "$PY" benchmarks/radial_loss.py --device cuda --hier cone \
        --sizes 256x100x16,256x1000x16 --row-tiles 16,8,4 --rounds 5 --calls 10 --out "$RESULTS/radial_loss_cuda.json"
else  # a dry run of the same commands on the CPU with tiny sizes
    stage kernel_tests_cuda.txt 300 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_radial_loss.py \
        tests/test_graphed.py
    stage lathadapter_step_cuda.txt 120 "$PY" benchmarks/lathadapter_step.py --device cpu --only caltech \
        --steps 2 --repeats 1 --out "$OUT/dry_step.json"
    stage fit_cuda.txt 120 "$PY" benchmarks/fit.py --device cpu --only caltech --methods lathadapter --repeats 1 \
        --out "$OUT/dry_fit.json"
    stage fit_cuda.txt 120 env LATHADAPTER_GRAPHS=on "$PY" benchmarks/fit.py --device cpu --only caltech \
        --methods lathadapter --repeats 1 --out "$OUT/dry_fit_graphed.json"
    stage fit_profile_cuda.txt 120 "$PY" benchmarks/fit_profile.py --device cpu --lines 10
    stage grid_cuda.txt 200 "$PY" benchmarks/grid.py --device cpu --methods lathadapter --shots 1 --seeds 1,2 \
        --batch-runs 2 --stack on --warmup --out "$OUT/dry_grid.json"
    stage grid_workers_cuda.txt 200 "$PY" benchmarks/grid.py --device cpu --methods lathadapter --shots 1,2 \
        --seeds 1,2 --batch-runs 2 --stack on --workers 2 --out "$OUT/dry_grid_workers.json"
    stage cache_build_cuda.txt 200 "$PY" benchmarks/cache_build.py --device cpu --sizes 32 --views 1 --workers 0,1 \
        --batch-size 64 --threads 1 --out "$OUT/dry_cache_build.json"
    stage radial_loss_cuda.txt 120 "$PY" benchmarks/radial_loss.py --device cpu --hier cone,triplet \
        --sizes 16x10x4 --rounds 1 --calls 1 --out "$OUT/dry_radial_loss.json"
fi

# the stages' tables and the JSON files they wrote, as one file: at most 8 files come back from the device machine,
# and a full check writes more tables than that
if [[ $DEVICE == cuda ]]; then
    (cd "$OUT" && tar -cf results.tar ./*_cuda.txt -C "$RESULTS" $(cd "$RESULTS" && ls ./*cuda*.json)) \
        && rm -f "$OUT"/*_cuda.txt
fi
echo "total $SECONDS s" | tee -a "$SUMMARY"
rm -rf "$PACKAGE_DIR"

#!/usr/bin/env bash
# Everything that needs a GPU, in stages of under 10 minutes each. From the repository root on a
# CUDA machine (wheels from bench/fetch_device_wheels.sh copied in .whl/ where diffusers is missing):
#   bash bench/gpu_check.sh quick       # first contact, sized for 8 minutes (not yet timed on a GPU): build the CUDA
#                                       #   extension, every gpu-marked test, one op-bandwidth figure (lincomb of 2 fp16
#                                       #   inputs, 64 MB out, -> bench/results/quick/) and one whole loop (ddpm-cifar10
#                                       #   batch 1, eager and fd_graph, no torch.compile setup -> loop_<gpu>_quick.csv)
#                                       #   and the ops' host time per call (bench_ops.py --host -> ops_host_<gpu>.csv)
#   bash bench/gpu_check.sh test        # build the CUDA extension in place, run the GPU tests + solver/graph suites
#   bash bench/gpu_check.sh ops         # bench_ops sweep -> bench/results/ops_<gpu>.csv/.png
#   bash bench/gpu_check.sh loop ddpm-cifar10 1   # bench_loop for one model and batch (with two torch.compile
#   bash bench/gpu_check.sh loop ddpm-cifar10 128 #   setups a case takes minutes): also sd15 1 and sd15 8
#   bash bench/gpu_check.sh unet        # bench_unet: DeepCache / Skip-Tuning inside the graph, fused concat
#   bash bench/gpu_check.sh sdo         # bench_sdo cost: SDO against full backprop, time and CUDA peak memory
#   bash bench/gpu_check.sh pipelines   # accelerated diffusers pipelines: the gpu tests (one graph per configuration)
#                                       #   and the host time per step against their own loops
#   bash bench/gpu_check.sh all         # everything but quick in one go (longer than 10 minutes)
# Each stage prints its seconds ("== <stage>: N s") and ends with a short table of what it measured.
# GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh STAGE ... prints each command the stage would run ("+ " and the
# command, shell-quoted) instead of running it: no CUDA check, no build, no GPU (tests/test_gpu_check.py runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
dry=${GPU_CHECK_DRY_RUN:-0}
export PYTHONUNBUFFERED=1
case $stage in  # checked before the build, so a typo costs no GPU time
  quick|test|ops|unet|sdo|pipelines|all) ;;
  loop) : "${2:?loop needs MODEL BATCH}" "${3:?loop needs MODEL BATCH}" ;;
  *) echo "unknown stage $stage: quick | test | ops | unet | sdo | pipelines | loop MODEL BATCH | all"; exit 2 ;;
esac

run() {  # runs a command, or in a dry run prints it on one line
  if [[ $dry == 1 ]]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}
begin() { stage_name=$1; stage_t0=$(date +%s%N); echo "== $1"; }
end() {
  local ms=$(( ($(date +%s%N) - stage_t0) / 1000000 ))
  printf '== %s: %d.%01d s\n' "$stage_name" $((ms / 1000)) $((ms % 1000 / 100))
}

if compgen -G ".whl/*.whl" >/dev/null; then
  run python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
run python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"
# the extension, built in place against the GPU machine's torch (kept between runs in the same checkout)
begin build
if [[ $dry == 1 ]]; then
  run env MAX_JOBS=16 python3 setup.py -q build_ext --inplace
else
  compgen -G "fused_diffusion/_C*.so" >/dev/null || MAX_JOBS=16 python3 setup.py -q build_ext --inplace 2>&1 | tail -n 5
fi
end
run python3 -m fused_diffusion backends

table() {
  if [[ $dry == 1 ]]; then echo "# table $*"; return; fi
  python3 - "$@" <<'PY'
import csv, glob, sys
for path in sorted(p for pattern in sys.argv[1:] for p in glob.glob(pattern)):
    rows = list(csv.DictReader(open(path)))
    print(path, f"({len(rows)} rows)")
    if "method" in rows[0]:
        for r in rows:
            print(f"  {r['model']:<13}{r['batch']:>5}  {r['method']:<18}{float(r['ms']):>10.2f} ms  vs eager {r['vs_eager']:>8}"
                  f"  vs reduce-overhead {r['vs_reduce_overhead']:>8}  overhead% {r['loop_overhead_pct']:>6}"
                  f"  first call s {r['first_call_s']:>7}  peak MiB {r['peak_alloc_mib']}")
    else:
        for r in rows[-12:]:
            print("  " + "  ".join(f"{k}={v}" for k, v in r.items() if k not in ("gpu", "torch", "triton", "command")))
PY
}

loop() {
  begin "loop $1 $2"
  run python3 bench/bench_loop.py --models "$1" --batches "$2" --tag "_$1_b$2"
  table "bench/results/loop_*_$1_b$2.csv"
  end
}

case $stage in
  quick)  # a failing stage does not stop the next (each answers something on its own); the exit status says
    failed=()
    begin "gpu tests"
    run env FUSED_DIFFUSION_REQUIRE_EXT=1 python3 -m pytest -q -m gpu -p no:cacheprovider || failed+=("gpu tests")
    end
    begin "op bandwidth"
    run python3 bench/bench_ops.py --ops lincomb2 --dtypes fp16 --sizes 67108864 --out-dir bench/results/quick \
      || failed+=("op bandwidth")
    table "bench/results/quick/ops_*.csv"
    end
    begin "op host time"
    run python3 bench/bench_ops.py --host --repeats 5 || failed+=("op host time")
    table "bench/results/ops_host_*.csv"
    end
    begin "whole loop"
    run python3 bench/bench_loop.py --models ddpm-cifar10 --batches 1 --methods eager fd_graph --reps 3 --tag _quick \
      || failed+=("whole loop")
    table "bench/results/loop_*_quick.csv"
    end
    if (( ${#failed[@]} )); then echo "quick: failed: ${failed[*]}"; exit 1; fi
    ;;
  test|all)
    begin test
    run env FUSED_DIFFUSION_REQUIRE_EXT=1 python3 -m pytest -q -m gpu -p no:cacheprovider
    run python3 -m pytest -q -x -p no:cacheprovider tests/test_solvers.py tests/test_k_diffusion_samplers.py \
      tests/test_ipndm.py tests/test_amed.py tests/test_graph.py tests/test_models.py tests/test_sdo.py \
      tests/test_shortcut.py tests/test_analytic_dpm.py tests/test_integrations_diffusers.py
    end
    ;;&
  sdo|all)
    begin sdo
    run python3 bench/bench_sdo.py cost --device cuda
    table "bench/results/sdo_cost_NVIDIA*.csv"
    end
    ;;&
  ops|all)
    begin ops
    run python3 bench/bench_ops.py
    table "bench/results/ops_*.csv"
    end
    ;;&
  unet|all)
    begin unet
    run python3 bench/bench_unet.py speed --device cuda --steps 20 --repeats 5
    run python3 bench/bench_unet.py concat --device cuda
    table "bench/results/unet_*_NVIDIA*.csv"
    end
    ;;&
  pipelines|all)
    begin pipelines
    run python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_integrations_pipelines.py tests/test_integrations_sd.py \
      tests/test_integrations_diffusers.py
    run python3 bench/bench_integrations.py pipelines --repeats 5
    table "bench/results/integrations_pipelines_NVIDIA*.csv"
    end
    ;;&
  all)
    for case in "ddpm-cifar10 1" "ddpm-cifar10 128" "sd15 1" "sd15 8"; do loop $case; done
    ;;
  loop) loop "$2" "$3" ;;
esac

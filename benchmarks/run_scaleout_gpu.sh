#!/usr/bin/env bash
# Issue 12's GPU figures in one go on a 2-GPU host (results/ddp_*.json, fsdp_*.json, compile_speedup_cuda_bf16.json):
#   bash benchmarks/run_scaleout_gpu.sh [OUT_DIR] [PART...]
# PART: ddp (Vim-S, one GPU with 2 accumulation steps vs two GPUs, global batch 256), fsdp-cobra (cobra-style VLM,
# one GPU vs FSDP over two), compile (torch.compile speed-up, bf16), gpu-tests (the 2-GPU FSDP test). Default: all.
set -u
OUT=${1:-benchmarks/results}; shift || true
PARTS=${*:-ddp fsdp-cobra compile gpu-tests}
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0  # NVLink multicast off (device README)
cd "$(dirname "$0")/.."
for part in $PARTS; do
  echo "=== $part $(date -u +%T)"
  case $part in
    ddp)
      python benchmarks/ddp_scaling.py --per-device-batch 128 --grad-accum 2 --steps 120 \
          --out "$OUT/ddp_vim_small_1gpu.json" > "$OUT/ddp_1gpu.log" 2>&1; echo "rc $?"
      torchrun --standalone --nproc_per_node 2 benchmarks/ddp_scaling.py --per-device-batch 128 --steps 120 \
          --out "$OUT/ddp_vim_small_2gpu.json" > "$OUT/ddp_2gpu.log" 2>&1; echo "rc $?"
      python benchmarks/ddp_scaling.py --compare "$OUT/ddp_vim_small_1gpu.json" "$OUT/ddp_vim_small_2gpu.json" ;;
    fsdp-cobra)
      python benchmarks/ddp_scaling.py --model vlm:cobra-style --per-device-batch 4 --steps 14 --warmup 4 --gradient-checkpointing \
          --out "$OUT/fsdp_cobra_1gpu.json" > "$OUT/fsdp_cobra_1gpu.log" 2>&1; echo "rc $?"
      accelerate launch --config_file training/accelerate_configs/fsdp.yaml --num_processes 2 --mixed_precision bf16 \
          benchmarks/ddp_scaling.py --model vlm:cobra-style --per-device-batch 4 --steps 14 --warmup 4 --gradient-checkpointing \
          --out "$OUT/fsdp_cobra_2gpu.json" > "$OUT/fsdp_cobra_2gpu.log" 2>&1; echo "rc $?"
      python benchmarks/ddp_scaling.py --compare "$OUT/fsdp_cobra_1gpu.json" "$OUT/fsdp_cobra_2gpu.json" ;;
    compile)
      python benchmarks/compile_speedup.py --device cuda --dtype bf16 --out "$OUT/compile_speedup_cuda_bf16.json" \
          > "$OUT/compile.log" 2>&1; echo "rc $?"
      python benchmarks/compile_speedup.py --table "$OUT/compile_speedup_cuda_bf16.json" ;;
    gpu-tests)
      python -m pytest -q -m gpu tests/test_distributed.py -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1; echo "rc $?"
      tail -3 "$OUT/gpu_tests.log" ;;
    *) echo "unknown part $part (ddp, fsdp-cobra, compile, gpu-tests)"; exit 2 ;;
  esac
done

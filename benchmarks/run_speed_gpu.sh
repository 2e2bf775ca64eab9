#!/usr/bin/env bash
# Issue 10's GPU figures on one GPU, side by side with mamba_ssm, in as few device calls as possible:
#   bash benchmarks/run_speed_gpu.sh OUT_DIR SRC [PART...]
# SRC: a folder holding mamba_ssm's csrc/selective_scan (as selective_scan/), causal-conv1d's csrc (as cc_csrc/), the
# sdists' python packages (py/mamba_ssm, py/causal_conv1d) and ../shared/anchors (anchors/) -- e.g. the git-ignored
# .carry/ a device call carries. PART: build (both extensions into /tmp/ms, /tmp/cc: about 3 minutes, in the
# background; scan, generate and profile wait for it; later calls find it while the machine stays warm), tests (tests/test_ssm_gpu.py, tests/test_models_gpu.py), scan (the five
# shapes of ../shared/anchors/README.md -> scan_vs_mamba_ssm.json), lane (the lane forward's settings sweep, the
# forward on the mixer's time-major inputs with it on and off, kernel times -> scan_lane.json; needs no build),
# generate (mamba_ssm's generate vs ours -> gen_vs_mamba_ssm.log), generate_bf16_states (the same with
# ssm_state_dtype="bfloat16", benchmarks/gen_vs_mamba_ssm.py -> gen_vs_mamba_ssm_bf16_states.json), decode (benchmarks/decode_profile.py), profile
# (benchmarks/profile_models_gpu.py: whole-model ms, host ms and top kernels of Vim-S / VMamba-T / DeiT-S / the LM
# prefill (env PROFILE_ARGS: more arguments, e.g. --host-ops), and
# mamba_ssm's prefill when the build is there -> profile_models.json), vision (Vim-S / VMamba-T / DeiT-S, the full
# sweep), anatomy (benchmarks/scan_kernel_anatomy.py -> anatomy.json). Default: all but lane, vision and anatomy,
# which take a call of their own. Keep the build apart from timed parts
# where you can: its compilers load the host, and host-bound figures (the 1 x 1024 prefill) move with that.
set -u
OUT=${1:?OUT_DIR}; SRC=${2:?SRC}; shift 2
PARTS=${*:-build tests scan generate decode profile}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
BUILD_PIDS=""
need_build() {  # wait for a background build, once
  if [ -n "$BUILD_PIDS" ]; then
    for p in $BUILD_PIDS; do wait "$p"; echo "build rc $?"; done
    BUILD_PIDS=""
  fi
}
for part in $PARTS; do
  echo "=== $part $(date -u +%T)"
  case $part in
    build)  # in the background: the parts that need it wait for it (tests can run meanwhile)
      python3 "$SRC/anchors/build_mamba_scan.py" "$SRC/selective_scan" /tmp/ms > "$OUT/build_ms.log" 2>&1 &
      BUILD_PIDS="$!"
      python3 "$SRC/anchors/build_causal_conv1d.py" "$SRC/cc_csrc" /tmp/cc > "$OUT/build_cc.log" 2>&1 &
      BUILD_PIDS="$BUILD_PIDS $!"
      echo "building in the background" ;;
    tests)  # in 6 processes (one takes more than 5 minutes): test ids dealt round-robin, one log each
      python3 -m pytest -q -p no:cacheprovider --collect-only tests/test_ssm_gpu.py tests/test_models_gpu.py \
          | grep '::' > /tmp/gpu_ids.txt
      SHARD_PIDS=""
      for i in 0 1 2 3 4 5; do
        awk -v i=$i 'NR % 6 == i' /tmp/gpu_ids.txt > /tmp/gpu_ids_$i.txt
        python3 -c "import pytest, sys; sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider'] + open(sys.argv[1]).read().splitlines()))" \
            /tmp/gpu_ids_$i.txt > "$OUT/gpu_tests_$i.log" 2>&1 &
        SHARD_PIDS="$SHARD_PIDS $!"
      done
      for p in $SHARD_PIDS; do wait "$p"; echo "shard rc $?"; done
      tail -qn1 "$OUT"/gpu_tests_*.log ;;
    scan)
      need_build
      python3 benchmarks/scan_vs_mamba_ssm.py --mamba-build /tmp/ms 4,768,6085 128,768,197 1,1536,1024 8,1536,1024 \
          16,1536,4096 --out "$OUT/scan_vs_mamba_ssm.json" > "$OUT/scan.log" 2>&1; echo "rc $?" ;;
    lane)
      python3 benchmarks/scan_vs_mamba_ssm.py 4,768,6085 128,768,197 1,1536,1024 8,1536,1024 16,1536,4096 \
          --lane-sweep --mixer-layout --profile --out "$OUT/scan_lane.json" > "$OUT/scan_lane.log" 2>&1; echo "rc $?"
      grep mixer "$OUT/scan_lane.log" ;;
    generate)
      need_build
      python3 "$SRC/anchors/gen_vs_mamba_ssm.py" "/tmp/ms:/tmp/cc:$SRC/py" triton > "$OUT/gen_vs_mamba_ssm.log" 2>&1
      echo "rc $?"; grep -v Warn "$OUT/gen_vs_mamba_ssm.log" | cut -c1-300 ;;
    generate_bf16_states)  # the same rows with the cache's SSM states in bf16 (MambaLMConfig.ssm_state_dtype)
      need_build
      python3 benchmarks/gen_vs_mamba_ssm.py "/tmp/ms:/tmp/cc:$SRC/py" --ssm-state-dtype bfloat16 \
          --out "$OUT/gen_vs_mamba_ssm_bf16_states.json" > "$OUT/gen_bf16_states.log" 2>&1
      echo "rc $?"; grep -v Warn "$OUT/gen_bf16_states.log" | cut -c1-300 ;;
    decode)
      python3 benchmarks/decode_profile.py "$OUT/decode_profile.json" > "$OUT/decode_profile.log" 2>&1; echo "rc $?" ;;
    profile)
      need_build
      python3 benchmarks/profile_models_gpu.py "$OUT/profile_models.json" ${PROFILE_ARGS:-} > "$OUT/profile_models.log" 2>&1
      echo "rc $?"
      if [ -d /tmp/ms ]; then
        MAMBA_SSM_PATHS="/tmp/ms:/tmp/cc:$SRC/py" python3 benchmarks/profile_models_gpu.py "$OUT/profile_mamba_ssm.json" \
            mamba_ssm_prefill mamba_ssm_prefill_1x1024 >> "$OUT/profile_models.log" 2>&1; echo "rc $?"
      fi
      grep "==" "$OUT/profile_models.log" ;;
    vision)
      python3 benchmarks/bench_gpu_models.py --section vision --out "$OUT" > "$OUT/vision.log" 2>&1; echo "rc $?" ;;
    anatomy)  # registers, kernel times by layout and launch costs of the inference forward (no build needed)
      python3 benchmarks/scan_kernel_anatomy.py "$OUT/anatomy.json" > "$OUT/anatomy.log" 2>&1; echo "rc $?"
      grep "^[0-9]" "$OUT/anatomy.log" | cut -c1-300 ;;
    *) echo "unknown part $part" ;;
  esac
done
need_build

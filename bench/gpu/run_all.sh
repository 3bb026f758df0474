#!/usr/bin/env bash
# One device command: . bench/gpu/setup.sh && bash bench/gpu/run_all.sh CASE...
# Each CASE writes $OUT/<CASE>.json (rewritten as it goes: a command cut at its time limit keeps what ran);
# the log of all of them goes to $OUT/run_all.log. Cases (docs/benchmarks.md has the minutes of each):
#   tp033-<GB>, tp080-<GB>     two-pass i2v at real size on a <GB> card (0 = the whole H200), ComfyUI 0.33
#                              (Dynamic VRAM on) or 0.8.0: stock, accel_sdpa, accel_auto, first run + 1 warm
#   tp033legacy-<GB>           the same on 0.33 with Dynamic VRAM off
#   vae033, vae033legacy       VAE after a sampler, 0.33 Dynamic VRAM on / off: roomy, resident2.5, 16, 12
#   vae22-033                  the same with the Wan 2.2 VAE too, roomy and resident4 only
#   server033                  server memory session on the GPU (20 A/B rounds, 10 VAE rounds)
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
LOG=${LOG:-$OUT/run_all.log}  # two cells run side by side on two GPUs: one log each
BUDGET=${BUDGET_S:-500}
models=/tmp/wan_accel_bench_models
for case in "$@"; do
  echo "=== $case $(date +%T)" | tee -a "$LOG"
  case "$case" in
    tp033-*|tp080-*|tp033legacy-*)
      gb=${case##*-}; v=0.33.0; [[ $case == tp080-* ]] && v=0.8.0
      dyn=on; [[ $case == tp033legacy-* ]] && dyn=off
      cmd=(python3 bench/two_pass.py --comfy "/tmp/comfy-$v" --vram-gb "$gb" --comfy-dynamic-vram "$dyn"
           --paths "${PATHS:-stock,accel_sdpa,accel_auto}" --warm 1 --budget-s "$BUDGET" --models "$models") ;;
    vae033|vae033legacy)
      cmd=(python3 bench/vae_after_sampler.py --comfy /tmp/comfy-0.33.0 --cases roomy,resident2.5,16,12)
      [[ $case == vae033legacy ]] && cmd+=(--legacy) ;;
    vae22-033)
      cmd=(python3 bench/vae_after_sampler.py --comfy /tmp/comfy-0.33.0 --cases roomy,resident4 --wan22 --reps 1) ;;
    server033)
      cmd=(python3 bench/server_memory.py --comfy /tmp/comfy-0.33.0 --size 480x832 --frames 33 --dim 1280
           --layers 4) ;;
    *) echo "unknown case $case" | tee -a "$LOG"; continue ;;
  esac
  "${cmd[@]}" --out "$OUT/$case.json" 2>&1 | grep -v -E '^\s*[0-9]+%\|' | tee -a "$LOG"
  echo "=== $case exit ${PIPESTATUS[0]} $(date +%T)" | tee -a "$LOG"
done

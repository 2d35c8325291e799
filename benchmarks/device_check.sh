#!/usr/bin/env bash
# The GPU goals of beit-flax in one command (issue 24 item 5), from the repository root of a checkout:
#
#     bash benchmarks/device_check.sh            # on a GPU machine: about 7.5 minutes at most, JSON lines on stdout
#     bash benchmarks/device_check.sh --tiny     # anywhere (CPU is fine): the tiny configs, a check of the script
#
# Sections (benchmarks/device_check.py says what each measures), one process each so that a crash, a hang or an
# out-of-memory in one leaves the others their time: env, torch-reference (BEiT-L 512 perturbed, saved as a hub
# folder), flax (convert, fp32 parity, bf16 with cuDNN and with XLA attention: parity, compile, batch 1, batch 32,
# the attention kernels), torch-speed (eager / autocast / torch.compile), depth-anything (ViT-L), summary (goals met,
# missed, not measured). Every line is JSON; a section that fails or runs out of time says so in one line and the
# next one runs. The whole run stops by BUDGET_S seconds (default 450; --tiny 600), each section by its own cap.
#
# Setup: nothing is installed and nothing is downloaded. beit_flax is imported from this checkout (PYTHONPATH);
# jax with CUDA, flax, optax, orbax-checkpoint, safetensors, torch with CUDA and transformers must be installed for
# $PYTHON (default python3). The device machines of this workplace have them (KINDS.md: jax 0.11 cuda13, torch
# 2.11 cu130, transformers 5). A missing package shows in the env line's "missing_modules"; carry it as wheels
# (.whl in `carry`, then `python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl` and
# PYTHONPATH=/tmp/site, as /work/.library/device/README.md describes) and run again.
#
# Options: --tiny; --work DIR (the checkpoint and rows.jsonl; default a fresh temporary folder, removed at the end
# unless given). Environment: PYTHON, BUDGET_S.
set -u -o pipefail
cd "$(dirname "$0")/.."

tiny=()
work=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=(--tiny); shift ;;
    --work) work="$2"; shift 2 ;;
    *) echo "{\"error\": \"unknown option $1 (use --tiny, --work DIR)\"}"; exit 2 ;;
  esac
done
keep_work=1
if [ -z "$work" ]; then
  work="$(mktemp -d)"
  keep_work=0
fi
mkdir -p "$work"

PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false BEIT_FLAX_CACHE_DIR=off
if [ ${#tiny[@]} -gt 0 ]; then
  budget="${BUDGET_S:-600}"
else
  budget="${BUDGET_S:-450}"
fi
start=$(date +%s)
end=$((start + budget))

# section cap_seconds: runs device_check.py SECTION under the smaller of its cap and what is left of the budget
# (minus 20 s kept for the summary); its stderr goes to WORK/SECTION.log, the tail of it into the error line
section() {
  local name="$1" cap="$2" now left limit rc
  now=$(date +%s)
  left=$((end - now - 20))
  [ "$name" = summary ] && left=$((end - now))
  limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 10 ]; then
    echo "{\"section\": \"$name\", \"skipped\": \"time budget: ${left} s left\"}"
    return
  fi
  timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/device_check.py "$name" --work "$work" \
    --deadline $((now + limit - 5)) "${tiny[@]}" 2>"$work/$name.log"
  rc=$?
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "{\"section\": \"$name\", \"error\": \"timed out after ${limit} s\"}"
  elif [ $rc -ne 0 ]; then
    "$PYTHON" -c 'import json, sys; print(json.dumps({"section": sys.argv[1], "exit": int(sys.argv[2]), "stderr_tail": open(sys.argv[3], errors="replace").read()[-1500:]}))' \
      "$name" "$rc" "$work/$name.log"
  fi
}

section env 60
section torch-reference 100
section flax 200
section torch-speed 150
section depth-anything 120
section summary 30
echo "{\"device_check\": \"done\", \"wall_s\": $(($(date +%s) - start)), \"work\": \"$work\", \"kept\": $keep_work}"
[ "$keep_work" -eq 0 ] && rm -rf "$work"
exit 0

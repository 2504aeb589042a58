#!/usr/bin/env bash
# Build the GPU variant of every model: a TensorRT plan (FP16) from the same ONNX file the CPU
# variant serves, placed where triton_models/gpu/<name>/config.pbtxt expects it (1/model.plan).
# Shapes come from the config (max_batch_size, dims), so both variants keep one contract.
#
#   deploy/build_tensorrt.sh [--dry-run] [--repo triton_models] [MODEL...]
#
# Run on the GPU host (or in the Triton/TensorRT container) whose GPU will serve the plans:
# plans are specific to the GPU model and TensorRT version. Needs trtexec and python3.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)/triton_models"
DRY=0
MODELS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --repo) REPO="$2"; shift 2 ;;
    -h|--help) sed -n 2,9p "$0"; exit 0 ;;
    *) MODELS+=("$1"); shift ;;
  esac
done
if [[ ${#MODELS[@]} -eq 0 ]]; then
  for d in "$REPO"/gpu/*/; do MODELS+=("$(basename "$d")"); done
fi
TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"
if [[ $DRY -eq 0 && ! -x "$TRTEXEC" ]]; then
  echo "build_tensorrt: trtexec not found (set TRTEXEC or run inside nvcr.io/nvidia/tritonserver:<ver>-py3)" >&2
  exit 1
fi

shapes() {  # prints: min opt max shape flags for trtexec, from the model's config.pbtxt
  python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
batch = int(re.search(r"max_batch_size:\s*(\d+)", text).group(1))
inputs = re.search(r"input\s*\[(.*?)\n\]", text, re.S).group(1)
specs = re.findall(r'name:\s*"([^"]+)".*?dims:\s*\[([^\]]*)\]', inputs, re.S)
def flag(b):
    return ",".join(f"{n}:{b}x" + "x".join(d.split(",")[i].strip() for i in range(len(d.split(",")))) for n, d in specs)
print(flag(1), flag(max(1, batch // 2)), flag(batch))
PY
}

for name in "${MODELS[@]}"; do
  config="$REPO/gpu/$name/config.pbtxt"
  onnx="$REPO/onnx/$name.onnx"
  [[ -f "$config" ]] || { echo "build_tensorrt: $config missing" >&2; exit 1; }
  [[ -f "$onnx" ]] || { echo "build_tensorrt: $onnx missing (run ainode train $name)" >&2; exit 1; }
  read -r MIN OPT MAX < <(shapes "$config")
  plan="$REPO/gpu/$name/1/model.plan"
  cmd=("$TRTEXEC" "--onnx=$onnx" "--saveEngine=$plan" --fp16 "--minShapes=$MIN" "--optShapes=$OPT" "--maxShapes=$MAX")
  if [[ $DRY -eq 1 ]]; then
    echo "${cmd[*]}"
  else
    mkdir -p "$(dirname "$plan")"
    echo "build_tensorrt: $name -> $plan"
    "${cmd[@]}" > "$REPO/gpu/$name/trtexec.log" 2>&1 || { echo "build_tensorrt: $name failed, see $REPO/gpu/$name/trtexec.log" >&2; exit 1; }
  fi
done

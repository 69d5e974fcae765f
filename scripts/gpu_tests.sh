#!/usr/bin/env bash
# The gpu tier: tests/gpu (marker `gpu`) on a machine with a CUDA device, in under 8 minutes
# (measured budget: the pytest run is stopped at 7 minutes; the wheels install in seconds).
#
#   bash scripts/gpu_tests.sh
#
# What it proves, on the tiny random model (no hub, no embedded model): a bf16 LoRA run and a QLoRA run
# with bf16 compute train on the GPU, a kill -9'd CUDA run resumes bitwise equal, one process in an NCCL
# group trains as a lone process does, and a GPU-trained run exports to GGUF and verifies.
#
# The GPU machine has Python 3.12 with torch (CUDA), transformers, peft, accelerate, safetensors,
# tokenizers, typer, rich, tqdm and pyyaml, and reaches no package registry. Everything else travels as
# wheels in .whl/ at the repository root (git ignores it; carry it with the tree). Download them
# beforehand on a machine that reaches PyPI (cp312, manylinux x86_64, no dependencies resolved there):
#
#   python3 -m pip download --dest .whl --only-binary=:all: --no-deps \
#     --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform any \
#     pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection annotated-types typing-extensions \
#     gguf requests urllib3 idna certifi charset-normalizer bitsandbytes \
#     pytest pluggy iniconfig pygments packaging filelock
#
# (pydantic-core must be the exact version that pydantic requires; bitsandbytes' manylinux wheel holds
# its CUDA kernels.) With the device tool: run(command="bash scripts/gpu_tests.sh", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."

site=/tmp/tunery-gpu-site
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf "$site"
  python3 -m pip install -q --no-index --no-deps --target "$site" .whl/*.whl
  export PYTHONPATH="$site:${PYTHONPATH:-}"
else
  echo "note: no .whl/ folder: using the packages installed on this machine" >&2
fi
export PYTHONPATH="$PWD/src:$PWD/tests:$PYTHONPATH"

python3 - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"error: no CUDA device (torch {torch.__version__}); the gpu tier needs one")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}")
PY

# -m gpu: exactly this tier; -rA: every test's outcome and any skip's reason in the summary.
timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu -rA tests/gpu

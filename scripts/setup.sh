#!/usr/bin/env bash
# Set up a virtual environment in .venv with the project and its extras.
#
#   scripts/setup.sh [EXTRAS]      EXTRAS defaults to "dev" (tests + docs + experiment)
#
# PyTorch is installed first and on purpose: a plain `pip install torch` on
# Linux pulls a CUDA build of several GB. Where no NVIDIA GPU is present we
# take the CPU build: a CPU wheel already on this machine's pip find-links if
# there is one, else PyTorch's own CPU index.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --upgrade pip

if .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found, installing the default (CUDA) torch build"
  pip install --quiet "torch>=2.4"
else
  echo "setup: no GPU, installing the CPU build of torch"
  # 1) a CPU wheel on local disk (find-links), without touching any index;
  # 2) PyTorch's CPU index.
  pip install --quiet --no-index --no-deps "torch>=2.4" 2>/dev/null \
    || pip install --quiet --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
fi

# The literate site generator, a distribution of its own in this repository,
# then the project itself, editable, with its extras; torch is already satisfied.
# The torch just installed is pinned, so that no extra swaps it for another
# build (labml-nn, in the `bench` extra, pulls torchvision, whose newest
# release wants a newer torch: pip would fetch the CUDA build).
pin="$(mktemp)"
trap 'rm -f "$pin"' EXIT
echo "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__)')" > "$pin"
pip install --quiet -e ./mkdocs-literate -c "$pin"
pip install --quiet -e ".[$extras]" -c "$pin"
# torchvision from PyPI is built for CUDA torch and fails to load beside the CPU
# build; nothing here uses it, but transformers imports it when present.
if [[ ",$extras," == *",bench,"* ]] && .venv/bin/python -c "import torch, sys; sys.exit(torch.version.cuda is not None)"; then
  pip uninstall --quiet -y torchvision 2>/dev/null || true
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

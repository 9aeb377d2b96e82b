#!/usr/bin/env bash
# Set up a virtual environment in .venv.
#
#   scripts/setup.sh [EXTRAS]      EXTRAS defaults to "dev" (tests + docs + experiment)
#   scripts/setup.sh docs          only what the site needs: the generator and
#                                  its theme; no torch, not the project itself
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

# The literate site generator is a distribution of its own in this
# repository (mkdocs-literate/); the site needs it and its theme, nothing else.
if [ "$extras" = docs ]; then
  pip install --quiet -e "./mkdocs-literate[material,chinese]"
  echo "setup: done (site only: mkdocs-literate, mkdocs-material and jieba)"
  exit 0
fi

if .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "setup: torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found, installing the default (CUDA) torch build"
  pip install --quiet "torch>=2.4"
else
  echo "setup: no GPU, installing the CPU build of torch"
  # 1) a CPU wheel on local disk (find-links), without touching any index;
  # 2) PyTorch's CPU index;
  # 3) where that index cannot be reached, PyPI's default build (larger, but it runs on a CPU).
  pip install --quiet --no-index --no-deps "torch>=2.4" 2>/dev/null \
    || pip install --quiet --index-url https://download.pytorch.org/whl/cpu "torch>=2.4" \
    || { echo "setup: PyTorch's CPU index unreachable, installing torch from PyPI"; pip install --quiet "torch>=2.4"; }
fi

# The generator, then the project itself, editable, with its extras. The torch just
# installed is pinned, so that no extra swaps it for another build.
pin="$(mktemp)"
trap 'rm -f "$pin"' EXIT
# (its version read from its metadata: with --no-deps above, torch cannot be imported
# until the project's install below has brought its dependencies)
echo "torch==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("torch"))')" > "$pin"
pip install --quiet -e ./mkdocs-literate -c "$pin"
pip install --quiet -e ".[$extras]" -c "$pin"

# labml_nn's modules: the generator's corpus test reads them as text and the layer
# benchmark runs its seed layer. Its `corpus` extra is installed without dependencies
# (they are torchvision, built for another torch, and more; the seed layer needs
# only torch and labml).
if [[ ",$extras," == *",dev,"* || ",$extras," == *",bench,"* ]]; then
  corpus=$(.venv/bin/python -c 'import importlib.metadata as m, re
print(" ".join(re.split(r"\s*;", r)[0] for r in m.requires("mkdocs-literate") or [] if "extra == \"corpus\"" in r))')
  pip install --quiet --no-deps $corpus
fi
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"

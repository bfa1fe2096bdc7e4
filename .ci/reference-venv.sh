#!/usr/bin/env bash
# Builds a separate virtual environment where torchvision imports on this CPU-only machine, for use as a
# test oracle and benchmark baseline (torchvision.ops, torchvision's Mask R-CNN). torchvision's wheels need a
# CUDA build of torch; that build runs fine on a CPU. About 6 GB; a minute or two from the package mirror.
#   usage: .ci/reference-venv.sh [DIR]     (default .venv-reference) — prints the venv's python
set -eu
DIR=${1:-.venv-reference}
if ! "$DIR/bin/python" -c "import torchvision.ops" 2>/dev/null; then
  python3 -m venv "$DIR" >&2
  "$DIR/bin/pip" install -q "torchvision==0.29.2" numpy matplotlib pycocotools pytest ipywidgets tqdm pyyaml packaging nbformat >&2
fi
echo "$DIR/bin/python"

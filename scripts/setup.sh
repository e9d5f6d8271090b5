#!/usr/bin/env bash
# Creates .venv with everything the demo and the tests need. Torch comes from this machine's local
# wheels (torch 2.14.1 + torchvision 0.29.1, the pair zennit's torchvision import needs); nothing
# else large is downloaded. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"

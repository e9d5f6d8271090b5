#!/usr/bin/env bash
# Creates .venv with everything the demo and the tests need. Torch comes from this machine's local
# wheels (torch 2.14.1 + torchvision 0.29.1, the pair zennit's torchvision import needs); nothing
# else large is downloaded. The brain template and atlases (Colin27, AAL, Harvard-Oxford, Brodmann)
# come from Debian's mricron-data. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
templates=/usr/share/mricron/templates
if [ ! -f "$templates/ch2bet.nii.gz" ] || [ ! -f "$templates/aal.nii.gz" ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mricron-data >/dev/null
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[neuro,plots,examples,dev]"

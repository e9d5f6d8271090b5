#!/usr/bin/env bash
# Creates .venv with everything the demo and the tests need. Torch comes from this machine's local
# wheels (torch 2.14.1 + torchvision 0.29.1, the pair zennit's torchvision import needs); nothing
# else large is downloaded. The brain template and atlases (Colin27, AAL, Harvard-Oxford, Brodmann)
# come from Debian's mricron-data. Safe to run again: it only installs what is missing. Stops with a
# clear message, before it installs torch, when the disk has too little room for it.
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
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    # torch 2.14.1 and torchvision 0.29.1 are CUDA builds: about 5.5 GiB once installed.
    needed_gib=7
    free_gib=$(( $(df --output=avail -k . | tail -1) / 1024 / 1024 ))
    if [ "$free_gib" -lt "$needed_gib" ]; then
        echo "scripts/setup.sh: $(pwd) has ${free_gib} GiB free; .venv needs about ${needed_gib} GiB" \
            "(torch 2.14.1 + torchvision 0.29.1 are CUDA builds). Free some space and run it again." >&2
        exit 1
    fi
fi
pip_install() { .venv/bin/python -m pip install -q --no-cache-dir "$@"; }
pip_install --upgrade pip >/dev/null
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[neuro,plots,examples,dev]"

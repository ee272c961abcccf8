#!/usr/bin/env bash
# What the GPU test machine lacks, downloaded (from PyPI), trimmed and size-checked into DIR, to travel with
# the working tree (docs/gpu-check.md). Exit 3: the tree plus the bundle is above the limit (the listing
# says where the bytes are); 4: a wheel is missing or conflicts with the machine's packages.
#
#   scripts/device_bundle.sh DIR [--limit-mib 64] [--wheels SRC] [--plan]
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:?usage: scripts/device_bundle.sh DIR [--limit-mib MIB] [--wheels SRC] [--plan]}"
shift
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
exec "$PY" "$ROOT/scripts/device_bundle.py" build "$DIR" "$@"

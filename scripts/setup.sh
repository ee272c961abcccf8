#!/usr/bin/env bash
# One-time set-up on Debian/Ubuntu: system packages (GStreamer RTSP server for the local cameras, redis
# for the Redis sink tests, mosquitto for the MQTT sink tests, which start their own brokers; chromium and its
# driver for the browser test of the live view) and a virtual
# environment in .venv with the project and its test extras.
#   bash scripts/setup.sh            # CPU machine
#   EXTRAS=test,parity,gpu bash scripts/setup.sh   # + PyNvVideoCodec/cupy on an NVIDIA machine
# The default extras include `parity` (ultralytics, AGPL, test-only: tests/detection/test_ultralytics_parity.py).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  gstreamer1.0-rtsp gir1.2-gst-rtsp-server-1.0 python3-gst-1.0 python3-gi
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  redis-server mosquitto
  chromium chromium-driver
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q -e ".[${EXTRAS:-test,parity}]"
.venv/bin/python -c "import rtsp_worker, torch, av, onnxruntime; print('rtsp-worker ready: torch', torch.__version__)"

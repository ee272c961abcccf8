"""The environment step of scripts/gpu_check.sh: driver, NVDEC/NVENC libraries, versions, as JSON.

Always exits 0: it records; doctor, the tests and the benchmarks fail on what is missing. PyNvVideoCodec 2.2 loads NVENC's driver library (libnvidia-encode.so.1) at import to pick its module even
for decoding: it is listed, so a machine whose driver install lacks it shows why NVDEC is unavailable.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def loadable(lib: str) -> str:
    try:
        ctypes.CDLL(lib)
    except OSError as e:
        return f"no: {e}"
    return "yes"


def version(module: str) -> str:
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - RuntimeError without a driver, ImportError without the package
        return f"unavailable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return str(getattr(mod, "__version__", "?"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    import torch

    env: dict = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                 "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env["devices"] = [{"index": i, "name": torch.cuda.get_device_name(i),
                           "capability": list(torch.cuda.get_device_capability(i)),
                           "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                          for i in range(torch.cuda.device_count())]
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,pci.bus_id,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=10, check=False)
        env["nvidia_smi"] = (r.stdout or r.stderr).strip().splitlines()
    env["libraries"] = {lib: loadable(lib) for lib in ("libcuda.so.1", "libnvcuvid.so.1", "libnvidia-encode.so.1",
                                                        "libnvidia-ml.so.1")}
    env["packages"] = {m: version(m) for m in ("numpy", "av", "pydantic", "torchvision", "cupy", "onnxruntime",
                                               "PyNvVideoCodec", "pynvml", "tensorrt", "onnx")}
    args.json.write_text(json.dumps(env, indent=2))
    print(json.dumps(env, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render deploy/k8s/rtsp-worker.yaml.tmpl: replicas and the shard count from one number, the cameras inline.

    python deploy/render.py --replicas 3 --image registry.example/rtsp-worker:1.0 \
        [--cameras deploy/cameras.example.yaml] [--namespace video] > fleet.yaml

The replica count and RTSP_WORKER_SHARDS come from the same --replicas, so they cannot disagree; that is
also why scaling means rendering again with the new count and applying it, never `kubectl scale`. Standard
library only: runs anywhere kubectl does.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "k8s" / "rtsp-worker.yaml.tmpl"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def render(replicas: int, image: str, cameras: str, namespace: str = "default") -> str:
    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    if not NAME.match(namespace):
        raise ValueError(f"--namespace {namespace!r} is not a valid Kubernetes name")
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"--image {image!r} must be an image reference")
    # The cameras become a literal block (`|`) in the ConfigMap: indented four spaces, kept byte for byte.
    body = "\n".join(("    " + line) if line.strip() else "" for line in cameras.rstrip("\n").splitlines())
    text = TEMPLATE.read_text()
    for key, value in (("REPLICAS", str(replicas)), ("IMAGE", image), ("NAMESPACE", namespace),
                       ("CAMERAS", body)):
        text = text.replace("{{" + key + "}}", value)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, required=True, help="pods = shards (one GPU each)")
    ap.add_argument("--image", required=True)
    ap.add_argument("--cameras", type=Path, default=HERE / "cameras.example.yaml")
    ap.add_argument("--namespace", default="default")
    args = ap.parse_args(argv)
    try:
        sys.stdout.write(render(args.replicas, args.image, args.cameras.read_text(), args.namespace))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

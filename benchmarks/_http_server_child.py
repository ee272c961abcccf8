"""Child process of bench_http.py: one HTTP server serving `/metrics` (a 16-camera-shaped registry) and `/idle`.

    python benchmarks/_http_server_child.py before|after [OLD_SERVER_PY]

Prints the port, serves until stdin closes. Imports no torch (its memory would hide the server's own).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CAMERAS = 16
# service/metrics.py's latency buckets (not imported: that module pulls in torch).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


def registry() -> Any:
    """The series a 16-camera worker exposes: per-camera counters, states and latency histograms."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry()
    cams = [f"cam{i:02d}" for i in range(CAMERAS)]
    for name in ("frames_decoded", "frames_processed", "frames_dropped", "reconnects", "stalls", "decode_errors"):
        c = Counter(f"rtsp_worker_{name}", name, ["camera"], registry=reg)
        for cam in cams:
            c.labels(cam).inc(12345)
    state = Gauge("rtsp_worker_camera_state", "state", ["camera", "state"], registry=reg)
    lat = Histogram("rtsp_worker_end_to_end_latency_seconds", "latency", ["camera"], registry=reg,
                    buckets=LATENCY_BUCKETS)
    for cam in cams:
        for s in ("connecting", "streaming", "reconnecting", "stalled", "disabled"):
            state.labels(cam, s).set(1.0 if s == "streaming" else 0.0)
        for v in (0.02, 0.05, 0.1):
            lat.labels(cam).observe(v)
    return reg


def main() -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    variant, old_path = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
    if variant == "before":
        spec = importlib.util.spec_from_file_location("old_server", old_path)
        assert spec is not None and spec.loader is not None
        mod: Any = importlib.util.module_from_spec(spec)
        sys.modules["old_server"] = mod
        spec.loader.exec_module(mod)
    else:
        from rtsp_worker.service import server as mod
    reg = registry()
    srv = mod.HttpServer("127.0.0.1", 0)
    srv.route("GET", "/metrics", lambda _r: mod.Response(200, generate_latest(reg), CONTENT_TYPE_LATEST))
    srv.route("GET", "/idle", lambda _r: mod.Response(200, "ok\n"))
    srv.start()
    print(srv.port, flush=True)
    sys.stdin.read()  # the parent closes stdin to stop us
    srv.close()


if __name__ == "__main__":
    main()

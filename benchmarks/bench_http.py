"""Requests/s and latency of `/metrics` while 500 idle keep-alive connections are open: the old thread-per-connection
server (http.server, as of BEFORE_REV) against the asyncio one (aiohttp, service/server.py), side by side.

Method: each server runs in its own child process (benchmarks/_http_server_child.py) and serves `/metrics` from a Prometheus registry shaped
like a 16-camera worker's (generate_latest on every scrape, as the worker does). The benchmark opens
`--idle` keep-alive connections that each make one request and then stay idle (as browsers, scrapers
and proxy pools leave them; the old server holds a thread for each), then `--clients` threads scrape over keep-alive connections for
`--seconds`; requests/s, p50/p99 latency, and the server process's threads and resident memory are
recorded. The two servers alternate for `--rounds` rounds so that they see the same machine load. Every
connection is to 127.0.0.1 and every loop is bounded.

    .venv/bin/python benchmarks/bench_http.py --json benchmarks/results/http.json
"""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

# The last revision with the http.server-based server (issue 27 replaced it).
BEFORE_REV = "bccd3301e16a8d40cf2c79b2175fe8a502b8dcd8"
CHILD = Path(__file__).with_name("_http_server_child.py")


# -- the client side ---------------------------------------------------------------------------------------------
def _proc_status(pid: int) -> tuple[int, int]:
    text = Path(f"/proc/{pid}/status").read_text()
    return (int(re.search(r"Threads:\s+(\d+)", text).group(1)), int(re.search(r"VmRSS:\s+(\d+)", text).group(1)))


def _scrape(port: int, seconds: float, latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or not body:
                errors.append(f"status {resp.status}")
                continue
        except (OSError, http.client.HTTPException) as e:
            errors.append(type(e).__name__)
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            continue
        latencies.append((time.perf_counter() - t0) * 1e3)
    conn.close()


def measure(variant: str, old_path: str | None, idle: int, clients: int, seconds: float) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, str(CHILD), variant, old_path or ""], cwd=common.ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held: list[http.client.HTTPConnection] = []
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        threads_before, _ = _proc_status(proc.pid)
        for _ in range(idle):  # keep-alive connections idle after one answer (browsers, scrapers, proxy pools)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/idle")
            c.getresponse().read()
            held.append(c)
        time.sleep(0.5)
        threads_idle, rss_idle = _proc_status(proc.pid)
        latencies: list[float] = []
        errors: list[str] = []
        workers = [threading.Thread(target=_scrape, args=(port, seconds, latencies, errors)) for _ in range(clients)]
        t0 = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join(seconds + 60)
        elapsed = time.monotonic() - t0
        cpu = common.process_cpu_seconds(proc.pid)
    finally:
        for c in held:
            c.close()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "variant": variant, "idle_connections": idle, "clients": clients, "requests": len(latencies),
        "errors": len(errors), "requests_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "p50_ms": common.percentile(latencies, 50) if latencies else None,
        "p99_ms": common.percentile(latencies, 99) if latencies else None,
        "server_threads_before": threads_before, "server_threads_idle": threads_idle,
        "server_rss_idle_kib": rss_idle, "server_cpu_s": cpu,
    }


def old_server_source(rev: str) -> str | None:
    try:
        return subprocess.run(["git", "show", f"{rev}:rtsp_worker/service/server.py"], cwd=common.ROOT,
                              check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--idle", type=int, default=500, help="idle connections held open during the scrapes")
    ap.add_argument("--clients", type=int, default=4, help="concurrent scraping clients (keep-alive)")
    ap.add_argument("--seconds", type=float, default=5.0, help="scraping time per round and server")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the two servers alternate within each")
    ap.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the old server")
    args = ap.parse_args()
    common.setup(args)
    if args.smoke:
        args.idle, args.clients, args.seconds, args.rounds = 50, 2, 0.5, 1
    source = old_server_source(args.before_rev)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        old_path = None
        if source is not None:
            old_path = str(Path(tmp) / "old_server.py")
            Path(old_path).write_text(source)
        variants = (["before"] if old_path else []) + ["after"]
        for r in range(args.rounds):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                row = measure(variant, old_path, args.idle, args.clients, args.seconds)
                row["round"] = r
                rows.append(row)
    summary = {}
    for variant in ("before", "after"):
        mine = [x for x in rows if x["variant"] == variant]
        if mine:
            summary[variant] = {
                "requests_per_s": sorted(x["requests_per_s"] for x in mine)[len(mine) // 2],
                "p99_ms": sorted(x["p99_ms"] for x in mine if x["p99_ms"] is not None)[len(mine) // 2],
                "server_threads_idle": max(x["server_threads_idle"] for x in mine),
                "server_rss_idle_kib": max(x["server_rss_idle_kib"] for x in mine),
                "errors": sum(x["errors"] for x in mine),
            }
    common.print_table(f"/metrics with {args.idle} idle connections open ({args.clients} clients, "
                       f"{args.seconds:g} s per round)", rows,
                       ["round", "variant", "requests_per_s", "p50_ms", "p99_ms", "errors", "server_threads_idle",
                        "server_rss_idle_kib"])
    if "before" in summary and summary["before"]["requests_per_s"]:
        print(f"after/before requests/s (median of rounds): "
              f"{summary['after']['requests_per_s'] / summary['before']['requests_per_s']:.2f}x")
    common.write_json(args.json, {"benchmark": "http", **common.metadata(args, before_rev=args.before_rev,
                                                                            cameras_in_metrics=16),
                                  "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()

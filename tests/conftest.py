"""Shared fixtures, in one place for every folder of tests/ (which mirrors the package by stage):

- here: the repo importable as `rtsp_worker`, a small H.264 clip, the real RTSP server (`rtsp_server_factory`);
- ops_support.py: the tiny ONNX model (`tiny_model`), a small clip (`small_clip`), test configs, a pipeline
  on a thread, `wait_for`;
- redis_fixture.py: a real redis-server on a free port (`redis_server_factory`), `free_port()`;
- sink_support.py: hand-made results and recording sinks; tiny_models.py: tiny models of the output layouts;
  media_support.py: decoding a clip in memory.

Under pytest-xdist every worker is its own process: session fixtures are made once per worker, ports are
bound to 0 or taken from free_port(), and files go to tmp_path / tmp_path_factory, never into the checkout.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The package is not installed in editable mode: make `import rtsp_worker` resolve to this checkout.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.sim.devserver import RtspServerProcess, available

# The fixtures of the helper modules, for every test without importing them by name.
pytest_plugins = ["ops_support", "redis_fixture"]

# In CI a missing dependency must fail the run, not quietly skip the integration tests.
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip locally, fail in CI (CI=true), so CI cannot silently lose a test."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def test_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4 s 640x360 15 fps H.264 MP4 (gop 15, no B-frames), made once per session."""
    return write_test_clip(
        tmp_path_factory.mktemp("clips") / "pattern.mp4", seconds=4, fps=15, size=(640, 360)
    )


@pytest.fixture
def rtsp_server_factory() -> Iterator[Callable[..., RtspServerProcess]]:
    """Start real RTSP servers: `factory({"cam0": "file:clip.mp4"}, port=0, auth=None, timeout=10)`.

    Every server started through the factory is stopped at teardown, even if the test failed or froze it.
    """
    reason = available()
    if reason is not None:
        skip_or_fail(reason)
    started: list[RtspServerProcess] = []

    def factory(
        mounts: dict[str, str],
        port: int = 0,
        auth: tuple[str, str] | str | None = None,
        timeout: float = 10.0,
    ) -> RtspServerProcess:
        server = RtspServerProcess.start(mounts, port=port, auth=auth, timeout=timeout)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


# Folders whose tests run real workers and wait on real-time streams or child processes: they start first
# (in every worker's block, see below), so that under pytest-xdist the short unit tests fill the gaps instead
# of a long test ending the run alone.
# (A stable sort: the order inside each folder and file is kept.)
LONG_FIRST = ("e2e", "service", "tools")

# Tests that run the trained model on several real-time streams and then judge what came out (tracking
# quality, counts, every camera's frames): each needs most of a core for its whole run. Under pytest-xdist
# they take a lock shared by the workers, so two of them never compete for the same two cores (the other
# workers run everything else meanwhile). A lock rather than an xdist_group: `--dist loadgroup` does not
# group under pytest 9 (xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads).
REALTIME_HEAVY = (
    "e2e/test_e2e_tracking.py",
    "e2e/test_e2e_analytics.py",
    "e2e/test_integration.py",
    "service/test_supervisor.py",
    "tools/test_demo.py",
    "e2e/test_view_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        folder = Path(str(item.path)).parent.name
        return LONG_FIRST.index(folder) if folder in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)
    # pytest-xdist's worksteal hands each worker one contiguous block of the list at the start, and an idle
    # worker later steals the tail half of the longest queue. Dealt round-robin into one block per worker,
    # each block starts with its share of the long tests and ends with short ones: no worker starts with
    # every long test while the others run out of work, and what is stolen at the end is short.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        long = [i for i in items if rank(i) < len(LONG_FIRST)]
        short = [i for i in items if rank(i) == len(LONG_FIRST)]
        items[:] = [i for w in range(workers) for i in (*long[w::workers], *short[w::workers])]


@pytest.fixture(autouse=True)
def one_realtime_heavy_test_at_a_time(request: pytest.FixtureRequest,
                                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Holds the workers' shared lock around a REALTIME_HEAVY test (no-op without xdist or for others)."""
    relative = Path(str(request.node.path)).relative_to(Path(__file__).parent).as_posix()
    if "PYTEST_XDIST_WORKER" not in os.environ or relative not in REALTIME_HEAVY:
        yield
        return
    # Every worker's basetemp is <the run's basetemp>/popen-gwN: the parent is this run's, shared by its workers.
    lock = tmp_path_factory.getbasetemp().parent / "realtime-heavy.lock"
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if the test fails
        yield

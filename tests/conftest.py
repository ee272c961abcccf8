"""Shared fixtures: the repo importable as `rtsp_worker`, a small H.264 clip, and the real RTSP server."""

from __future__ import annotations

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

"""The process exit codes of every command, in one place (tests, the README and Kubernetes rely on them)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a command returns; only the CLI (`rtsp_worker.cli`) turns it into a process exit."""

    OK = 0  # clean stop
    FAILED = 1  # a one-shot command failed: probe could not read the stream, build-engine could not build
    CONFIG = 2  # configuration error: restarting cannot help
    MODEL = 3  # model error (unreadable file, unknown layout): restarting cannot help
    RUNTIME = 4  # runtime or device error (no camera left, a stage failed, a port taken, doctor found a fault)
    INTERRUPTED = 130  # a second SIGINT/SIGTERM: exit at once


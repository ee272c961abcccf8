"""The worker's run id: one per process, in every record of every sink, so that outputs of a restart on the
same folder (where `frame` starts at 0 again) are told apart. UTC start time plus a random suffix, e.g.
`20261201T230102Z-3fa9c1`: sorts by start time, unique even for two starts within one second."""

from __future__ import annotations

import secrets
import time

_RUN_ID = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def run_id() -> str:
    return _RUN_ID

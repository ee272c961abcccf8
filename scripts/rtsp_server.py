#!/usr/bin/python3
"""Run the project's test/demo RTSP server.

    /usr/bin/python3 scripts/rtsp_server.py --port 8554 --mount cam0=file:clip.mp4

A thin wrapper around `rtsp_worker/sim/rtsp_server.py` (see `--help` there for mount specs); it needs Debian's
/usr/bin/python3 with python3-gi and GStreamer's RTSP server, not the project's venv.
"""

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    server = Path(__file__).resolve().parent.parent / "rtsp_worker" / "sim" / "rtsp_server.py"
    sys.argv[0] = str(server)
    runpy.run_path(str(server), run_name="__main__")

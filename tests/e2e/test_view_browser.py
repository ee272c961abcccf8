"""The live view in a real browser (Debian's chromium, headless, through selenium) against a worker started by
the real command line on the real RTSP server with 8 cameras, bound to every interface with a view token:
log in through the form; 8 tiles whose pictures change; a camera whose stream dies shows its state; a camera
added through the control API appears without a reload (and goes when removed); a zone event shows in the list; the camera page plays
its stream. Then the access rule on that non-loopback bind (401 without the token or with a wrong one), and
neither token in any page, answer or log line. A screenshot goes to the test's temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request

from conftest import skip_or_fail
from ops_support import REPO, stop_worker
from redis_fixture import free_port
from view_support import get, start_worker, write_config
from view_support import wait_until as _wait_until

VIEW_TOKEN = "view-tok-3f9a1c7e5b"
CONTROL_TOKEN = "ctl-tok-8d2e6f0a4c"
FRACTION_ZONE = {"name": "all", "units": "fractions", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}
LINE = {"name": "mid", "units": "fractions", "points": [[0.5, 0], [0.5, 1]]}


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        skip_or_fail("selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        skip_or_fail("chromium and chromium-driver are not installed (scripts/setup.sh)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def wait_until(cond, timeout: float, what: str) -> None:
    """view_support.wait_until, where an element the page replaced meanwhile (a tile removed, a picture
    reloaded) means "not yet" rather than a failure."""
    from selenium.common.exceptions import StaleElementReferenceException

    def safe() -> bool:
        try:
            return bool(cond())
        except StaleElementReferenceException:
            return False
    _wait_until(safe, timeout, what)


# A tile's picture as the browser shows it: drawn on a canvas, read back (same origin: allowed).
_PIXELS = """
const img = arguments[0];
if(!img || !img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = 64; c.height = 48;
c.getContext('2d').drawImage(img, 0, 0, 64, 48); return c.toDataURL('image/png');
"""


def test_view_in_a_browser(tmp_path, rtsp_server_factory, small_clip, tiny_model):
    names = [f"cam{i}" for i in range(7)]
    srv = rtsp_server_factory({n: f"file:{small_clip}" for n in names})
    doomed = rtsp_server_factory({"cam7": f"file:{small_clip}"})  # its own server: stopped to kill one stream
    port = free_port()
    cameras = [{"name": n, "url": srv.url(n), "zones": [FRACTION_ZONE], "lines": [LINE]} for n in names]
    cameras.append({"name": "cam7", "url": doomed.url("cam7")})
    cfg = write_config(tmp_path, cameras, tiny_model, port, metrics={"host": "0.0.0.0"},
                       view={"token": "${RW_VIEW_TOKEN}", "fps": 3},
                       control={"token": "${RW_CONTROL_TOKEN}"})
    proc, log = start_worker(cfg, tmp_path, {"RW_VIEW_TOKEN": VIEW_TOKEN, "RW_CONTROL_TOKEN": CONTROL_TOKEN})
    base = f"http://127.0.0.1:{port}"
    answers: list[bytes] = []
    browser = None
    try:
        def ready() -> bool:
            status, _, body = get(f"{base}/readyz")
            return proc.poll() is None and status == 200 and json.loads(body)["streaming"] == 8
        wait_until(ready, 120, f"8 cameras streaming (log: {log})")

        # The access rule on a non-loopback bind: every route that shows pictures, events or files needs the
        # token; a wrong one is refused too.
        routes = ["/", "/view/cam0", "/view/api/state", "/cameras/cam0/latest.jpg", "/cameras/cam0/stream.mjpeg",
                  "/events", "/media/cam0/frames.jsonl"]
        for path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Cookie": "rtsp_worker_view=forged"},
                            {"Authorization": f"Bearer {CONTROL_TOKEN}"}):
                status, _, body = get(base + path, headers)
                answers.append(body)
                assert status == 401, (path, headers, status)
        status, _, body = get(f"{base}/media/cam0/frames.jsonl", {"Authorization": f"Bearer {VIEW_TOKEN}"})
        answers.append(body)
        assert status == 200

        auth = {"Authorization": f"Bearer {VIEW_TOKEN}"}
        browser = _browser()
        browser.set_page_load_timeout(60)
        browser.get(base + "/")
        answers.append(browser.page_source.encode())
        assert browser.find_elements("id", "token"), "the login form"
        browser.find_element("id", "token").send_keys(VIEW_TOKEN)
        browser.find_element("id", "login").click()
        cookie = browser.get_cookie("rtsp_worker_view")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert VIEW_TOKEN not in cookie["value"]

        def tiles() -> dict[str, object]:
            return {t.get_attribute("data-camera"): t for t in browser.find_elements("css selector", ".tile")}

        wait_until(lambda: len(tiles()) == 8, 60, "8 tiles")

        def pictures() -> dict[str, str | None]:
            return {n: browser.execute_script(_PIXELS, t.find_element("tag name", "img")) for n, t in tiles().items()}

        wait_until(lambda: all(pictures().values()), 90, "a picture in every tile")
        # A tile is read while no new picture is loading (img.complete); two different reads: it changed.
        looks: dict[str, set[str]] = {}
        changed: set[str] = set()

        def all_changed() -> bool:
            for n, p in pictures().items():
                if p:
                    looks.setdefault(n, set()).add(p)
            changed.update(n for n, seen in looks.items() if len(seen) >= 2)
            return len(changed) == 8
        try:
            wait_until(all_changed, 150, "every picture changing")
        except AssertionError as e:
            frames = {n: t.get_attribute("data-frames") for n, t in tiles().items()}
            raise AssertionError(f"{e}: changed {sorted(changed)}, pictures loaded per tile {frames}, "
                                 f"state {get(base + '/view/api/state', auth)[2][:2000]!r}") from None
        shot = tmp_path / "view.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000

        # A zone event in the event list (every track enters the frame-wide zone).
        wait_until(lambda: browser.find_elements("css selector", "#events li.event[data-kind='zone']"), 60,
                   "a zone event in the list")

        # One camera's stream dies: its tile shows its state, not a picture.
        doomed.stop()
        wait_until(lambda: "is-down" in (tiles()["cam7"].get_attribute("class") or ""), 60, "cam7's tile down")
        assert tiles()["cam7"].get_attribute("data-state") != "streaming"
        assert not tiles()["cam7"].find_element("tag name", "img").is_displayed()

        # A camera added through the control API shows up without a reload.
        req = urllib.request.Request(f"{base}/cameras/added", method="PUT",
                                     data=json.dumps({"url": srv.url("cam0")}).encode(),
                                     headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 201
            answers.append(resp.read())
        wait_until(lambda: "added" in tiles(), 60, "the added camera's tile")
        wait_until(lambda: pictures().get("added"), 60, "the added camera's picture")
        answers.append(browser.page_source.encode())
        req = urllib.request.Request(f"{base}/cameras/added", method="DELETE",
                                     headers={"Authorization": f"Bearer {CONTROL_TOKEN}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 200
        wait_until(lambda: "added" not in tiles(), 60, "the removed camera's tile gone")

        # The camera page plays its MJPEG stream.
        browser.get(base + "/view/cam1")
        answers.append(browser.page_source.encode())
        def img():
            return browser.find_element("id", "stream")
        wait_until(lambda: (img().get_attribute("src") or "").endswith(tuple("0123456789")) and
                   browser.execute_script(_PIXELS, img()), 60, "the camera page's stream")
        stream_looks: set[str] = set()

        def stream_moves() -> bool:
            p = browser.execute_script(_PIXELS, img())
            if p:
                stream_looks.add(p)
            return len(stream_looks) >= 2
        wait_until(stream_moves, 90, "the stream moving")
        browser.save_screenshot(str(tmp_path / "view-camera.png"))
    finally:
        if browser is not None:
            browser.quit()
        stop_worker(proc)
    text = log.read_text()
    for blob in [*answers, text.encode()]:
        assert VIEW_TOKEN.encode() not in blob and CONTROL_TOKEN.encode() not in blob
    assert proc.returncode == 0, text[-3000:]


def test_a_public_bind_without_a_token_is_refused_at_start(tmp_path, tiny_model):
    # The file alone is refused when it loads (tests/service/test_view_access.py); here a loopback file with
    # the command line's --metrics-host override: the worker checks again before serving anything.
    port = free_port()
    cfg = write_config(tmp_path, [{"name": "a", "url": "rtsp://127.0.0.1:9/a"}], tiny_model, port)
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg), "--metrics-host", "0.0.0.0"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False,
                          timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]  # ExitCode.CONFIG
    assert "view.token" in proc.stderr and "metrics.host '0.0.0.0'" in proc.stderr
    assert get(f"http://127.0.0.1:{port}/")[0] == 0  # nothing was served

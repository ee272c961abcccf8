"""MQTT and webhook sinks (issue 28) against a real Mosquitto broker and a real local HTTP server.

The end-to-end test runs the real worker over the real RTSP server: every event JSONL has must reach the
MQTT subscriber with the same content, and the webhook the ones its `on:` matches, in order. The other
tests drive the sinks directly with Event objects: the broker stopped and restarted (nothing lost within the
buffer, drops counted beyond it), a wrong password, TLS with a self-signed certificate, a broker down at
start, a webhook that fails its first tries and one that never answers.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mqtt_fixture import Mosquitto, Subscriber, mosquitto_factory
from ops_support import PipelineThread, make_config, small_clip, tiny_model, wait_for

from rtsp_worker.config import MqttConfig, MqttTlsConfig, WebhookConfig, parse_config
from rtsp_worker.redact import scrub
from rtsp_worker.sinks import SinkRunner
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.types import Event, FrameResult

FIXTURES = (mosquitto_factory, small_clip, tiny_model)
pytest.importorskip("paho.mqtt")
MQTT = pytest.mark.mqtt


def event(i: int, camera: str = "a", kind: str = "line", direction: str = "in") -> Event:
    return Event(camera=camera, frame=i, ts=1e9 + i / 15, track_id=i, class_id=0, class_name="person", kind=kind,
                 name="door" if kind == "line" else "lobby", direction=direction, point=(10.0, 20.0),
                 id=f"RUN-{camera}-{i + 1}")


def result(camera: str, frame: int, events=()) -> FrameResult:
    return FrameResult(camera=camera, row=0, frame=frame, ts=1e9 + frame / 15, width=320, height=240,
                       events=tuple(events))


def mqtt_sink(url: str, **kw):
    from rtsp_worker.sinks.mqtt import MqttSink

    return MqttSink(MqttConfig(url=url, topic_prefix="t", **kw), run="RUN", retry_initial_s=0.2,
                    retry_max_s=1.0)


# -- a local webhook endpoint ---------------------------------------------------------------------------
class Endpoint:
    """An HTTP server on 127.0.0.1: answers 503 to the first `fail_first` requests, or never (`hang`)."""

    def __init__(self, fail_first: int = 0, hang: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.fail_first = fail_first
        self.release = threading.Event()
        self.hang = hang
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                if outer.hang:
                    outer.release.wait(30)
                    return
                if outer.requests <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.bodies.append(body)
                outer.headers.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints():
    made: list[Endpoint] = []

    def factory(**kw) -> Endpoint:
        made.append(Endpoint(**kw))
        return made[-1]

    yield factory
    for e in made:
        e.close()


# -- end to end -----------------------------------------------------------------------------------------
@MQTT
@pytest.mark.rtsp
@pytest.mark.slow
def test_worker_sends_every_jsonl_event_to_mqtt_and_matching_ones_to_the_webhook(
        tmp_path, rtsp_server_factory, small_clip, tiny_model, mosquitto_factory, endpoints, caplog, monkeypatch):
    from prometheus_client import generate_latest

    from rtsp_worker.pipeline import build_pipeline
    from rtsp_worker.service.metrics import PipelineMetrics

    key, token = "k3y-in-the-query-string", "t0ken-in-a-header"
    monkeypatch.setenv("HOOK_TOKEN", token)
    broker = mosquitto_factory()
    hook = endpoints()
    sub = Subscriber(broker, "e2e/#")
    server = rtsp_server_factory({"cam": f"file:{small_clip}"})
    out = tmp_path / "out"
    # The tiny model's boxes are everywhere: a zone over the whole frame and a line through it give events.
    cfg = make_config(
        [{"name": "cam", "url": server.url("cam"),
          "zones": [{"name": "all", "units": "fractions", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}],
          "lines": [{"name": "mid", "units": "fractions", "points": [[0.5, 0], [0.5, 1]], "margin": 0}]}],
        tiny_model, out,
        output={"mqtt": {"url": broker.url, "topic_prefix": "e2e"},
                "webhooks": [{"url": hook.url(f"/hook?key={key}"), "name": "alarm", "on": ["zone_enter"],
                              "headers": {"Authorization": "Bearer ${HOOK_TOKEN}"}}]},
        tracker={"max_tracks": 32, "min_hits": 1, "max_age": 1},
    )
    caplog.set_level(logging.DEBUG, logger="rtsp_worker")
    pipeline = build_pipeline(cfg)
    metrics = PipelineMetrics(pipeline)
    runner = PipelineThread(pipeline)
    events_file = out / "cam" / "events.jsonl"

    def n_events() -> int:
        return len(events_file.read_text().splitlines()) if events_file.exists() else 0

    wait_for(lambda: n_events() >= 6 and pipeline.status().camera("cam").processed >= 15, 90, "events from the worker")
    runner.stop()
    jsonl = [json.loads(line) for line in events_file.read_text().splitlines()]
    enters = [e for e in jsonl if e["kind"] == "zone" and e["direction"] == "enter"]
    assert enters and len(enters) < len(jsonl)  # the webhook's filter has something to leave out
    # Ids: <run>-<camera>-<n>, n counting from 1, in the order the events were made.
    assert [e["id"] for e in jsonl] == [f"{e['run']}-cam-{n}" for n, e in enumerate(jsonl, 1)]

    wait_for(lambda: len(sub.on("e2e/cam/events")) >= len(jsonl), 30, "every event on MQTT")
    assert [json.loads(p) for p in sub.on("e2e/cam/events")] == jsonl  # same content, same order
    assert [json.loads(b) for b in hook.bodies] == enters
    assert all(h["Authorization"] == f"Bearer {token}" and h["Content-Type"] == "application/json"
               for h in hook.headers)
    state = json.loads(sub.on("e2e/cam/state")[-1])
    assert state["camera"] == "cam" and state["events"] == len(jsonl)
    assert sum(state["lines"].get("mid", {}).values()) == sum(e["kind"] == "line" for e in jsonl)
    assert sub.on("e2e/availability")[-1] == b"offline"  # the clean stop said so

    text = generate_latest(metrics.registry).decode()
    assert f'rtsp_worker_sink_delivered_total{{sink="mqtt"}} {float(len(jsonl))}' in text
    assert f'rtsp_worker_sink_delivered_total{{sink="webhook:alarm"}} {float(len(enters))}' in text
    for sink in ("mqtt", "webhook:alarm"):
        assert f'rtsp_worker_sink_dropped_total{{sink="{sink}",where="buffer"}} 0.0' in text
        assert f'rtsp_worker_sink_buffered{{sink="{sink}"}} 0.0' in text
    for secret in (key, token, hook.url()):
        assert secret not in text
        assert secret not in caplog.text
    sub.close()


# -- MQTT ---------------------------------------------------------------------------------------------
@MQTT
@pytest.mark.slow
def test_broker_restart_loses_nothing_within_the_buffer_and_counts_drops_beyond(mosquitto_factory, caplog):
    broker = mosquitto_factory()
    sub = Subscriber(broker, "t/#")
    sink = mqtt_sink(broker.url, buffer=20)
    runner = SinkRunner([sink])
    wait_for(lambda: sink.connected, 15, "the sink to connect")
    runner.submit([result("a", i, [event(i)]) for i in range(10)])
    wait_for(lambda: sink.delivered == 10, 15, "10 events acknowledged")
    assert sub.on("t/availability")[-1] == b"online"
    wait_for(lambda: sub.on("t/a/state"), 15, "the camera's retained state")

    broker.stop()
    wait_for(lambda: not sink.connected, 15, "the sink to see the broker gone")
    time.sleep(2)  # down for a while: the sink's reconnects fail meanwhile
    runner.submit([result("a", i, [event(i)]) for i in range(10, 40)])  # 20 fit in the buffer, 10 do not
    wait_for(lambda: sink.dropped == 10, 15, "10 drops counted")
    assert sink.buffered == 20
    broker.start()
    # At-least-once: a resend after the restart may come twice, so wait for 30 distinct ids, not 30 messages.
    wait_for(lambda: len({json.loads(p)["id"] for p in sub.on("t/a/events")}) >= 30, 30,
             "the buffered events after the restart")
    got = [json.loads(p)["id"] for p in sub.on("t/a/events")]
    assert sorted(set(got), key=got.index) == [f"RUN-a-{i + 1}" for i in range(30)]  # at-least-once
    wait_for(lambda: sink.delivered == 30 and sink.buffered == 0, 15, "every buffered event acknowledged")
    assert runner.sink_status("mqtt").lost == 10

    runner.close_camera("a").wait(10)
    wait_for(lambda: sub.on("t/a/state")[-1] == b"", 15, "the retained state cleared")
    runner.close()
    wait_for(lambda: sub.on("t/availability")[-1] == b"offline", 15, "offline at the stop")
    assert "connection lost" in caplog.text
    sub.close()


@MQTT
def test_last_will_says_offline_when_the_connection_dies_and_online_after_the_reconnect(mosquitto_factory):
    broker = mosquitto_factory()
    sub = Subscriber(broker, "t/availability")
    sink = mqtt_sink(broker.url)
    wait_for(lambda: sub.on("t/availability")[-1:] == [b"online"], 15, "online")
    n = len(sub.on("t/availability"))
    sink.client.socket().shutdown(socket.SHUT_RDWR)  # the connection dies without a DISCONNECT: as in a crash
    wait_for(lambda: sub.on("t/availability")[n:][:1] == [b"offline"], 15, "the broker's last will")
    wait_for(lambda: sub.on("t/availability")[-1:] == [b"online"] and sink.connected, 15, "online again")
    sink.close()
    sub.close()


@MQTT
def test_wrong_password_is_a_clear_error_without_the_secret(mosquitto_factory, caplog, monkeypatch):
    secret = "Wr0ng-Secret-Passw0rd"
    broker = mosquitto_factory(users={"worker": "the-right-password"})
    monkeypatch.setenv("MQTT_PASSWORD", secret)
    cfg = parse_config({"cameras": [{"name": "a", "url": "rtsp://127.0.0.1/a"}], "model": {"path": "m.onnx"},
                        "output": {"mqtt": {"url": broker.url, "username": "worker",
                                            "password": "${MQTT_PASSWORD}"}}})
    assert cfg.output.mqtt.password.get_secret_value() == secret
    assert secret not in repr(cfg) and secret not in str(cfg.output)
    from rtsp_worker.sinks.mqtt import MqttSink

    caplog.set_level(logging.DEBUG)
    sink = MqttSink(cfg.output.mqtt, retry_initial_s=0.2, retry_max_s=1.0, close_timeout_s=1.0)
    wait_for(lambda: sink.errors >= 1, 15, "the refused connection")
    sink.write_events([event(0)])  # never raises: held for a broker that may come back
    sink.close()
    assert "refused the connection" in caplog.text and "username and password" in caplog.text
    assert secret not in caplog.text
    assert not sink.connected and sink.delivered == 0 and sink.dropped == 1


@MQTT
def test_broker_down_at_start_warns_once_and_connects_when_it_comes(tmp_path, caplog, mosquitto_factory):
    # (mosquitto_factory only for its check that mosquitto is installed: this broker starts late, by hand)
    broker = Mosquitto(tmp_path)  # its port is chosen, nothing listens on it yet
    caplog.set_level(logging.INFO, logger="rtsp_worker.sinks.mqtt")
    sink = mqtt_sink(broker.url)
    try:
        sink.write_events([event(0), event(1)])
        wait_for(lambda: "cannot connect" in caplog.text, 15, "the warning")
        time.sleep(1.5)  # several retries
        assert sum("cannot connect" in r.message for r in caplog.records) == 1
        assert [r.levelname for r in caplog.records if "cannot connect" in r.message] == ["WARNING"]
        broker.start()
        sub = Subscriber(broker, "t/#")
        wait_for(lambda: sink.delivered == 2, 30, "the held events once the broker is up")
        sub.close()
    finally:
        sink.close()
        broker.stop()


@MQTT
@pytest.mark.slow
def test_mqtt_over_tls_with_a_self_signed_certificate(mosquitto_factory, caplog):
    broker = mosquitto_factory(tls=True)
    sub = Subscriber(broker, "t/#")
    tls_url = f"mqtts://127.0.0.1:{broker.tls_port}"
    sink = mqtt_sink(tls_url, tls=MqttTlsConfig(ca=broker.cert))
    wait_for(lambda: sink.connected, 15, "the TLS connection")
    sink.write_events([event(i) for i in range(3)])
    wait_for(lambda: len(sub.on("t/a/events")) == 3, 15, "the events over TLS")
    sink.close()

    # Without the CA the self-signed certificate is refused, clearly; `insecure` accepts it.
    caplog.set_level(logging.ERROR, logger="rtsp_worker.sinks.mqtt")
    refused = mqtt_sink(tls_url)
    wait_for(lambda: "TLS handshake failed" in caplog.text, 15, "the TLS error")
    assert "certificate verify failed" in caplog.text and not refused.connected
    refused.close()
    insecure = mqtt_sink(tls_url, tls=MqttTlsConfig(insecure=True))
    wait_for(lambda: insecure.connected, 15, "the insecure TLS connection")
    insecure.close()
    sub.close()


# -- webhooks -----------------------------------------------------------------------------------------
def test_webhook_delivers_after_retries_in_order_and_filters_by_kind(endpoints, tmp_path):
    from rtsp_worker.sinks.webhook import WebhookSink

    hook = endpoints(fail_first=2)
    sink = WebhookSink(WebhookConfig(url=hook.url(), on=["line", "zone_enter"], retries=3, backoff_s=0.05),
                       index=3, run="RUN")
    assert sink.name == "webhook:3"
    jsonl = JsonlSink(tmp_path, run="RUN")
    runner = SinkRunner([jsonl, sink])
    evs = [event(0), event(1, kind="zone", direction="enter"), event(2, kind="zone", direction="exit"), event(3)]
    runner.submit([result("a", e.frame, [e]) for e in evs])
    wait_for(lambda: sink.delivered == 3, 30, "three events delivered")
    runner.close()
    sent = [json.loads(b) for b in hook.bodies]
    assert [e["id"] for e in sent] == ["RUN-a-1", "RUN-a-2", "RUN-a-4"]  # in order, the exit left out
    records = [json.loads(x) for x in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    assert sent == [records[0], records[1], records[3]]  # the JSONL record, as is
    assert sink.errors == 2 and sink.failed == 0 and sink.dropped == 0


def test_hanging_webhook_is_bounded_counted_and_blocks_nothing(endpoints, tmp_path, caplog):
    from rtsp_worker.sinks.webhook import WebhookSink

    hook = endpoints(hang=True)
    secret_url = hook.url("/hook/s3cr3t-path-token")
    sink = WebhookSink(WebhookConfig(url=secret_url, name="slow", timeout_s=0.3, retries=1, backoff_s=0.05,
                                     queue=3), run="RUN", close_timeout_s=1.0)
    jsonl = JsonlSink(tmp_path, run="RUN")
    runner = SinkRunner([jsonl, sink])
    for i in range(20):
        runner.submit([result("a", i, [event(i)])])
    # The other sink gets everything while the endpoint hangs; the webhook's own queue overflows, counted.
    wait_for(lambda: jsonl.lines.get("a", 0) == 20, 30, "JSONL to get every batch")
    wait_for(lambda: sink.dropped >= 20 - 3 - 1, 30, "the webhook's drops")
    assert runner.sink_status("webhook:slow").queue_dropped == 0  # the runner's queue never filled: write_events does not wait
    closer = threading.Thread(target=runner.close)
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "closing did not finish"
    assert sink.delivered == 0 and sink.dropped + sink.failed == 20 and runner.sink_status("webhook:slow").lost == 20
    assert len((tmp_path / "a" / "events.jsonl").read_text().splitlines()) == 20
    assert "s3cr3t-path-token" not in caplog.text and "webhook slow" in caplog.text
    assert "s3cr3t-path-token" not in scrub(f"POST {secret_url} failed")  # registered with the log filter
    assert re.search(r"timed out", caplog.text)


def test_webhook_config_refuses_bad_urls_and_duplicate_names(tmp_path):
    from rtsp_worker.config import ConfigError, load_config

    # In YAML 1.1 a bare `on:` key is the boolean true: the webhook still gets its `on` list.
    (tmp_path / "c.yaml").write_text("cameras: [{name: a, url: rtsp://127.0.0.1/a}]\nmodel: {path: m.onnx}\n"
                                     "output:\n  webhooks:\n    - url: http://h/x\n      on: [zone_exit]\n")
    assert load_config(tmp_path / "c.yaml").output.webhooks[0].on == ["zone_exit"]

    base = {"cameras": [{"name": "a", "url": "rtsp://127.0.0.1/a"}], "model": {"path": "m.onnx"}}
    for hooks, expected in (([{"url": "ftp://h/x?key=abcdef"}], "use http:// or https://"),
                            ([{"url": "http://h/1", "name": "x"}, {"url": "http://h/2", "name": "x"}], "named 'x'"),
                            ([{"url": "http://h/1", "on": ["crossing"]}], "webhooks.0.on.0")):
        with pytest.raises(ConfigError, match=re.escape(expected)) as err:
            parse_config({**base, "output": {"webhooks": hooks}}, source="c.yaml")
        assert "abcdef" not in str(err.value)
    with pytest.raises(ConfigError, match="not mqtts://"):
        parse_config({**base, "output": {"mqtt": {"url": "mqtt://h", "tls": {"insecure": True}}}}, source="c.yaml")
    # A certificate file that is not there: a config error naming it, at start (not a retry loop).
    with pytest.raises(ConfigError, match=r"output.mqtt.tls: cannot load ca=/nonexistent/ca.pem: No such file"):
        mqtt_sink("mqtts://127.0.0.1:1", tls=MqttTlsConfig(ca=Path("/nonexistent/ca.pem")))

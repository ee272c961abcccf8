"""MQTT output (paho-mqtt 2.x): every event, per-camera state, and the worker's availability.

Topics (`p` = `output.mqtt.topic_prefix`):
- `p/<camera>/events`: one message per event, QoS 1, not retained; the payload is the event's JSONL record
  (the same JSON text as the line in `<camera>.events.jsonl`, `id` and `run` included).
- `p/<camera>/state`: retained, QoS 1: the camera's last frame, objects in it, and the counts since the
  worker started (crossings per line and direction, tracks inside each zone), refreshed after every batch
  with events and every `state_interval_s`; an empty retained message clears it when the camera is removed.
- `p/availability`: retained `online` once connected; `offline` at a clean stop, and as the broker's last
  will when the worker dies or loses the connection.

The network runs on paho's own thread: `write_events` only queues, so the sink thread never waits on the
broker. A broker that is down (at start or later) costs one WARNING; paho reconnects in the background with
backoff. Events are held until the broker acknowledges them (PUBACK): up to `buffer` unacknowledged events,
newer ones beyond that are dropped and counted (`dropped`); delivery is at-least-once (a connection lost
between the send and its PUBACK sends it again). State is not published while disconnected (only the latest
matters): every camera's state is sent again after each reconnect.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from rtsp_worker.config import ConfigError, MqttConfig
from rtsp_worker.redact import mask_url, register_secret, register_url, url_host_port
from rtsp_worker.sinks import Sink, SinkCounters
from rtsp_worker.sinks.lines import record_json
from rtsp_worker.sinks.run import run_id
from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.types import Event, FrameResult

log = logging.getLogger(__name__)

_EVENT, _OTHER = 1, 0  # kinds of published messages, for the delivery count


@dataclass
class _CameraState:
    frame: int = -1
    ts: float = 0.0
    objects: int = 0
    events: int = 0
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    zones: dict[str, int] = field(default_factory=dict)
    published: float = -1e18  # time.monotonic() of the last state message
    dirty: bool = True

    def payload(self, camera: str, run: str) -> str:
        return json.dumps({"camera": camera, "run": run, "frame": self.frame, "ts": round(self.ts, 6),
                           "objects": self.objects, "events": self.events, "lines": self.lines,
                           "zones": self.zones}, separators=(",", ":"))


class MqttSink(Sink):
    """Publishes events and per-camera state to an MQTT broker; never blocks on it."""

    name = "mqtt"
    wants_images = False

    def __init__(self, cfg: MqttConfig, run: str | None = None, retry_initial_s: float = 1.0,
                 retry_max_s: float = 30.0, close_timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.run = run or run_id()
        register_url(cfg.url)
        if cfg.password is not None:
            register_secret(cfg.password.get_secret_value())
        self.safe_url = mask_url(cfg.url)
        self.prefix = cfg.topic_prefix
        self.availability = f"{self.prefix}/availability"
        self.close_timeout_s = close_timeout_s
        self.delivered = 0  # events the broker acknowledged
        self.dropped = 0  # events refused because `buffer` were unacknowledged, or left at close
        self.failed = 0  # events paho refused to send (payload too large, ...)
        self.errors = 0  # refused connections (bad credentials, TLS) and refused publishes
        self.nonfinite = 0
        self._states: dict[str, _CameraState] = {}
        self._connected = threading.Event()
        self._resync = False  # set on (re)connect: every camera's state is published again
        self._down_logged = False
        self._closing = False
        self._lock = threading.Lock()  # the delivery book-keeping below; never held while calling paho
        self._pending: dict[int, int] = {}  # mid -> kind, published and not acknowledged yet
        self._early: set[int] = set()  # acknowledged before `publish` returned its mid
        self._unacked_events = 0
        self._throttle = ErrorThrottle(log)
        # The paho client, public for diagnosis (its socket, its state); the sink alone publishes through it.
        self.client = self._make_client(retry_initial_s, retry_max_s)
        host, port = url_host_port(cfg.url)
        tls = urlsplit(cfg.url).scheme.lower() == "mqtts"
        self.client.connect_async(host, int(port) if port else (8883 if tls else 1883), keepalive=30)
        self.client.loop_start()

    def _make_client(self, retry_initial_s: float, retry_max_s: float) -> mqtt.Client:
        cfg = self.cfg
        # Unique per client: a broker disconnects the older of two clients with one id (session takeover).
        client_id = f"rtsp-worker-{self.run}-{secrets.token_hex(2)}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=True)
        parts = urlsplit(cfg.url)
        username = cfg.username or (parts.username and unquote(parts.username))
        password = cfg.password.get_secret_value() if cfg.password is not None else (
            parts.password and unquote(parts.password))
        if username or password:
            client.username_pw_set(username or "", password or None)
        if parts.scheme.lower() == "mqtts":
            tls = cfg.tls
            insecure = tls is not None and tls.insecure
            files = {"ca": tls.ca, "cert": tls.cert, "key": tls.key} if tls is not None else {}
            try:
                client.tls_set(ca_certs=str(tls.ca) if tls and tls.ca else None,
                               certfile=str(tls.cert) if tls and tls.cert else None,
                               keyfile=str(tls.key) if tls and tls.key else None,
                               cert_reqs=ssl.CERT_NONE if insecure else ssl.CERT_REQUIRED)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                named = ", ".join(f"{k}={v}" for k, v in files.items() if v is not None) or "the system's CAs"
                raise ConfigError(f"output.mqtt.tls: cannot load {named}: {getattr(e, 'strerror', None) or e}"
                                  ) from None
            if insecure:
                client.tls_insecure_set(True)
                log.warning("mqtt %s: tls.insecure: the broker's certificate and host name are not checked",
                            self.safe_url)
        client.will_set(self.availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(retry_initial_s, retry_max_s)  # type: ignore[arg-type] - floats work
        client.max_inflight_messages_set(100)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        return client

    # -- paho's thread --------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.errors += 1
            hint = ""
            if reason.value in (4, 5, 134, 135):  # bad user name or password / not authorized
                hint = " (check output.mqtt.username and password)"
            self._throttle.error(f"mqtt {self.safe_url}: the broker refused the connection: {reason}{hint}; "
                                 "retrying", key="refused")
            return
        self._connected.set()
        if self._down_logged:
            log.info("mqtt %s: connected (%d events waiting to be sent)", self.safe_url, self._unacked_events)
        else:
            log.info("mqtt %s: connected", self.safe_url)
        self._down_logged = False
        self._resync = True
        self._publish(self.availability, "online", retain=True)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # Called inside paho's `except OSError:` around the connect: the exception says why.
        err = sys.exc_info()[1]
        why = f"{type(err).__name__}: {err}" if err is not None else "connection failed"
        if isinstance(err, ssl.SSLError):
            self.errors += 1
            self._throttle.error(f"mqtt {self.safe_url}: TLS handshake failed: {why} (check output.mqtt.tls)",
                                 key="tls")
        elif not self._down_logged:
            self._down_logged = True
            log.warning("mqtt %s: cannot connect (%s); retrying in the background, holding up to %d events",
                        self.safe_url, why, self.cfg.buffer)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and not self._closing:
            self._down_logged = True
            log.warning("mqtt %s: connection lost (%s); reconnecting, holding up to %d events", self.safe_url,
                        reason, self.cfg.buffer)

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        with self._lock:
            kind = self._pending.pop(mid, None)
            if kind is None:
                self._early.add(mid)
                return
            self._acked(kind, reason)

    def _acked(self, kind: int, reason: Any) -> None:
        if kind == _EVENT:
            self._unacked_events -= 1
            if getattr(reason, "is_failure", False):  # MQTT 5 brokers may refuse one message
                self.failed += 1
            else:
                self.delivered += 1

    # -- the sink thread ------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: str, retain: bool = False, kind: int = _OTHER) -> bool:
        """Queue one QoS 1 message with paho (sent now, or after the reconnect); False if refused."""
        try:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
        except (ValueError, RuntimeError) as e:  # payload too large, topic invalid
            if kind == _EVENT:
                self.failed += 1
            self.errors += 1
            self._throttle.error(f"mqtt {self.safe_url}: publish to {topic} refused: {e}")
            return False
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: kept, sent on reconnect
            if kind == _EVENT:
                self.failed += 1
            self.errors += 1
            self._throttle.error(f"mqtt {self.safe_url}: publish to {topic} refused: {mqtt.error_string(info.rc)}")
            return False
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                if kind == _EVENT:
                    self.delivered += 1
            else:
                self._pending[info.mid] = kind
                if kind == _EVENT:
                    self._unacked_events += 1
        return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def buffered(self) -> int:
        """Events published and not yet acknowledged by the broker."""
        return self._unacked_events

    def topic(self, camera: str, what: str) -> str:
        return f"{self.prefix}/{camera}/{what}"

    def write_events(self, events: Sequence[Event]) -> None:
        for e in events:
            st = self._state(e.camera)
            st.events += 1
            st.dirty = True
            if e.rule:  # loiter, crowded, cleared, speeding: published, but not crossings or occupancy
                pass
            elif e.kind == "line":
                per_line = st.lines.setdefault(e.name, {})
                per_line[e.direction] = per_line.get(e.direction, 0) + 1
            elif e.kind == "zone":
                st.zones[e.name] = max(0, st.zones.get(e.name, 0) + (1 if e.direction == "enter" else -1))
            if self._unacked_events >= self.cfg.buffer:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning("mqtt %s: %d events unacknowledged (output.mqtt.buffer): %d dropped so far",
                                self.safe_url, self.cfg.buffer, self.dropped)
                continue
            payload, bad = record_json({"run": self.run, **e.to_json_dict()})
            self.nonfinite += bad
            self._publish(self.topic(e.camera, "events"), payload, kind=_EVENT)

    def write(self, results: Sequence[FrameResult]) -> None:
        for r in results:
            st = self._state(r.camera)
            st.frame, st.ts, st.objects = r.frame, r.ts, len(r.objects)
        if not self._connected.is_set():
            return  # state is latest-value only: sent again on reconnect, never buffered
        now = time.monotonic()
        resync, self._resync = self._resync, False
        cameras = self._states if resync else {r.camera for r in results}
        for cam in cameras:
            st = self._states[cam]
            if resync or st.dirty or now - st.published >= self.cfg.state_interval_s:
                st.dirty, st.published = False, now
                self._publish(self.topic(cam, "state"), st.payload(cam, self.run), retain=True)

    def _state(self, camera: str) -> _CameraState:
        st = self._states.get(camera)
        if st is None:
            st = self._states[camera] = _CameraState()
        return st

    def close_camera(self, camera: str) -> None:
        """The camera was removed: its retained state is cleared (an empty retained message deletes it)."""
        self._states.pop(camera, None)
        self._publish(self.topic(camera, "state"), "", retain=True)

    def counters(self) -> SinkCounters:
        return SinkCounters(dropped=self.dropped, failed=self.failed, errors=self.errors, buffered=self.buffered,
                            delivered=self.delivered)

    def close(self) -> None:
        """`offline`, then wait (bounded) for the broker to acknowledge what is queued, then disconnect."""
        self._closing = True
        self._throttle.flush()
        connected = self._connected.is_set()
        if connected:
            self._publish(self.availability, "offline", retain=True)
            deadline = time.monotonic() + self.close_timeout_s
            while self._pending and self._connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.02)
        left = self._unacked_events
        if left:
            self.dropped += left
            log.error("mqtt %s: %d events were not acknowledged by the broker before exit", self.safe_url, left)
        self.client.disconnect()
        self.client.loop_stop()

"""Prometheus endpoint for one pipeline, on its own CollectorRegistry (never the process-global one).

Per-camera counters and the state are read from the pipeline's status snapshot at scrape time (nothing to
update on the hot path); latency and batch histograms are fed by a `Pipeline.on_batch` subscription, one
call per batch.
GPU utilization and memory come from NVML when `pynvml` (nvidia-ml-py) imports and initialises; otherwise
those series are simply absent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rtsp_worker.service.server import HttpServer, Request, Response
from rtsp_worker.sources.state import CameraState

if TYPE_CHECKING:
    from rtsp_worker.evidence import EvidenceStatus
    from rtsp_worker.pipeline import Pipeline
    from rtsp_worker.status import AnalyticsStatus, BatchOutput

log = logging.getLogger(__name__)

NS = "rtsp_worker"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)

# (metric suffix, CameraStats attribute, help)
_CAMERA_COUNTERS = (
    ("frames_decoded", "decoded", "Frames decoded."),
    ("frames_processed", "processed", "Frames that came out of the pipeline (sent to the sinks)."),
    ("frames_dropped", "dropped", "Decoded frames replaced by a newer one before inference took them."),
    ("reconnects", "reconnects", "Connection attempts after the first one (successful or not)."),
    ("stalls", "stalls", "Times a streaming camera delivered no frame for source.stall_timeout_s."),
    ("decode_errors", "decode_errors", "Packets the decoder rejected."),
    ("frames_gated", "gated", "Processed frames the motion gate kept from the detector (also frames_processed)."),
    ("frames_inferred", "inferred", ("Processed frames the detector ran on (the others: infer_interval, "
                                     "priorities under overload, the motion gate).")),
)


def pci_bus_id(index: int) -> str:
    """The PCI bus id of CUDA device `index` in NVML's form (domain:bus:device.function, hexadecimal)."""
    import torch

    p = torch.cuda.get_device_properties(index)
    return f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"


class Nvml:
    """GPU utilization and memory through NVML; `available` is False when NVML cannot be used."""

    def __init__(self, index: int) -> None:
        """`index`: the CUDA ordinal (torch's). NVML numbers GPUs its own way (PCI order, all of them), while
        CUDA's order follows CUDA_DEVICE_ORDER and CUDA_VISIBLE_DEVICES: the two meet on the PCI bus id."""
        self.available = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id(index))
            self.available = True
        except Exception as e:  # noqa: BLE001 - no pynvml, no driver, no GPU at that bus id: no GPU metrics
            log.debug("NVML unavailable (%s): no GPU metrics", e)

    def sample(self) -> tuple[float, float, float] | None:
        """(utilization %, memory used bytes, memory total bytes), or None if the query fails."""
        try:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
            return float(util.gpu), float(mem.used), float(mem.total)
        except Exception:  # noqa: BLE001 - a failed query leaves the GPU series out of this scrape
            return None


class _StatsCollector(Collector):
    """Builds the per-camera and pipeline counters from the pipeline's own counters on each scrape."""

    def __init__(self, pipeline: Pipeline, nvml: Nvml | None) -> None:
        self.p = pipeline
        self.nvml = nvml

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        status = self.p.status()  # one snapshot: cameras come and go, a removed camera's series disappear
        cams = status.cameras
        for suffix, attr, doc in _CAMERA_COUNTERS:
            fam = CounterMetricFamily(f"{NS}_{suffix}", doc, labels=["camera"])
            for c in cams:
                fam.add_metric([c.name], getattr(c, attr))
            yield fam
        state = GaugeMetricFamily(f"{NS}_camera_state", "1 for the camera's current state, 0 for the others.",
                                  labels=["camera", "state"])
        for c in cams:
            for s in CameraState:
                state.add_metric([c.name, s.value], 1.0 if s == c.state else 0.0)
        yield state
        failures = GaugeMetricFamily(f"{NS}_camera_consecutive_failures", "Failed connects in a row.",
                                     labels=["camera"])
        skipping = GaugeMetricFamily(f"{NS}_camera_skipping_nonref", "1 while the decoder skips non-reference "
                                     "frames (the pipeline takes under 1 in 4 of them; source.skip_nonref).",
                                     labels=["camera"])
        interval = GaugeMetricFamily(f"{NS}_camera_effective_interval", "infer_interval times the overload "
                                     "multiplier (priorities: low cameras first).", labels=["camera"])
        for c in cams:
            interval.add_metric([c.name], c.infer_interval * c.multiplier)
        yield interval
        if status.capacity_fps is not None:
            yield GaugeMetricFamily(f"{NS}_capacity_fps", "Inferred frames per second the engine delivers "
                                    "(measured on real batches; from its warm-up runs before the first).",
                                    value=status.capacity_fps)
            yield GaugeMetricFamily(f"{NS}_headroom_fps", "capacity_fps minus every camera's full target rate.",
                                    value=status.headroom_fps)
            yield GaugeMetricFamily(f"{NS}_capacity_measured", "1 once capacity_fps rests on real batches, 0 while "
                                    "it is the engine's warm-up estimate.",
                                    value=1.0 if status.capacity_source == "batches" else 0.0)
        motion = GaugeMetricFamily(f"{NS}_camera_motion", "1 while the motion gate sees motion in the camera's "
                                   "newest frame (0 also for cameras without motion.enabled).", labels=["camera"])
        for c in cams:
            failures.add_metric([c.name], c.failures)
            skipping.add_metric([c.name], 1.0 if c.skipping_nonref else 0.0)
            motion.add_metric([c.name], 1.0 if c.motion else 0.0)
        yield failures
        yield skipping
        yield motion
        yield CounterMetricFamily(f"{NS}_batches", "Batches run through the pipeline.", value=status.batches)
        yield CounterMetricFamily(f"{NS}_removed_camera_threads_left", "Removed cameras whose source thread did not "
                                  "end within its timeouts (left behind, still connecting or reading).",
                                  value=status.lingering_sources)
        dropped = CounterMetricFamily(f"{NS}_sink_dropped", "Results a sink lost: its queue was full (queue) or "
                                      "its own buffer overflowed (buffer) or its writes failed (write).",
                                      labels=["sink", "where"])
        errors = CounterMetricFamily(f"{NS}_sink_errors", "Failed sink writes (batches).", labels=["sink"])
        buffered = GaugeMetricFamily(f"{NS}_sink_buffered", "Entries a sink holds while its backend is down.",
                                     labels=["sink"])
        for sink in status.sinks:
            dropped.add_metric([sink.name, "queue"], sink.queue_dropped)
            if sink.buffered is not None:
                dropped.add_metric([sink.name, "buffer"], sink.buffer_dropped)
                buffered.add_metric([sink.name], sink.buffered)
            # Entries lost to failed writes (disk full, Redis error replies, a write that raised).
            dropped.add_metric([sink.name, "write"], sink.write_failed)
            errors.add_metric([sink.name], sink.errors)
        yield dropped
        yield errors
        # Entries the backend acknowledged (MQTT PUBACK, webhook 2xx), for sinks that count them; a webhook's
        # sink name is `webhook:<name or index>`, never its URL (a secret).
        delivered = CounterMetricFamily(f"{NS}_sink_delivered", "Entries the sink's backend acknowledged.",
                                        labels=["sink"])
        for sink in status.sinks:
            if sink.delivered is not None:
                delivered.add_metric([sink.name], sink.delivered)
        yield delivered
        yield CounterMetricFamily(f"{NS}_nonfinite_detections", "Detections with NaN/Inf boxes or scores, dropped "
                                  "before the tracker.", value=status.nonfinite)
        yield buffered
        if status.analytics is not None:
            yield from _analytics_metrics(status.analytics)
        if status.evidence is not None:
            yield from _evidence_metrics(status.evidence)
        if self.nvml is not None and self.nvml.available:
            sample = self.nvml.sample()
            if sample is not None:
                util, used, total = sample
                yield GaugeMetricFamily(f"{NS}_gpu_utilization_percent", "GPU busy time (NVML).", value=util)
                yield GaugeMetricFamily(f"{NS}_gpu_memory_used_bytes", "GPU memory in use (NVML).", value=used)
                yield GaugeMetricFamily(f"{NS}_gpu_memory_total_bytes", "GPU memory (NVML).", value=total)


def _evidence_metrics(e: EvidenceStatus) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    yield CounterMetricFamily(f"{NS}_clips_written", "Event clips finalized.", value=e.clips)
    yield CounterMetricFamily(f"{NS}_clip_bytes", "Bytes of the event clips finalized.", value=e.clip_bytes)
    yield CounterMetricFamily(f"{NS}_snapshots_written", "Snapshots (JPEG) written.", value=e.snapshots)
    dropped = CounterMetricFamily(f"{NS}_evidence_dropped", "Clips or snapshots not made, by reason (disk_full, "
                                  "write_error, codec, no_stream, no_keyframe, no_detection).", labels=["reason"])
    for reason, n in e.dropped:
        dropped.add_metric([reason], n)
    yield dropped
    yield CounterMetricFamily(f"{NS}_evidence_deleted", "Clips and snapshots deleted by retention.", value=e.deleted)
    yield GaugeMetricFamily(f"{NS}_evidence_disk_full", "1 while evidence is stopped by a full disk.",
                            value=int(e.disk_full))
    yield GaugeMetricFamily(f"{NS}_snapshots_queued", "Snapshots waiting for their JPEG encode.", value=e.queued)
    yield CounterMetricFamily(f"{NS}_snapshot_encode_seconds", "Time spent encoding snapshots.",
                              value=e.encode_ms / 1e3)


def _analytics_metrics(a: AnalyticsStatus) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Line crossings (totals) and zone occupancy (now), per camera and class (issue 15)."""
    crossings = CounterMetricFamily(f"{NS}_line_crossings", "Tracks that crossed a counting line.",
                                    labels=["camera", "line", "direction", "class"])
    for (camera, line, direction, cls), n in a.crossings:
        crossings.add_metric([camera, line, direction, cls], n)
    yield crossings
    objects = GaugeMetricFamily(f"{NS}_zone_objects", "Tracks inside a zone now.",
                                labels=["camera", "zone", "class"])
    for z in a.zones:
        objects.add_metric([z.camera, z.zone, z.class_name], z.objects)
    yield objects
    rules = CounterMetricFamily(f"{NS}_rule_events", "Rule events: loiter, crowded, cleared, speeding.",
                                labels=["camera", "name", "rule"])
    for (camera, name, rule), n in a.rules:
        rules.add_metric([camera, name, rule], n)
    yield rules
    crowded = GaugeMetricFamily(f"{NS}_zone_crowded", "1 while a zone with max_objects is crowded.",
                                labels=["camera", "zone"])
    for camera, zone, on in a.crowded:
        crowded.add_metric([camera, zone], 1.0 if on else 0.0)
    yield crowded


class PipelineMetrics:
    """The registry and the batch listener; `serve_metrics` puts them behind an HTTP endpoint."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.registry = CollectorRegistry(auto_describe=True)
        dev = pipeline.work_device
        nvml = Nvml(dev.index or 0) if dev.type == "cuda" else None
        self.registry.register(_StatsCollector(pipeline, nvml))
        self.latency = Histogram(f"{NS}_end_to_end_latency_seconds", "Decode to result ready, per frame.",
                                 ["camera"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self.batch_size = Histogram(f"{NS}_batch_size", "Frames per batch.", registry=self.registry,
                                    buckets=BATCH_BUCKETS)
        self.stage = Histogram(f"{NS}_stage_seconds", "Time per batch in each stage.", ["stage"],
                               registry=self.registry, buckets=STAGE_BUCKETS)
        # Label children resolved once: the listener runs on the finish thread for every batch.
        self._cam_latency: dict[str, object] = {}  # by camera name; emptied when cameras change
        for c in pipeline.status().cameras:
            self.latency.labels(c.name)  # every camera's series exists from the start (count 0)
        self._unsubscribe = [pipeline.on_camera(self.on_camera)]
        self._stages = {s: self.stage.labels(s) for s in ("preprocess", "inference", "postprocess", "tracker")}

    def on_batch(self, out: BatchOutput) -> None:
        r = out.report
        self.batch_size.observe(r.size)
        if r.inferred:
            self._stages["preprocess"].observe(r.preprocess_ms / 1e3)
            self._stages["inference"].observe(r.infer_ms / 1e3)
            self._stages["postprocess"].observe(r.postprocess_ms / 1e3)
        self._stages["tracker"].observe(r.track_ms / 1e3)
        for cam, seconds in r.latencies:
            child = self._cam_latency.get(cam)
            if child is None:
                child = self._cam_latency[cam] = self.latency.labels(cam)
            child.observe(seconds)  # type: ignore[attr-defined]

    def listen_batches(self) -> None:
        self._unsubscribe.append(self.pipeline.on_batch(self.on_batch))

    def close(self) -> None:
        """Stop listening to the pipeline."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def on_camera(self, event: str, name: str) -> None:
        """Called on the inference thread between batches when the camera set changes."""
        self._cam_latency.clear()
        if event == "added":
            self.latency.labels(name)
        elif event == "removed":
            try:
                self.latency.remove(name)
            except KeyError:  # no batch of it was ever observed
                pass


class MetricsServer:
    """`/metrics` on the worker's HTTP server (`server.HttpServer`); other endpoints register on `.http`.

    `close()` stops the server and detaches the listener.
    """

    def __init__(self, metrics: PipelineMetrics, host: str, port: int, http: HttpServer | None = None) -> None:
        self.metrics = metrics
        self.http = http if http is not None else HttpServer(host, port)  # given: already started (health)
        self.http.route("GET", "/metrics", self._scrape)
        metrics.registry.register(self.http.collector())
        if http is None:
            self.http.start()
        self.host = host
        self.port = self.http.port
        metrics.listen_batches()
        self._closed = threading.Event()
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def _scrape(self, _req: Request) -> Response:
        return Response(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.metrics.close()
        self.http.close()


def serve_metrics(pipeline: Pipeline, host: str = "127.0.0.1", port: int = 0,
                  http: HttpServer | None = None) -> MetricsServer:
    """Serve the pipeline's metrics at http://host:port/metrics (port 0: any free port, see `.port`).

    `http`: an already started server to add the route to (the runner starts it early for /healthz).
    """
    return MetricsServer(PipelineMetrics(pipeline), host, port, http)

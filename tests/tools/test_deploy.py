"""deploy/: the Kubernetes manifests rendered and loaded into the `kubernetes` client's models (unknown fields
and wrong types fail), the pods' shards from their host names, the compose file and the Dockerfile (its CUDA
major against pyproject.toml's extras, NVIDIA's index for TensorRT, the engine directory owned by its user)."""

from __future__ import annotations

import datetime
import re
import runpy
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client  # the test extra: a missing client fails the run, never skips it

from rtsp_worker.config import parse_config
from rtsp_worker.service.sharding import SHARDS_ENV, Shard, parse_shard, shard_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PYPROJECT = DEPLOY.parent / "pyproject.toml"
render = runpy.run_path(str(DEPLOY / "render.py"))["render"]
KINDS = {("v1", "ConfigMap"): "V1ConfigMap", ("v1", "Service"): "V1Service",
         ("apps/v1", "StatefulSet"): "V1StatefulSet", ("apps/v1", "Deployment"): "V1Deployment"}
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def check(data: Any, type_name: str, where: str) -> None:
    """Strictly check `data` against the client's model `type_name`: the client's own deserializer ignores
    unknown keys and coerces types, so this walks its `openapi_types` / `attribute_map` itself."""
    m = re.fullmatch(r"(?:List|list)\[(.+)\]", type_name)
    if m:
        assert isinstance(data, list), f"{where}: expected a list, got {type(data).__name__}"
        for i, item in enumerate(data):
            check(item, m.group(1), f"{where}[{i}]")
        return
    m = re.fullmatch(r"(?:Dict|dict)\[?\(?str, (.+?)[\])]", type_name)
    if m:
        assert isinstance(data, dict), f"{where}: expected a mapping, got {type(data).__name__}"
        for k, v in data.items():
            check(v, m.group(1), f"{where}.{k}")
        return
    if type_name == "object":
        return  # IntOrString and free-form fields
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(data, bool))
        assert ok, f"{where}: expected {type_name}, got {data!r}"
        return
    if type_name in ("datetime", "date"):
        assert isinstance(data, (str, datetime.date)), f"{where}: expected a timestamp"
        return
    model = getattr(client, type_name)
    assert isinstance(data, dict), f"{where}: expected a {type_name} mapping, got {data!r}"
    by_json = {v: k for k, v in model.attribute_map.items()}
    for key, value in data.items():
        assert key in by_json, f"{where}: unknown field {key!r} for {type_name}"
        check(value, model.openapi_types[by_json[key]], f"{where}.{key}")


def load(text: str) -> dict[str, Any]:
    """Each document checked strictly, then built as the client's model (required fields enforced)."""
    api = client.ApiClient()
    out = {}
    for doc in yaml.safe_load_all(text):
        type_name = KINDS[(doc["apiVersion"], doc["kind"])]
        check(doc, type_name, f"{doc['kind']}/{doc['metadata']['name']}")
        obj = api._ApiClient__deserialize(doc, type_name)
        out[f"{doc['kind']}/{doc['metadata']['name']}"] = obj
    return out


@pytest.fixture(scope="module")
def fleet() -> dict[str, Any]:
    return load(render(2, "registry.example/rtsp-worker:1.0", (DEPLOY / "cameras.example.yaml").read_text(),
                       "video"))


def test_manifests_load_into_the_client_models(fleet):
    assert set(fleet) == {"ConfigMap/rtsp-worker-cameras", "Service/rtsp-worker", "StatefulSet/rtsp-worker",
                          "Deployment/redis", "Service/redis"}
    sts = fleet["StatefulSet/rtsp-worker"]
    assert isinstance(sts, client.V1StatefulSet) and sts.metadata.namespace == "video"
    pod = sts.spec.template
    c = pod.spec.containers[0]
    assert c.resources.limits["nvidia.com/gpu"] == "1" and c.resources.requests["nvidia.com/gpu"] == "1"
    assert c.liveness_probe.http_get.path == "/healthz" and c.readiness_probe.http_get.path == "/readyz"
    assert c.startup_probe.http_get.path == "/healthz"
    assert pod.metadata.annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "9100",
                                        "prometheus.io/path": "/metrics"}
    assert c.args == ["run", "/config/cameras.yaml", "--shard", "auto"]
    assert {v.name: v.config_map.name for v in pod.spec.volumes if v.config_map} == {"cameras": "rtsp-worker-cameras"}
    assert fleet["Service/rtsp-worker"].spec.cluster_ip == "None" and sts.spec.service_name == "rtsp-worker"


def test_camera_list_in_the_configmap_is_a_valid_config(fleet, monkeypatch):
    monkeypatch.setenv("GATE_PASSWORD", "s3cret")
    monkeypatch.setenv("VIEW_TOKEN", "view-s3cret-token")
    raw = yaml.safe_load(fleet["ConfigMap/rtsp-worker-cameras"].data["cameras.yaml"])
    cfg = parse_config(raw, source="configmap")
    assert cfg.output.redis is not None and cfg.output.redis.url == "redis://redis:6379/0"  # the Service's name
    assert cfg.metrics.port == 9100 and cfg.metrics.host == "0.0.0.0"  # the probes' and scrape port
    assert cfg.model.build_engine and str(cfg.model.path).startswith("/engines/")  # built at start, cached


def test_two_replicas_pods_derive_shards_0_2_and_1_2(fleet, monkeypatch):
    monkeypatch.setenv("GATE_PASSWORD", "s3cret")
    monkeypatch.setenv("VIEW_TOKEN", "view-s3cret-token")
    sts = fleet["StatefulSet/rtsp-worker"]
    env = {e.name: e.value for e in sts.spec.template.spec.containers[0].env}
    assert int(env[SHARDS_ENV]) == sts.spec.replicas == 2
    cfg = parse_config(yaml.safe_load(fleet["ConfigMap/rtsp-worker-cameras"].data["cameras.yaml"]))
    seen = []
    for ordinal in range(sts.spec.replicas):
        # What Kubernetes sets in each pod: HOSTNAME = <statefulset>-<ordinal>.
        monkeypatch.setenv("HOSTNAME", f"{sts.metadata.name}-{ordinal}")
        monkeypatch.setenv(SHARDS_ENV, env[SHARDS_ENV])
        shard = parse_shard("auto")
        assert shard == Shard(ordinal, 2)
        seen += [c.name for c in shard_config(cfg, shard).cameras]
    assert sorted(seen) == sorted(c.name for c in cfg.cameras)  # the two pods together run every camera once


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("podManagementPolicy: Parallel", "podManagementPolicy: Parallel\n  replicaz: 2"),
     "unknown field 'replicaz'"),
    (lambda t: t.replace("periodSeconds: 15", "periodSeconds: fifteen"), "expected int"),
    (lambda t: t.replace('containerPort: 9100', 'containerPort: "9100"'), "expected int"),
])
def test_the_check_rejects_unknown_fields_and_wrong_types(edit, message):
    text = edit(render(2, "img:1", "cameras: []\n"))
    with pytest.raises(AssertionError, match=message):
        load(text)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="replicas"):
        render(0, "img:1", "")
    with pytest.raises(ValueError, match="namespace"):
        render(1, "img:1", "", "Bad_NS")


def test_compose_and_dockerfile():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    worker = compose["services"]["rtsp-worker"]
    assert set(compose["services"]) == {"rtsp-worker", "redis"}
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "9100:9100" in worker["ports"] and "/healthz" in " ".join(worker["healthcheck"]["test"])
    docker = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", docker, re.MULTILINE)
    runs = " ".join(line for line in docker.splitlines() if line.startswith("RUN"))
    # The engine is built when a container starts on its GPU, never while building the image.
    assert "build-engine" not in runs and ".engine" not in docker.replace("engines", "")
    assert "COPY models/synth_det.onnx" in docker


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def entrypoint_engine_dir() -> str:
    """Where deploy/entrypoint.sh copies the ONNX and the engine is built (ENGINE_DIR's default)."""
    m = re.search(r"ENGINE_DIR=\$\{ENGINE_DIR:-(\S+?)\}", (DEPLOY / "entrypoint.sh").read_text())
    assert m, "deploy/entrypoint.sh no longer sets ENGINE_DIR"
    return m.group(1)


def image_user() -> tuple[int, int]:
    users = [args for word, args in dockerfile() if word == "USER"]
    assert len(users) == 1, users
    uid, _, gid = users[0].partition(":")
    return int(uid), int(gid or uid)


def test_image_cuda_major_matches_the_cuda_13_extras():
    froms = [args for word, args in dockerfile() if word == "FROM"]
    assert len(froms) == 1, froms
    # NVIDIA's naming: nvidia/cuda:<major>.<minor>.<patch>-cudnn-runtime-ubuntu<release>
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", froms[0])
    assert m, froms[0]
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    # cupy-cuda13x, tensorrt-cu13: the CUDA major each GPU package is built for
    majors = {}
    for req in extras["gpu"] + extras["tensorrt"]:
        found = re.match(r"[A-Za-z0-9_.-]*?-cu(?:da)?(\d+)x?\b", req)
        if found:
            majors[req] = int(found.group(1))
    assert {r.split(">")[0] for r in majors} == {"cupy-cuda13x", "tensorrt-cu13"}, majors
    assert set(majors.values()) == {int(m.group(1))} == {13}, (froms[0], majors)


def test_tensorrt_extra_is_installed_from_nvidias_index():
    index = re.search(r"--extra-index-url (\S+)", PYPROJECT.read_text())  # the comment on the extra
    assert index, "pyproject.toml no longer says where the TensorRT libraries come from"
    installs = [shlex.split(args) for word, args in dockerfile() if word == "RUN" and "pip install" in args]
    trt = [argv for argv in installs if any(a.startswith(".[") and "tensorrt" in a for a in argv)]
    assert len(trt) == 1, installs
    argv = trt[0][:trt[0].index("&&")] if "&&" in trt[0] else trt[0]
    assert "--extra-index-url" in argv and argv[argv.index("--extra-index-url") + 1] == index.group(1), argv


def test_engine_dir_is_created_and_owned_by_the_image_user_before_user():
    # The directory the entrypoint copies the ONNX into, and the example config's model lives in.
    engine_dir = entrypoint_engine_dir()
    example = yaml.safe_load((DEPLOY / "cameras.example.yaml").read_text())
    assert str(Path(example["model"]["path"]).parent) == engine_dir
    steps = dockerfile()
    uid, gid = image_user()
    assert uid == 1000  # not root
    where = {word: i for i, (word, _) in reversed(list(enumerate(steps)))}  # first occurrence of each
    made = owned = None
    for i, (word, args) in enumerate(steps):
        if word != "RUN":
            continue
        for cmd in args.split("&&"):
            argv = shlex.split(cmd)
            if argv[:1] == ["mkdir"] and engine_dir in argv:
                made = i if made is None else made
            if argv[:1] == ["chown"] and engine_dir in argv and f"{uid}:{gid}" in argv:
                owned = i if owned is None else owned
    assert made is not None and owned is not None, "the engine directory is not created and chowned"
    # Before USER (root may chown) and before VOLUME (later changes to a volume's directory are discarded).
    assert made <= owned < where["USER"] and owned < where["VOLUME"]
    volume = next(args for word, args in steps if word == "VOLUME")
    assert engine_dir in volume


def test_pods_mount_volumes_writable_by_the_image_user(fleet):
    pod = fleet["StatefulSet/rtsp-worker"].spec.template.spec  # strictly loaded: fsGroup is a known field
    assert isinstance(pod.security_context, client.V1PodSecurityContext)
    assert pod.security_context.fs_group == image_user()[1] == 1000
    mounts = {m.mount_path for m in pod.containers[0].volume_mounts}
    engine_dir = entrypoint_engine_dir()
    assert engine_dir in mounts

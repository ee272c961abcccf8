"""Which worker runs which camera: cost-weighted rendezvous hashing with bounded loads, no coordinator.

Every worker computes the same assignment from the camera names (and their costs, when the config gives
them) alone. Each camera ranks the shards by a hash of (camera name, shard index) -- rendezvous (highest
random weight) hashing -- and goes to the first shard in its ranking that still has room under a load cap
of `(1 + slack) x` the mean load; when none has room (a few very heavy cameras), to the least loaded one.
Cameras are placed heaviest first, so the cap is met by moving light cameras, never heavy ones.

Properties (tests/service/test_sharding.py checks them on 1000 random camera sets):
- deterministic, disjoint and complete;
- balanced: no shard carries more than `max((1 + slack) * mean, mean + heaviest camera)`;
- stable: going from N to N+1 shards moves about 1/(N+1) of the cameras plus a few that the cap pushes
  around (measured in the test; plain rendezvous hashing would move exactly the ones the new shard wins,
  but could not balance eight cameras over two workers).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rtsp_worker.config import CameraConfig, Config

DEFAULT_SLACK = 0.15
SHARDS_ENV = "RTSP_WORKER_SHARDS"  # --shard auto: N from this variable, K from the host name's ordinal


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` of `count` (0-based: a StatefulSet's pod ordinals are 0..N-1)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= K < N and N >= 1")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`"K/N"` -> Shard(K, N); `"auto"` -> from the host name's ordinal and $RTSP_WORKER_SHARDS."""
    if text.strip() == "auto":
        return shard_from_environment()
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"--shard {text!r}: expected K/N (e.g. 0/4) or auto")
    return Shard(int(m.group(1)), int(m.group(2)))


def shard_from_hostname(hostname: str, count: int) -> Shard:
    """A StatefulSet pod is named `<set>-<ordinal>`: pod `rtsp-worker-1` of 2 replicas runs shard 1/2."""
    m = re.search(r"-(\d+)$", hostname.split(".", 1)[0])
    if m is None:
        raise ValueError(f"host name {hostname!r} does not end in -<ordinal> (not a StatefulSet pod?)")
    return Shard(int(m.group(1)), count)


def shard_from_environment() -> Shard:
    raw = os.environ.get(SHARDS_ENV)
    if raw is None or not raw.strip().isdigit():
        raise ValueError(f"--shard auto: set {SHARDS_ENV} to the number of shards (the replica count), got {raw!r}")
    return shard_from_hostname(os.environ.get("HOSTNAME") or socket.gethostname(), int(raw))


def _score(name: str, shard: int) -> int:
    # A stable hash (never Python's per-process salted hash()): every worker must rank alike.
    digest = hashlib.blake2b(f"{name}\x00{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(name: str, count: int) -> list[int]:
    """The shards in this camera's order of preference."""
    return sorted(range(count), key=lambda s: _score(name, s), reverse=True)


def assign(names: Sequence[str], count: int, costs: Mapping[str, float] | None = None,
           slack: float = DEFAULT_SLACK) -> dict[str, int]:
    """camera name -> shard index, for `count` shards. `costs` (default 1 each) must be positive."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    if len(set(names)) != len(names):
        raise ValueError("camera names must be unique to be sharded")
    cost = {n: float(costs.get(n, 1.0)) if costs else 1.0 for n in names}
    bad = [n for n, c in cost.items() if not c > 0]
    if bad:
        raise ValueError(f"camera {bad[0]!r}: cost must be > 0, got {cost[bad[0]]}")
    cap = (1.0 + slack) * sum(cost.values()) / count
    load = [0.0] * count
    out: dict[str, int] = {}
    # Heaviest first; ties broken by the name's own hash so that the order does not follow the alphabet.
    for name in sorted(names, key=lambda n: (-cost[n], _score(n, -1))):
        prefs = ranking(name, count)
        target = next((s for s in prefs if load[s] + cost[name] <= cap), None)
        if target is None:
            target = min(prefs, key=lambda s: load[s])  # min() keeps the first (best ranked) among equals
        out[name] = target
        load[target] += cost[name]
    return out


def camera_costs(cameras: Sequence[CameraConfig]) -> dict[str, float]:
    """pixels x fps where the config gives `resolution` and `frame_rate`; the others weigh the known mean (or 1)."""
    known = {c.name: c.resolution[0] * c.resolution[1] * c.frame_rate for c in cameras
             if c.resolution is not None and c.frame_rate is not None}
    fill = sum(known.values()) / len(known) if known else 1.0
    return {c.name: known.get(c.name, fill) for c in cameras}


def config_assignment(cfg: Config, count: int) -> dict[str, int]:
    cams = cfg.enabled_cameras
    return assign([c.name for c in cams], count, camera_costs(cams))


def shard_config(cfg: Config, shard: Shard) -> Config:
    """The config with only the enabled cameras of `shard`; ValueError when the shard has none."""
    owner = config_assignment(cfg, shard.count)
    mine = [c for c in cfg.enabled_cameras if owner[c.name] == shard.index]
    if not mine:
        raise ValueError(f"shard {shard} has no cameras ({len(owner)} enabled cameras over {shard.count} "
                         "shards): use fewer shards")
    return cfg.model_copy(update={"cameras": mine})


def describe(cfg: Config, count: int) -> str:
    """The assignment as text, one block per shard with its cameras and its share of the load."""
    cams = cfg.enabled_cameras
    costs = camera_costs(cams)
    owner = assign([c.name for c in cams], count, costs)
    total = sum(costs.values())
    lines = []
    for k in range(count):
        names = [c.name for c in cams if owner[c.name] == k]
        load = sum(costs[n] for n in names)
        lines.append(f"shard {k}/{count}: {len(names)} cameras, load {load / total:.1%} "
                     f"(ideal {1 / count:.1%}): {', '.join(names) or '-'}")
    return "\n".join(lines)

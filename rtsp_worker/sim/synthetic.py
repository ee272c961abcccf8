"""Synthetic cameras with exact ground truth.

A scene is fully determined by its seed: a textured background with slow lighting drift, and objects of
three classes (person-, car- and bike-like sprites of varied size, colour and aspect) that enter and leave
the frame, move with their own speed and heading, pause, and occlude each other (nearer objects, lower
in the image, are drawn last). Rendering is vectorized numpy: each frame costs one pass over the
background plus one alpha blend per object over its own box.

Ground truth follows MOTChallenge: ``frame,id,left,top,w,h,1,class,visibility,-1`` with frames from 1,
boxes clipped to the frame, ``visibility`` the fraction of the object's pixels that are in the frame and
not hidden by a nearer object, and ``class`` the MOT17 code of the class (see `MOT_CLASS_IDS`).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

logger = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = ("person", "car", "bike")
# MOT17 class codes for the gt.txt class column (1 pedestrian, 3 car, 4 bicycle); index = detector class id.
MOT_CLASS_IDS: tuple[int, ...] = (1, 3, 4)

# Per class, for a 640x360 frame at 15 fps (scaled to other sizes/rates):
# (min height px, max height px, min aspect w/h, max aspect w/h, min speed px/frame, max speed px/frame)
_CLASS_GEOMETRY = {
    0: (34.0, 130.0, 0.30, 0.48, 0.4, 2.0),
    1: (26.0, 80.0, 1.70, 2.60, 2.0, 7.0),
    2: (26.0, 62.0, 1.25, 1.75, 1.2, 4.0),
}
_CLASS_WEIGHTS = np.array([0.45, 0.30, 0.25])


@dataclass(frozen=True, slots=True, eq=False)
class ObjectSpec:
    """One object of a scene: its look and its whole path."""

    track_id: int  # MOT id, from 1
    class_id: int  # index into CLASS_NAMES
    start_frame: int  # first frame (0-based) the object exists
    path: np.ndarray  # (T, 2) float32 top-left (x, y) of the sprite for frames start_frame .. start_frame+T-1
    sprite: np.ndarray  # (h, w, 4) float32: RGB in [0, 255] and alpha in [0, 1]
    tight: tuple[int, int, int, int]  # (x0, y0, x1, y1) of alpha > 0.5 inside the sprite, exclusive end

    @property
    def end_frame(self) -> int:
        """One past the last frame the object exists."""
        return self.start_frame + int(self.path.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class Scene:
    """Everything needed to render a sequence; `make_scene(seed, ...)` builds one deterministically."""

    seed: int
    width: int
    height: int
    fps: float
    frames: int
    background: np.ndarray  # (H, W, 3) float32 in [0, 255]
    light: np.ndarray  # (frames, 3) float32 per-channel gain (slow drift)
    light_wave: np.ndarray  # (frames, W) float32 horizontal light gradient that drifts across the frame
    noise: np.ndarray  # (4, H, W, 3) float32 sensor-noise bank, one picked per frame
    objects: tuple[ObjectSpec, ...]


# ----------------------------------------------------------------------------------------------- sprites


def _sdf_box(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, hw: float, hh: float, r: float
) -> np.ndarray:
    """Signed distance (pixels) to a rounded box; negative inside."""
    qx = np.abs(x - cx) - (hw - r)
    qy = np.abs(y - cy) - (hh - r)
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    inside = np.minimum(np.maximum(qx, qy), 0)
    return outside + inside - r


def _sdf_circle(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return np.hypot(x - cx, y - cy) - r


def _sdf_segment(x: np.ndarray, y: np.ndarray, a: tuple[float, float], b: tuple[float, float], r: float):
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
    return np.hypot(x - (ax + t * dx), y - (ay + t * dy)) - r


def _cover(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a shape from its signed distance."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _paint(rgb: np.ndarray, alpha: np.ndarray, cover: np.ndarray, color: np.ndarray) -> None:
    """Draw one part over the sprite so far (in place)."""
    c = cover[..., None]
    rgb *= 1 - c
    rgb += c * color
    np.maximum(alpha, cover, out=alpha)


def _random_color(rng: np.random.Generator, lo: float = 20, hi: float = 235) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def _make_sprite(rng: np.random.Generator, class_id: int, w: int, h: int) -> np.ndarray:
    """An RGBA sprite of one class; shapes are built from signed distances so edges are anti-aliased."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    if class_id == 0:  # person: head, torso, two legs, two arms
        head_r = max(w * 0.22, h * 0.075)
        skin = np.array(
            rng.choice([[230, 190, 160], [190, 140, 100], [120, 80, 55], [250, 215, 185]]), np.float32
        )
        shirt, trousers = _random_color(rng), _random_color(rng, 10, 160)
        leg_w = w * 0.16
        stride = rng.uniform(-0.18, 0.18) * w
        hip_y, foot_y = h * 0.55, h - leg_w
        _paint(
            rgb,
            alpha,
            _cover(_sdf_segment(x, y, (w * 0.40, hip_y), (w * 0.40 - stride, foot_y), leg_w)),
            trousers,
        )
        _paint(
            rgb,
            alpha,
            _cover(_sdf_segment(x, y, (w * 0.60, hip_y), (w * 0.60 + stride, foot_y), leg_w)),
            trousers,
        )
        _paint(rgb, alpha, _cover(_sdf_box(x, y, w / 2, h * 0.40, w * 0.30, h * 0.19, w * 0.12)), shirt)
        arm_w = w * 0.09
        _paint(
            rgb,
            alpha,
            _cover(_sdf_segment(x, y, (w * 0.22, h * 0.26), (arm_w + 0.5, h * 0.52), arm_w)),
            shirt * 0.85,
        )
        _paint(
            rgb,
            alpha,
            _cover(_sdf_segment(x, y, (w * 0.78, h * 0.26), (w - arm_w - 0.5, h * 0.52), arm_w)),
            shirt * 0.85,
        )
        _paint(rgb, alpha, _cover(_sdf_circle(x, y, w / 2, head_r + 0.5, head_r)), skin)
        if rng.random() < 0.5:  # hair / hat
            _paint(
                rgb,
                alpha,
                _cover(np.maximum(_sdf_circle(x, y, w / 2, head_r + 0.5, head_r), y - head_r * 0.8)),
                _random_color(rng, 10, 120),
            )
    elif class_id == 1:  # car: body, cabin with windows, two wheels
        body = _random_color(rng)
        wheel_r = h * 0.20
        _paint(rgb, alpha, _cover(_sdf_box(x, y, w / 2, h * 0.60, w / 2 - 0.5, h * 0.22, h * 0.10)), body)
        cab_l, cab_r = w * rng.uniform(0.18, 0.30), w * rng.uniform(0.68, 0.82)
        _paint(
            rgb,
            alpha,
            _cover(_sdf_box(x, y, (cab_l + cab_r) / 2, h * 0.30, (cab_r - cab_l) / 2, h * 0.20, h * 0.12)),
            body * 0.95,
        )
        glass = np.array([60, 80, 100], np.float32) * rng.uniform(0.6, 1.4)
        mid = (cab_l + cab_r) / 2
        _paint(
            rgb,
            alpha,
            _cover(
                _sdf_box(x, y, (cab_l + mid) / 2 + 1, h * 0.31, (mid - cab_l) / 2 - 2, h * 0.13, h * 0.05)
            ),
            glass,
        )
        _paint(
            rgb,
            alpha,
            _cover(
                _sdf_box(x, y, (mid + cab_r) / 2 - 1, h * 0.31, (cab_r - mid) / 2 - 2, h * 0.13, h * 0.05)
            ),
            glass,
        )
        for wx in (w * 0.22, w * 0.78):
            _paint(
                rgb,
                alpha,
                _cover(_sdf_circle(x, y, wx, h - wheel_r - 0.5, wheel_r)),
                np.full(3, 25, np.float32),
            )
            _paint(
                rgb,
                alpha,
                _cover(_sdf_circle(x, y, wx, h - wheel_r - 0.5, wheel_r * 0.45)),
                np.full(3, 150, np.float32),
            )
        light = np.array([250, 240, 180], np.float32)
        _paint(rgb, alpha, _cover(_sdf_box(x, y, w - 2.5, h * 0.52, 2.0, h * 0.05, 1.0)), light)
    else:  # bike: two wheel rings, frame triangle, seat and handlebar
        frame_c = _random_color(rng)
        wheel_r = h * 0.33
        tw = max(1.2, h * 0.06)
        cy = h - wheel_r - 0.5
        lx, rx = wheel_r + 0.5, w - wheel_r - 0.5
        for wx in (lx, rx):
            _paint(
                rgb,
                alpha,
                _cover(np.abs(_sdf_circle(x, y, wx, cy, wheel_r - tw)) - tw),
                np.full(3, 30, np.float32),
            )
        seat = (w * 0.40, h * 0.22)
        bar = (w * 0.68, h * 0.12)
        crank = (w * 0.47, cy)
        for a, b in (
            ((lx, cy), seat),
            (seat, crank),
            (crank, (lx, cy)),
            (seat, (w * 0.70, h * 0.30)),
            ((w * 0.70, h * 0.30), crank),
            ((rx, cy), bar),
        ):
            _paint(rgb, alpha, _cover(_sdf_segment(x, y, a, b, tw * 0.9)), frame_c)
        _paint(
            rgb,
            alpha,
            _cover(_sdf_box(x, y, seat[0], seat[1] - tw, w * 0.08, tw, tw * 0.8)),
            np.full(3, 20, np.float32),
        )
        _paint(
            rgb,
            alpha,
            _cover(_sdf_segment(x, y, bar, (bar[0] + w * 0.08, bar[1] - 0.5), tw)),
            np.full(3, 40, np.float32),
        )
    # Soft vertical shading so sprites are not flat colour fields.
    rgb *= np.linspace(1.12, 0.82, h, dtype=np.float32)[:, None, None]
    return np.concatenate([np.clip(rgb, 0, 255), alpha[..., None]], axis=2)


def _tight_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha > 0.5).any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ------------------------------------------------------------------------------------------- background


def _smooth_noise(
    rng: np.random.Generator, h: int, w: int, cells: tuple[int, int], ch: int = 3
) -> np.ndarray:
    """Random values on a coarse grid, bilinearly upsampled to (h, w, ch)."""
    gh, gw = cells
    grid = rng.standard_normal((gh + 1, gw + 1, ch)).astype(np.float32)
    ys = np.linspace(0, gh, h, dtype=np.float32)
    xs = np.linspace(0, gw, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 1)
    x0 = np.minimum(xs.astype(np.int64), gw - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    g00 = grid[y0][:, x0]
    g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]
    g11 = grid[y0 + 1][:, x0 + 1]
    return g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx


def _make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sky/buildings above a horizon, ground below, static clutter, and multi-scale texture."""
    horizon = int(h * rng.uniform(0.15, 0.45))
    top = _random_color(rng, 60, 220)
    ground = _random_color(rng, 40, 170)
    bg = np.empty((h, w, 3), np.float32)
    bg[:horizon] = top
    bg[horizon:] = ground
    yy, xx = np.mgrid[0:h, 0:w]
    # Buildings / walls along the horizon.
    x = 0
    while x < w:
        bw = int(rng.uniform(0.08, 0.30) * w)
        bh = int(rng.uniform(0.3, 1.0) * horizon)
        bg[max(horizon - bh, 0) : horizon, x : x + bw] = _random_color(rng, 40, 200)
        x += bw + int(rng.uniform(0, 0.05) * w)
    # A road band with lane marks on some scenes.
    if rng.random() < 0.7:
        r0 = int(rng.uniform(horizon + 0.1 * h, 0.75 * h))
        r1 = min(h, r0 + int(rng.uniform(0.15, 0.35) * h))
        bg[r0:r1] = _random_color(rng, 50, 120)
        mark = (r0 + r1) // 2
        dash = (xx[mark : mark + 3] // 30) % 2 == 0
        bg[mark : mark + 3][dash] = 220
    # Static clutter: boxes, poles, blobs (things a detector must learn to ignore).
    for _ in range(int(rng.integers(6, 18))):
        cx, cy = rng.uniform(0, w), rng.uniform(horizon * 0.5, h)
        kind = rng.integers(3)
        if kind == 0:
            bw, bh = rng.uniform(8, 70), rng.uniform(8, 50)
            m = (np.abs(xx - cx) < bw / 2) & (np.abs(yy - cy) < bh / 2)
        elif kind == 1:
            m = (np.abs(xx - cx) < rng.uniform(1, 4)) & (yy > cy - rng.uniform(30, 120)) & (yy < cy)
        else:
            rx, ry = rng.uniform(8, 40), rng.uniform(6, 25)
            m = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        bg[m] = _random_color(rng)
    tex = (
        _smooth_noise(rng, h, w, (3, 5)) * rng.uniform(8, 25)
        + _smooth_noise(rng, h, w, (18, 32)) * rng.uniform(3, 10)
        + rng.standard_normal((h, w, 1)).astype(np.float32) * rng.uniform(2, 7)
    )
    return np.clip(bg + tex, 0, 255)


# ------------------------------------------------------------------------------------------------ motion


def _object_path(
    rng: np.random.Generator,
    class_id: int,
    ow: int,
    oh: int,
    width: int,
    height: int,
    frames_left: int,
    inside: bool,
    speed_scale: float,
    fps: float,
) -> np.ndarray | None:
    """Top-left positions from the start frame until the object has left the frame (or the scene ends)."""
    vmin, vmax = _CLASS_GEOMETRY[class_id][4:6]
    speed = rng.uniform(vmin, vmax) * speed_scale
    if class_id == 0:
        heading = rng.uniform(-math.pi, math.pi)
    else:  # vehicles mostly go sideways
        heading = rng.normal(0, 0.25) + (math.pi if rng.random() < 0.5 else 0.0)
    if inside:
        x = rng.uniform(-0.2 * ow, width - 0.8 * ow)
        y = rng.uniform(0.1 * height, height - oh)
    else:  # start just outside the edge the heading points away from
        dx, dy = math.cos(heading), math.sin(heading)
        if abs(dx) * height >= abs(dy) * width or class_id != 0:
            x = -ow + 1.0 if dx > 0 else width - 1.0
            y = rng.uniform(0.1 * height, height - oh)
        else:
            y = -oh + 1.0 if dy > 0 else height - 1.0
            x = rng.uniform(0, width - ow)
    n = frames_left
    turn = rng.normal(0, 0.03 if class_id == 0 else 0.008, n).cumsum()
    gain = np.ones(n, np.float32)
    gain *= 1 + 0.25 * np.sin(np.arange(n) * rng.uniform(0.02, 0.1) + rng.uniform(0, 6.3))  # speed varies
    if rng.random() < 0.45:  # pause for 1-4 s somewhere
        p0 = int(rng.integers(0, max(n, 1)))
        gain[p0 : p0 + int(rng.uniform(1, 4) * fps)] = 0
    vx = speed * gain * np.cos(heading + turn)
    vy = speed * gain * np.sin(heading + turn) * (0.6 if class_id == 0 else 0.3)
    xs = x + np.concatenate([[0.0], np.cumsum(vx)[:-1]])
    ys = y + np.concatenate([[0.0], np.cumsum(vy)[:-1]])
    ys = np.clip(ys, -oh * 0.5, height - oh * 0.5)  # keep them on the ground plane vertically
    visible = (xs + ow > 0) & (xs < width) & (ys + oh > 0) & (ys < height)
    first = int(np.argmax(visible))
    if not visible[first]:
        return None
    gone = np.flatnonzero(~visible[first:])
    end = first + (int(gone[0]) if gone.size else n - first)
    return np.stack([xs[:end], ys[:end]], axis=1).astype(np.float32)


def make_scene(
    seed: int, frames: int = 300, width: int = 640, height: int = 360, fps: float = 15.0, density: float = 1.0,
    busy: float = 1.0, busy_period_s: float = 20.0,
) -> Scene:
    """Build a scene deterministically from `seed` (same seed and arguments -> identical scene).

    `density` scales how many objects are in view at once (about 6 at 1.0 for 640x360). `busy` < 1 makes
    idle periods: objects exist only in the first `busy` fraction of every `busy_period_s` (an object is cut
    where its busy window ends; one that would arrive in an idle period never comes), while the lighting
    drift and the sensor noise go on. At 1.0 (the default) the scene is the one it always was.
    """
    if not 0 < busy <= 1 or busy_period_s <= 0:
        raise ValueError(f"bad idle periods: busy={busy} busy_period_s={busy_period_s}")
    if frames < 1 or width < 64 or height < 64 or fps <= 0:
        raise ValueError(f"bad scene size: frames={frames} width={width} height={height} fps={fps}")
    rng = np.random.default_rng(seed)
    size_scale = height / 360.0
    speed_scale = (width / 640.0) * (15.0 / fps)
    background = _make_background(rng, height, width)
    t = np.arange(frames, dtype=np.float32) / fps
    period = rng.uniform(8, 40)
    light = (1 + rng.uniform(0.05, 0.18) * np.sin(2 * np.pi * t / period + rng.uniform(0, 6.3)))[:, None]
    light = light * (1 + rng.uniform(-0.06, 0.06, 3) * np.sin(2 * np.pi * t / (period * 1.7))[:, None])
    light *= rng.uniform(0.75, 1.15)
    xw = np.arange(width, dtype=np.float32) / width
    light_wave = 1 + rng.uniform(0.0, 0.10) * np.cos(
        2 * np.pi * (xw[None, :] - t[:, None] / rng.uniform(20, 60))
    )
    noise = rng.standard_normal((4, height, width, 3)).astype(np.float32) * rng.uniform(1.0, 4.0)

    objects: list[ObjectSpec] = []
    target = max(1.0, 6.0 * density)
    mean_life = 8.0 * fps  # rough frames an object stays in view
    n_initial = int(rng.integers(max(1, int(target) - 2), int(target) + 2))
    arrivals = rng.poisson(target / mean_life * frames)
    starts = [0] * n_initial + sorted(int(s) for s in rng.integers(0, frames, arrivals))
    for i, start in enumerate(starts):
        cls = int(rng.choice(3, p=_CLASS_WEIGHTS))
        hmin, hmax, amin, amax = _CLASS_GEOMETRY[cls][:4]
        oh = int(round(rng.uniform(hmin, hmax) * size_scale))
        ow = max(6, int(round(oh * rng.uniform(amin, amax))))
        oh = max(8, oh)
        path = _object_path(rng, cls, ow, oh, width, height, frames - start, i < n_initial, speed_scale, fps)
        sprite = _make_sprite(rng, cls, ow, oh)
        if path is None:
            continue
        objects.append(
            ObjectSpec(
                track_id=len(objects) + 1,
                class_id=cls,
                start_frame=start,
                path=path,
                sprite=sprite,
                tight=_tight_box(sprite[..., 3]),
            )
        )
    if busy < 1:
        objects = _busy_only(objects, max(1, round(busy_period_s * fps)), busy)
    return Scene(
        seed=seed,
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        background=background,
        light=light.astype(np.float32),
        light_wave=light_wave.astype(np.float32),
        noise=noise,
        objects=tuple(objects),
    )


def _busy_only(objects: list[ObjectSpec], period: int, busy: float) -> list[ObjectSpec]:
    """The objects' parts inside the busy windows `[k * period, k * period + busy * period)`, ids renumbered."""
    window = max(1, int(period * busy))
    kept: list[ObjectSpec] = []
    for o in objects:
        offset = o.start_frame % period
        if offset >= window:
            continue  # arrives while the scene is idle
        length = min(int(o.path.shape[0]), window - offset)
        kept.append(ObjectSpec(track_id=len(kept) + 1, class_id=o.class_id, start_frame=o.start_frame,
                               path=o.path[:length], sprite=o.sprite, tight=o.tight))
    return kept


# ------------------------------------------------------------------------------------------------ render


def render_frame(scene: Scene, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame `index` (0-based): (H, W, 3) uint8 RGB and its MOT gt rows (K, 10) float64."""
    h, w = scene.height, scene.width
    img = scene.background.copy()
    label = np.zeros((h, w), np.int16)  # which object (1-based draw order) owns each pixel
    alive = [o for o in scene.objects if o.start_frame <= index < o.end_frame]
    pos = [np.rint(o.path[index - o.start_frame]).astype(np.int64) for o in alive]
    # Painter's order: objects whose feet are lower are nearer and hide the others.
    order = sorted(range(len(alive)), key=lambda k: (pos[k][1] + alive[k].sprite.shape[0], alive[k].track_id))
    boxes = []
    for draw, k in enumerate(order, start=1):
        o, (x, y) = alive[k], pos[k]
        sh, sw = o.sprite.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + sw, w), min(y + sh, h)
        if x1 <= x0 or y1 <= y0:
            boxes.append(None)
            continue
        spr = o.sprite[y0 - y : y1 - y, x0 - x : x1 - x]
        a = spr[..., 3:4]
        region = img[y0:y1, x0:x1]
        region += a * (spr[..., :3] - region)
        label[y0:y1, x0:x1][a[..., 0] > 0.5] = draw
        boxes.append((x0, y0, x1, y1))
    rows = []
    for draw, k in enumerate(order, start=1):
        if boxes[draw - 1] is None:
            continue
        o, (x, y) = alive[k], pos[k]
        tx0, ty0, tx1, ty1 = o.tight
        bx0, by0 = max(x + tx0, 0), max(y + ty0, 0)
        bx1, by1 = min(x + tx1, w), min(y + ty1, h)
        if bx1 - bx0 < 1 or by1 - by0 < 1:
            continue
        cx0, cy0, cx1, cy1 = boxes[draw - 1]
        visible = np.count_nonzero(label[cy0:cy1, cx0:cx1] == draw)
        total = np.count_nonzero(o.sprite[..., 3] > 0.5)
        rows.append(
            (
                index + 1,
                o.track_id,
                bx0,
                by0,
                bx1 - bx0,
                by1 - by0,
                1,
                MOT_CLASS_IDS[o.class_id],
                round(visible / max(total, 1), 4),
                -1,
            )
        )
    img *= scene.light[index][None, None, :] * scene.light_wave[index][None, :, None]
    img += scene.noise[index % scene.noise.shape[0]]
    frame = np.clip(img, 0, 255).astype(np.uint8)
    gt = np.array(rows, np.float64).reshape(-1, 10)
    gt = gt[np.argsort(gt[:, 1], kind="stable")]
    return frame, gt


def render(scene: Scene, start: int = 0, stop: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frame_rgb uint8 (H, W, 3), gt rows (K, 10) MOT format) for frames start..stop-1."""
    stop = scene.frames if stop is None else min(stop, scene.frames)
    for i in range(start, stop):
        yield render_frame(scene, i)


# ---------------------------------------------------------------------------------------------- writing


def encode_mp4(
    frames: Iterable[np.ndarray],
    path: Path | str | BinaryIO,
    fps: float,
    width: int,
    height: int,
    crf: int = 23,
) -> int:
    """Encode RGB frames as H.264 main profile, yuv420p, constant fps, a keyframe every second, no B-frames.

    No B-frames and a fixed GOP keep the file easy to replay over RTSP (decode order = display order,
    a late joiner waits at most one second). `path` may be a binary file object (written as mp4).
    Returns the number of frames written.
    """
    rate = Fraction(fps).limit_denominator(1001)
    gop = max(1, int(round(fps)))
    n = 0
    target = path if hasattr(path, "write") else str(path)
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "profile": "main",
            "crf": str(crf),
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0",
        }
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = n
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        for packet in stream.encode():
            container.mux(packet)
    return n


def h264_roundtrip(frames: list[np.ndarray], fps: float = 15.0, crf: int = 23) -> list[np.ndarray]:
    """Encode RGB frames to H.264 in memory and decode them again: frames with real codec artefacts."""
    h, w = frames[0].shape[:2]
    buf = io.BytesIO()
    encode_mp4(frames, buf, fps, w, h, crf=crf)
    buf.seek(0)
    with av.open(buf, mode="r") as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _format_rows(rows: np.ndarray) -> str:
    return "".join(
        f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:g},{int(r[7])},{r[8]:g},{int(r[9])}\n"
        for r in rows
    )


def write_sequence(
    out_dir: Path | str,
    name: str,
    seed: int,
    frames: int = 300,
    size: tuple[int, int] = (640, 360),
    fps: float = 15.0,
    detector: Callable[[np.ndarray], np.ndarray] | None = None,
    density: float = 1.0,
) -> Path:
    """Render scene `seed` into `<out_dir>/<name>/` in MOTChallenge layout and return that folder.

    Writes video.mp4 (H.264), gt/gt.txt, seqinfo.ini, and det/det.txt when `detector` is given: a
    callable taking one RGB frame and returning (K, 5) float rows (left, top, w, h, score) in frame pixels
    (scripts/eval_detector.py's `OnnxDetector` is one). `size` is (width, height).
    """
    width, height = size
    seq = Path(out_dir) / name
    (seq / "gt").mkdir(parents=True, exist_ok=True)
    scene = make_scene(seed, frames=frames, width=width, height=height, fps=fps, density=density)
    gt_parts: list[np.ndarray] = []
    det_lines: list[str] = []

    def frames_iter() -> Iterator[np.ndarray]:
        for i, (img, gt) in enumerate(render(scene)):
            gt_parts.append(gt)
            if detector is not None:
                for left, top, bw, bh, score in detector(img):
                    det_lines.append(
                        f"{i + 1},-1,{left:.2f},{top:.2f},{bw:.2f},{bh:.2f},{score:.4f},-1,-1,-1\n"
                    )
            yield img

    n = encode_mp4(frames_iter(), seq / "video.mp4", fps, width, height)
    (seq / "gt" / "gt.txt").write_text(_format_rows(np.concatenate(gt_parts)) if gt_parts else "")
    if detector is not None:
        (seq / "det").mkdir(exist_ok=True)
        (seq / "det" / "det.txt").write_text("".join(det_lines))
    fps_txt = f"{fps:g}"
    (seq / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={fps_txt}\nseqLength={n}\n"
        f"imWidth={width}\nimHeight={height}\nimExt=.jpg\nvideo=video.mp4\nseed={seed}\n"
    )
    logger.info("wrote %s: %d frames, %d objects", seq, n, len(scene.objects))
    return seq


# ------------------------------------------------------------------------------------------- ground plane
# The scenes' ground plane (issue 31): a fixed homography from image pixels to metres, the same for every
# scene of a size. It does not touch the generator (scenes stay byte-identical for a seed): it gives each
# object's path a true position and a true speed on the ground, for auditing the worker's calibration.
# The frame's four corners map to a trapezoid: the bottom edge is 16 m wide, the top (far) edge 40 m, 50 m
# away, as a camera looking down a road at an angle would see it.
GROUND_IMAGE_FRACTIONS: tuple[tuple[float, float], ...] = ((0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0))
GROUND_WORLD_M: tuple[tuple[float, float], ...] = ((0.0, 0.0), (16.0, 0.0), (28.0, 50.0), (-12.0, 50.0))


def ground_homography(width: int, height: int) -> np.ndarray:
    """3x3 float64: image pixels (x, y, 1) -> ground metres, for a `width` x `height` scene."""
    src = np.array(GROUND_IMAGE_FRACTIONS) * (width, height)
    dst = np.array(GROUND_WORLD_M)
    a = []
    for (x, y), (u, v) in zip(src, dst):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    h = np.linalg.svd(np.array(a))[2][-1].reshape(3, 3)
    return h / h[2, 2]


def to_ground(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 2) pixels -> (N, 2) metres through `h`."""
    p = np.c_[np.asarray(points, np.float64), np.ones(len(points))] @ h.T
    return p[:, :2] / p[:, 2:3]


def object_ground_track(scene: Scene, obj: ObjectSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (T,), ground positions (T, 2) m, speeds (T,) m/s) of an object's BOTTOM_CENTER anchor (the
    bottom centre of its tight box), unclipped, for every frame it exists. Speeds are central differences of
    the positions (one-sided at the ends) times the frame rate."""
    x0, _, x1, y1 = obj.tight
    anchor = obj.path.astype(np.float64) + ((x0 + x1) / 2.0, float(y1))
    world = to_ground(ground_homography(scene.width, scene.height), anchor)
    frames = np.arange(obj.start_frame, obj.end_frame)
    if len(world) < 2:
        return frames, world, np.zeros(len(world))
    speed = np.linalg.norm(np.gradient(world, axis=0), axis=1) * scene.fps
    return frames, world, speed

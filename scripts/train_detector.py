"""Train the project's small synthetic-scene detector on CPU and export it (ONNX + TorchScript).

The model is a compact anchor-free detector: a 5-stage conv backbone, a PAN-lite neck over strides
8/16/32, and per-level heads with direct (l, t, r, b) box regression (FCOS-style, softplus * stride)
and per-class sigmoid scores trained with quality focal loss (target = IoU of the predicted box) plus
GIoU loss, positives chosen by FCOS center sampling with per-level size ranges. Its forward pass
decodes to the ultralytics YOLOv8 output layout (B, 4 + nc, N): cx, cy, w, h in input pixels, then
class scores, no objectness, so every engine of the pipeline can run it unchanged.

Training data: scenes from `rtsp_worker.sim.synthetic` (seeds 10_000 + i), encoded to H.264 and decoded
again so the detector sees the same compression artefacts as the pipeline, letterboxed 640x360 ->
384x640 (12 px grey bars), random crops, flips and photometric jitter.

    .venv/bin/python scripts/train_detector.py --out models --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rtsp_worker.sim import synthetic

log = logging.getLogger("train_detector")

INPUT_HW = (384, 640)
STRIDES = (8, 16, 32)
# Level l takes a positive point when max(l, t, r, b) of its box falls in this range (FCOS).
SIZE_RANGES = ((0.0, 56.0), (56.0, 112.0), (112.0, 1e8))
PAD = 114
TRAIN_SEED_BASE = 10_000
MIN_VISIBILITY = 0.3  # gt rows less visible than this are "ignore": neither positives nor negatives


# -------------------------------------------------------------------------------------------------- model


def anchor_grid(input_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Centres (N, 2) x, y in input pixels and strides (N, 1) of every output point, levels in order."""
    points, strides = [], []
    for s in STRIDES:
        h, w = -(-input_hw[0] // s), -(-input_hw[1] // s)  # ceil: stride-2 convs with padding 1
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * s
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * s
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=1))
        strides.append(torch.full((h * w, 1), float(s)))
    return torch.cat(points, 0), torch.cat(strides, 0)


class ConvBnAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True)
        )


class Residual(nn.Module):
    """Two 3x3 convs with a skip: cheap depth for the receptive field the larger objects need."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = ConvBnAct(c, c // 2, 1)
        self.b = ConvBnAct(c // 2, c, 3)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.b(self.a(x))


class SynthDet(nn.Module):
    """Compact anchor-free detector; forward returns (B, 4 + nc, N) in the ultralytics layout."""

    def __init__(
        self, num_classes: int = 3, width: tuple[int, ...] = (16, 32, 64, 96, 128), neck: int = 64
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = width
        self.num_classes = num_classes
        self.stem = nn.Sequential(ConvBnAct(3, c1, 3, 2), ConvBnAct(c1, c2, 3, 2), Residual(c2))
        self.s3 = nn.Sequential(ConvBnAct(c2, c3, 3, 2), Residual(c3), Residual(c3))
        self.s4 = nn.Sequential(ConvBnAct(c3, c4, 3, 2), Residual(c4), Residual(c4))
        self.s5 = nn.Sequential(ConvBnAct(c4, c5, 3, 2), Residual(c5), Residual(c5))
        self.lat3, self.lat4, self.lat5 = (
            ConvBnAct(c3, neck, 1),
            ConvBnAct(c4, neck, 1),
            ConvBnAct(c5, neck, 1),
        )
        self.td4, self.td3 = ConvBnAct(neck, neck), ConvBnAct(neck, neck)
        self.down3, self.down4 = ConvBnAct(neck, neck, 3, 2), ConvBnAct(neck, neck, 3, 2)
        self.bu4, self.bu5 = ConvBnAct(neck, neck), ConvBnAct(neck, neck)
        self.heads = nn.ModuleList(
            nn.ModuleDict(
                {
                    "stem": ConvBnAct(neck, neck),
                    "cls": nn.Conv2d(neck, num_classes, 1),
                    "reg": nn.Conv2d(neck, 4, 1),
                }
            )
            for _ in STRIDES
        )
        for h in self.heads:
            nn.init.constant_(h["cls"].bias, -4.6)  # prior 0.01: background dominates
            nn.init.zeros_(h["reg"].bias)

    def features(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        p3 = self.s3(x)
        p4 = self.s4(p3)
        p5 = self.s5(p4)
        t5 = self.lat5(p5)
        t4 = self.td4(self.lat4(p4) + F.interpolate(t5, scale_factor=2.0, mode="nearest"))
        t3 = self.td3(self.lat3(p3) + F.interpolate(t4, scale_factor=2.0, mode="nearest"))
        n4 = self.bu4(t4 + self.down3(t3))
        n5 = self.bu5(t5 + self.down4(n4))
        return [t3, n4, n5]

    def freeze_grid(self, input_hw: tuple[int, int]) -> SynthDet:
        """Store the anchor-point grid of `input_hw` as buffers, for export.

        Computed in forward, the grid would be traced as `arange(..., device=<export device>)` constants
        that `map_location` / a device move never touch (the first CUDA run of a CPU export fails); as
        buffers it moves with the weights. Non-persistent: the state dict (and checkpoints) stay the same.
        """
        points, strides = anchor_grid(input_hw)
        self.register_buffer("grid_points", points, persistent=False)
        self.register_buffer("grid_strides", strides, persistent=False)
        self.grid_hw = tuple(input_hw)
        return self

    def raw(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-point class logits (B, N, nc), ltrb distances (B, N, 4), points (N, 2), strides (N, 1)."""
        logits, dists = [], []
        for feat, head, s in zip(self.features(x), self.heads, STRIDES):
            f = head["stem"](feat)
            logits.append(head["cls"](f).flatten(2).transpose(1, 2))
            dists.append(F.softplus(head["reg"](f)).flatten(2).transpose(1, 2) * s)
        if getattr(self, "grid_hw", None) == tuple(x.shape[2:]):
            points, strides = self.grid_points, self.grid_strides
        else:  # training crops of any size
            points, strides = (t.to(x.device, x.dtype) for t in anchor_grid(tuple(x.shape[2:])))
        return torch.cat(logits, 1), torch.cat(dists, 1), points, strides

    def forward(self, images: Tensor) -> Tensor:
        logits, dists, points, _ = self.raw(images)
        x0y0 = points - dists[..., :2]
        x1y1 = points + dists[..., 2:]
        boxes = torch.cat(((x0y0 + x1y1) / 2, x1y1 - x0y0), dim=-1)  # cx, cy, w, h
        return torch.cat((boxes, logits.sigmoid()), dim=-1).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------- loss


def box_iou_giou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Element-wise IoU and GIoU of xyxy boxes (..., 4)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter + 1e-7
    iou = inter / union
    hull = (
        (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    )
    return iou, iou - (hull - union) / (hull + 1e-7)


def assign(points: Tensor, strides: Tensor, gt: Tensor, radius: float = 2.5) -> tuple[Tensor, Tensor]:
    """FCOS center-sampling assignment for a padded batch of gt.

    gt: (B, M, 6) rows x0, y0, x1, y1, class, flag (1 valid, 0 ignore, -1 padding).
    Returns the index of the gt each point takes (B, N), -1 for background, and its flag (B, N).
    """
    bsz, m, _ = gt.shape
    n = points.shape[0]
    if m == 0:
        return torch.full((bsz, n), -1, dtype=torch.long), torch.zeros((bsz, n))
    px, py = points[:, 0].view(1, n, 1), points[:, 1].view(1, n, 1)
    x0, y0, x1, y1 = (gt[..., i].unsqueeze(1) for i in range(4))  # (B, 1, M)
    ltrb = torch.stack((px - x0, py - y0, x1 - px, y1 - py), dim=-1)  # (B, N, M, 4)
    inside = ltrb.min(-1).values > 0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    r = strides.view(1, n, 1) * radius
    central = ((px - cx).abs() < r) & ((py - cy).abs() < r)
    level = torch.log2(strides[:, 0] / STRIDES[0]).round().long()
    lo, hi = torch.tensor(SIZE_RANGES, dtype=points.dtype)[level].T.reshape(2, 1, n, 1)
    reach = ltrb.max(-1).values
    in_range = (reach >= lo) & (reach <= hi)
    ok = inside & central & in_range & (gt[..., 5] >= 0).unsqueeze(1)
    area = ((x1 - x0) * (y1 - y0)).expand(bsz, n, m)
    area = torch.where(ok, area, torch.full_like(area, float("inf")))
    best_area, best = area.min(dim=2)
    best = torch.where(torch.isinf(best_area), torch.full_like(best, -1), best)
    flag = torch.gather(gt[..., 5], 1, best.clamp(min=0))
    return best, torch.where(best >= 0, flag, torch.zeros_like(flag))


def detection_loss(model: SynthDet, images: Tensor, gt: Tensor) -> tuple[Tensor, dict[str, float]]:
    logits, dists, points, strides = model.raw(images)
    with torch.no_grad():
        idx, flag = assign(points, strides, gt)
    pos = (idx >= 0) & (flag > 0)
    ignore = (idx >= 0) & (flag == 0)
    matched = torch.gather(gt, 1, idx.clamp(min=0).unsqueeze(-1).expand(-1, -1, 6))  # (B, N, 6)
    pred_boxes = torch.cat((points - dists[..., :2], points + dists[..., 2:]), dim=-1)
    num_pos = max(int(pos.sum()), 1)
    iou, giou = box_iou_giou(pred_boxes[pos], matched[pos][:, :4])
    box_loss = (1 - giou).sum() / num_pos
    target = torch.zeros_like(logits)
    pos_b, pos_n = pos.nonzero(as_tuple=True)
    target[pos_b, pos_n, matched[pos][:, 4].long()] = iou.detach().clamp(min=0.05)
    p = logits.sigmoid()
    weight = (p - target).abs().pow(2) * (~ignore).unsqueeze(-1)  # quality focal loss; ignore -> no loss
    cls_loss = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / num_pos
    loss = cls_loss + 2.0 * box_loss
    return loss, {
        "cls": float(cls_loss.detach()),
        "box": float(box_loss.detach()),
        "pos": float(num_pos) / images.shape[0],
    }


# --------------------------------------------------------------------------------------------- data


def letterbox_rows(gt: np.ndarray, pad_y: int) -> np.ndarray:
    """MOT rows -> (K, 6) x0, y0, x1, y1, class, flag in letterboxed input pixels."""
    out = np.zeros((len(gt), 6), np.float32)
    out[:, 0] = gt[:, 2]
    out[:, 1] = gt[:, 3] + pad_y
    out[:, 2] = gt[:, 2] + gt[:, 4]
    out[:, 3] = gt[:, 3] + gt[:, 5] + pad_y
    out[:, 4] = [synthetic.MOT_CLASS_IDS.index(int(c)) for c in gt[:, 7]]
    out[:, 5] = ((gt[:, 8] >= MIN_VISIBILITY) & (gt[:, 4] >= 3) & (gt[:, 5] >= 3)).astype(np.float32)
    return out


def make_dataset(
    seeds: list[int],
    frames: int,
    every: int,
    crf: int,
    width: int = 640,
    height: int = 360,
    fps: float = 15.0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Letterboxed (N, 384, 640, 3) uint8 images and per-image gt (K, 6), from every `every`-th frame."""
    pad_y = (INPUT_HW[0] - height) // 2
    pad_x = (INPUT_HW[1] - width) // 2
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for s in seeds:
        rng = np.random.default_rng(s)
        scene = synthetic.make_scene(
            s, frames=frames, width=width, height=height, fps=fps, density=float(rng.uniform(0.5, 1.6))
        )
        rendered = list(synthetic.render(scene))
        decoded = synthetic.h264_roundtrip([f for f, _ in rendered], fps, crf)
        offset = int(rng.integers(0, every))
        for i in range(offset, len(decoded), every):
            img = np.full((*INPUT_HW, 3), PAD, np.uint8)
            img[pad_y : pad_y + height, pad_x : pad_x + width] = decoded[i]
            images.append(img)
            rows = letterbox_rows(rendered[i][1], pad_y)
            rows[:, [0, 2]] += pad_x
            labels.append(rows)
    return np.stack(images), labels


def sample_batch(
    rng: np.random.Generator, images: np.ndarray, labels: list[np.ndarray], bsz: int, crop: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Random crops + flips + photometric jitter; boxes mostly cut away by the crop become ignore."""
    ch, cw = crop
    H, W = images.shape[1:3]
    idx = rng.integers(0, len(images), bsz)
    batch = np.empty((bsz, ch, cw, 3), np.uint8)
    gts = []
    for j, i in enumerate(idx):
        y0 = int(rng.integers(0, H - ch + 1))
        x0 = int(rng.integers(0, W - cw + 1))
        img = images[i, y0 : y0 + ch, x0 : x0 + cw]
        g = labels[i].copy()
        area = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
        g[:, [0, 2]] = np.clip(g[:, [0, 2]] - x0, 0, cw)
        g[:, [1, 3]] = np.clip(g[:, [1, 3]] - y0, 0, ch)
        w, h = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        keep = (w >= 1) & (h >= 1)
        g[(w * h < 0.5 * area) | (w < 3) | (h < 3), 5] = 0
        g = g[keep]
        if rng.random() < 0.5:
            img = img[:, ::-1]
            g[:, [0, 2]] = cw - g[:, [2, 0]]
        batch[j] = img
        gts.append(g)
    m = max(1, max(len(g) for g in gts))
    gt = np.zeros((bsz, m, 6), np.float32)
    gt[..., 5] = -1
    for j, g in enumerate(gts):
        gt[j, : len(g)] = g
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255)
    # Photometric jitter per image: contrast, brightness, per-channel gain.
    contrast = torch.from_numpy(rng.uniform(0.7, 1.3, (bsz, 1, 1, 1)).astype(np.float32))
    bright = torch.from_numpy(rng.uniform(-0.12, 0.12, (bsz, 1, 1, 1)).astype(np.float32))
    gain = torch.from_numpy(rng.uniform(0.9, 1.1, (bsz, 3, 1, 1)).astype(np.float32))
    x = ((x - 0.5) * contrast + 0.5 + bright) * gain
    return x.clamp_(0, 1), torch.from_numpy(gt)


# -------------------------------------------------------------------------------------------- export


def export(model: SynthDet, out: Path, description: str, onnx: bool = True) -> tuple[Path | None, Path]:
    """models/synth_det.onnx (ONNX Runtime, TensorRT) and models/synth_det.pt2 (the torch engine)."""
    from rtsp_worker.engines.export import export_onnx, export_program

    model = model.eval().float().freeze_grid(INPUT_HW)  # the anchor grid as buffers: device-independent
    names = "{" + ", ".join(f"{i}: '{n}'" for i, n in enumerate(synthetic.CLASS_NAMES)) + "}"
    props = {
        "names": names,
        "imgsz": str(list(INPUT_HW)),
        "stride": "32",
        "description": description,
        "task": "detect",
        "batch": "1",
    }
    onnx_path = export_onnx(model, out / "synth_det.onnx", INPUT_HW, props) if onnx else None
    pt2_path = export_program(model, out / "synth_det.pt2", INPUT_HW, props)
    return onnx_path, pt2_path


def reexport(weights: Path, out: Path) -> Path:
    """Write synth_det.pt2 again from the weights of an earlier export (.pt2, or the old .torchscript)."""
    if weights.suffix == ".pt2":
        extra = {"config.txt": ""}
        program = torch.export.load(str(weights), extra_files=extra)
        state = program.state_dict
        description = json.loads(extra["config.txt"] or "{}").get("description", "")
    else:
        module = torch.jit.load(str(weights), map_location="cpu", _extra_files=(extra := {"config.txt": ""}))
        state = module.state_dict()
        description = json.loads(extra["config.txt"] or "{}").get("description", "")
    model = SynthDet(len(synthetic.CLASS_NAMES))
    model.load_state_dict(state)
    return export(model, out, description, onnx=False)[1]


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models")
    ap.add_argument("--seed", type=int, default=0, help="torch/numpy seed for init and sampling")
    ap.add_argument("--scenes", type=int, default=150, help="training scenes (seeds 10_000 + i)")
    ap.add_argument("--scene-frames", type=int, default=60)
    ap.add_argument("--every", type=int, default=5, help="keep every n-th frame of each scene")
    ap.add_argument(
        "--steps",
        type=int,
        default=4000,
        help="nominal steps; the LR schedule also follows the clock so it ends within --max-minutes",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, nargs=2, default=(256, 384), metavar=("H", "W"))
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--max-minutes", type=float, default=28.0, help="stop training early past this (incl. data)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is ~10x faster than 2 when other jobs share the 2 cores (OpenMP spin)",
    )
    ap.add_argument("--eval-scenes", type=int, default=8)
    ap.add_argument("--reexport", type=Path, default=None, metavar="WEIGHTS",
                    help="no training: write OUT/synth_det.pt2 from the weights of an earlier export")
    args = ap.parse_args()
    if args.reexport is not None:
        print(reexport(args.reexport, args.out))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    images, labels = make_dataset(
        [TRAIN_SEED_BASE + i for i in range(args.scenes)],
        args.scene_frames,
        args.every,
        crf=int(rng.integers(20, 28)),
    )
    n_obj = sum(int((g[:, 5] > 0).sum()) for g in labels)
    log.info("data: %d images, %d valid boxes, %.0f s", len(images), n_obj, time.time() - t0)

    model = SynthDet(len(synthetic.CLASS_NAMES))
    log.info("params: %.2fM", sum(p.numel() for p in model.parameters()) / 1e6)
    ema = SynthDet(len(synthetic.CLASS_NAMES))
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    decay_params = [p for n, p in model.named_parameters() if p.ndim > 1]
    other = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay_params, "weight_decay": 5e-4}, {"params": other, "weight_decay": 0}],
        lr=args.lr,
        betas=(0.9, 0.99),
    )
    warmup = min(150, args.steps // 10)
    model.train()
    step = 0
    t_train = time.time()
    # Shared cores make the step rate unpredictable: progress is whichever is further along, steps or clock,
    # so the cosine schedule always finishes inside the time budget (export and eval need ~1 min after).
    train_budget = max(60.0, args.max_minutes * 60 - (t_train - t0))
    progress = 0.0
    while progress < 1.0:
        step += 1
        progress = max(step / args.steps, (time.time() - t_train) / train_budget)
        lr = args.lr * (
            step / warmup if step <= warmup else 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        x, gt = sample_batch(rng, images, labels, args.batch, tuple(args.crop))
        loss, parts = detection_loss(model, x, gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        d = 0.998 * (1 - math.exp(-step / 150))
        with torch.no_grad():
            for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                if pe.dtype.is_floating_point:
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
                else:
                    pe.copy_(pm)
        if step % 25 == 0 or step == 1:
            el = time.time() - t_train
            log.info(
                "step %d (%.0f%%) loss %.3f cls %.3f box %.3f pos/img %.0f lr %.2e  %.2f s/step",
                step,
                100 * progress,
                float(loss.detach()),
                parts["cls"],
                parts["box"],
                parts["pos"],
                lr,
                el / step,
            )
    train_s = time.time() - t0
    log.info("trained %d steps in %.1f min (data + training)", step, train_s / 60)
    args.out.mkdir(parents=True, exist_ok=True)
    ema.eval()
    desc = (
        f"rtsp-worker synthetic-scene detector (person/car/bike), trained by scripts/train_detector.py "
        f"seed={args.seed} steps={step} on rtsp_worker.sim.synthetic scenes"
    )
    onnx_path, pt2_path = export(ema, args.out, desc)
    log.info(
        "exported %s (%.2f MB) and %s (%.2f MB)",
        onnx_path,
        onnx_path.stat().st_size / 1e6,
        pt2_path,
        pt2_path.stat().st_size / 1e6,
    )
    summary = {
        "steps": step,
        "train_minutes": round(train_s / 60, 2),
        "images": len(images),
        "seed": args.seed,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if args.eval_scenes > 0:
        from eval_detector import evaluate

        res = evaluate(onnx_path, seeds=[synthetic_eval_seed(i) for i in range(args.eval_scenes)])
        log.info(
            "held-out mAP@0.5 %.4f (strict %.4f) per class %s",
            res["map50"],
            res["map50_all"],
            res["per_class"],
        )
        summary["eval"] = res
    (args.out / "synth_det_train.json").write_text(json.dumps(summary, indent=2))


def synthetic_eval_seed(i: int) -> int:
    from eval_detector import EVAL_SEED_BASE

    return EVAL_SEED_BASE + i


if __name__ == "__main__":
    main()

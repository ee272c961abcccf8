"""mAP@0.5 of an ONNX detector on held-out synthetic scenes (seeds 90_000 + i, never used for training).

Frames go through H.264 encode/decode like camera frames, are letterboxed and run with ONNX Runtime, and
the raw output is decoded with the project's own `rtsp_worker.detection.postprocess` (conf 0.001, NMS IoU 0.6).
AP per class is VOC all-point interpolated; a detection that matches no gt but overlaps (IoU >= 0.5) a gt
less than 30 % visible is ignored rather than counted as a false positive ("map50"). "map50_all" counts
every gt row with any visible pixel as a must-find.

    .venv/bin/python scripts/eval_detector.py --model models/synth_det.onnx --scenes 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtsp_worker.detection.postprocess import decode_predictions, to_source_pixels
from rtsp_worker.detection.preprocess import PAD_VALUE, letterbox_geometry
from rtsp_worker.engines.base import parse_names
from rtsp_worker.sim import synthetic
from rtsp_worker.types import Letterbox

EVAL_SEED_BASE = 90_000
MIN_VISIBILITY = 0.3


class OnnxDetector:
    """An ONNX detector with ultralytics-layout output, run on RGB frames of any size (letterboxed)."""

    def __init__(self, path: Path | str, conf: float = 0.25, iou: float = 0.6, threads: int = 2) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_hw = (int(inp.shape[2]), int(inp.shape[3]))
        self.names = parse_names(meta.get("names")) or synthetic.CLASS_NAMES
        self.conf, self.iou = conf, iou

    def detect(self, frames: list[np.ndarray], conf: float | None = None) -> list[np.ndarray]:
        """Per frame: (K, 6) float32 rows x0, y0, x1, y1, score, class in frame pixels."""
        h, w = frames[0].shape[:2]
        scale, nh, nw, px, py = letterbox_geometry(h, w, self.input_hw)
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        batch = torch.full((len(frames), 3, *self.input_hw), PAD_VALUE)
        batch[:, :, py : py + nh, px : px + nw] = x
        raw = torch.from_numpy(self.session.run(None, {self.input_name: batch.numpy()})[0])
        b = len(frames)
        lb = Letterbox(
            scale=torch.full((b,), float(scale)),
            pad=torch.tensor([[px, py]] * b, dtype=torch.float32),
            source_size=torch.tensor([[w, h]] * b, dtype=torch.float32),
        )
        dets = to_source_pixels(decode_predictions(raw, self.conf if conf is None else conf, self.iou), lb)
        rows = torch.cat((dets.boxes, dets.scores[:, None], dets.class_ids[:, None].float()), 1).numpy()
        bi = dets.batch_index.numpy()
        return [rows[bi == i] for i in range(b)]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """One frame -> (K, 5) MOT det rows: left, top, w, h, score (for `synthetic.write_sequence`)."""
        d = self.detect([frame])[0]
        return np.column_stack((d[:, 0], d[:, 1], d[:, 2] - d[:, 0], d[:, 3] - d[:, 1], d[:, 4]))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def average_precision(
    records: list[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int, thr: float = 0.5
) -> tuple[float, list[float]]:
    """records: per frame (dets (K, 6) xyxy score class, gts (M, 5) xyxy class, gt_valid (M,) bool)."""
    aps = []
    for c in range(num_classes):
        scores, tps, n_gt = [], [], 0
        for dets, gts, valid in records:
            d = dets[dets[:, 5] == c]
            d = d[np.argsort(-d[:, 4], kind="stable")]
            gm = gts[:, 4] == c
            g, v = gts[gm, :4], valid[gm]
            n_gt += int(v.sum())
            if len(d) == 0:
                continue
            ious = iou_matrix(d[:, :4], g) if len(g) else np.zeros((len(d), 0))
            taken = np.zeros(len(g), bool)
            for k in range(len(d)):
                cand = np.where(v & ~taken, ious[k], -1.0)
                j = int(np.argmax(cand)) if len(g) else -1
                if j >= 0 and cand[j] >= thr:
                    taken[j] = True
                    scores.append(d[k, 4])
                    tps.append(1)
                elif len(g) and np.where(~v, ious[k], -1.0).max() >= thr:
                    continue  # on a barely visible object: neither right nor wrong
                else:
                    scores.append(d[k, 4])
                    tps.append(0)
        if n_gt == 0:
            continue
        order = np.argsort(-np.array(scores), kind="stable")
        tp = np.array(tps, np.float64)[order]
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        recall = ctp / n_gt
        precision = ctp / np.maximum(ctp + cfp, 1e-9)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[1.0], precision, [0.0]])
        mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
        idx = np.flatnonzero(mrec[1:] != mrec[:-1])
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return (float(np.mean(aps)) if aps else 0.0), aps


def evaluate(
    model: Path | str,
    seeds: list[int],
    frames: int = 60,
    every: int = 3,
    crf: int = 23,
    size: tuple[int, int] = (640, 360),
    fps: float = 15.0,
    batch: int = 8,
) -> dict:
    """mAP@0.5 of `model` on scenes `seeds` (every `every`-th of `frames` frames, after H.264)."""
    det = OnnxDetector(model, conf=0.001, iou=0.6)
    recs_main, recs_all = [], []
    t0 = time.time()
    n_frames = 0
    for s in seeds:
        scene = synthetic.make_scene(s, frames=frames, width=size[0], height=size[1], fps=fps)
        rendered = list(synthetic.render(scene))
        decoded = synthetic.h264_roundtrip([f for f, _ in rendered], fps, crf)
        picks = list(range(0, len(decoded), every))
        for k in range(0, len(picks), batch):
            chunk = picks[k : k + batch]
            outs = det.detect([decoded[i] for i in chunk])
            for i, d in zip(chunk, outs):
                gt = rendered[i][1]
                g = np.column_stack(
                    (
                        gt[:, 2],
                        gt[:, 3],
                        gt[:, 2] + gt[:, 4],
                        gt[:, 3] + gt[:, 5],
                        [synthetic.MOT_CLASS_IDS.index(int(c)) for c in gt[:, 7]],
                    )
                )
                g = g.reshape(-1, 5)
                recs_main.append((d, g, gt[:, 8] >= MIN_VISIBILITY))
                recs_all.append((d, g, gt[:, 8] > 0))
                n_frames += 1
    nc = len(det.names)
    m, per = average_precision(recs_main, nc)
    m_all, per_all = average_precision(recs_all, nc)
    return {
        "map50": round(m, 4),
        "map50_all": round(m_all, 4),
        "per_class": {n: round(a, 4) for n, a in zip(det.names, per)},
        "per_class_all": {n: round(a, 4) for n, a in zip(det.names, per_all)},
        "frames": n_frames,
        "seeds": [seeds[0], seeds[-1]],
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/synth_det.onnx"))
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=EVAL_SEED_BASE, help="first held-out seed")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--every", type=int, default=3)
    args = ap.parse_args()
    res = evaluate(
        args.model, [args.seed + i for i in range(args.scenes)], frames=args.frames, every=args.every
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

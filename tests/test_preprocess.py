"""Letterbox round trip: a box drawn in the source frame, found in the model input, mapped back."""

import pytest
import torch

from rtsp_worker.detection.postprocess import to_source_pixels
from rtsp_worker.detection.preprocess import PAD_VALUE, Preprocessor, letterbox_geometry
from rtsp_worker.types import Detections, Frame


def frame_with_box(h, w, box, camera=0):
    img = torch.zeros((h, w, 3), dtype=torch.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = 255
    return Frame(camera=camera, seq=0, ts=0.0, image=img, height=h, width=w)


def bright_box(channel_plane, thr=0.5):
    ys, xs = torch.nonzero(channel_plane > thr, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


@pytest.mark.parametrize(
    ("src", "input_size"),
    [((720, 1280), (384, 640)), ((1080, 1920), (736, 1280)), ((480, 640), (640, 640)), ((360, 640), (384, 640))],
)
def test_letterbox_round_trip(src, input_size):
    h, w = src
    box = (w // 4, h // 3, w // 2, h // 2)
    pre = Preprocessor(input_size, max_batch=2, device=torch.device("cpu"))
    batch, lb = pre([frame_with_box(h, w, box)])
    assert batch.shape == (1, 3, *input_size)
    assert 0.0 <= batch.min().item() and batch.max().item() <= 1.0
    found = bright_box(batch[0, 0])
    dets = Detections(torch.tensor([found], dtype=torch.float32), torch.ones(1), torch.zeros(1, dtype=torch.int64),
                      torch.zeros(1, dtype=torch.int64))
    back = to_source_pixels(dets, lb).boxes[0].tolist()
    tol = 2.5 / lb.scale[0].item()  # a couple of input pixels
    assert back == pytest.approx(list(box), abs=tol)


def test_padding_is_grey_and_mixed_sizes_batch():
    pre = Preprocessor((384, 640), max_batch=3, device=torch.device("cpu"))
    frames = [frame_with_box(720, 1280, (0, 0, 10, 10), 0), frame_with_box(480, 480, (0, 0, 10, 10), 1),
              frame_with_box(720, 1280, (0, 0, 10, 10), 2)]
    batch, lb = pre(frames)
    scale, nh, nw, px, py = letterbox_geometry(480, 480, (384, 640))
    assert (nh, nw, px, py) == (384, 384, 128, 0)
    assert batch[1, :, :, :px].allclose(torch.tensor(PAD_VALUE))  # left padding of the square frame
    assert batch[0, :, :12, :].allclose(torch.tensor(PAD_VALUE))  # top padding of the 16:9 frames
    assert lb.pad.tolist() == [[0.0, 12.0], [128.0, 0.0], [0.0, 12.0]]


def test_batch_larger_than_buffer_is_rejected():
    pre = Preprocessor((64, 64), max_batch=1, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="exceeds"):
        pre([frame_with_box(64, 64, (0, 0, 8, 8)), frame_with_box(64, 64, (0, 0, 8, 8))])

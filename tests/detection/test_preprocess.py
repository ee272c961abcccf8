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
    return Frame(row=camera, seq=0, ts=0.0, image=img, height=h, width=w)


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
    _scale, nh, nw, px, py = letterbox_geometry(480, 480, (384, 640))
    assert (nh, nw, px, py) == (384, 384, 128, 0)
    assert batch[1, :, :, :px].allclose(torch.tensor(PAD_VALUE))  # left padding of the square frame
    assert batch[0, :, :12, :].allclose(torch.tensor(PAD_VALUE))  # top padding of the 16:9 frames
    assert lb.pad.tolist() == [[0.0, 12.0], [128.0, 0.0], [0.0, 12.0]]


def test_batch_larger_than_buffer_is_rejected():
    pre = Preprocessor((64, 64), max_batch=1, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="exceeds"):
        pre([frame_with_box(64, 64, (0, 0, 8, 8)), frame_with_box(64, 64, (0, 0, 8, 8))])


def test_input_spec_conventions_in_one_pass():
    """Channel order, value mapping, pad value and placement, against the per-pixel definition."""
    from rtsp_worker.detection.input_spec import InputSpec
    from rtsp_worker.types import Frame

    img = torch.randint(0, 256, (32, 64, 3), dtype=torch.uint8)
    frame = Frame(0, 0, 0.0, img, 32, 64)
    spec = InputSpec((64, 64), channels="bgr", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     letterbox="topleft", pad_value=0.0)
    batch, lb = Preprocessor(spec, 1, torch.device("cpu"))([frame])
    want = (img.flip(-1).permute(2, 0, 1).float() / 255 - torch.tensor(spec.mean).view(3, 1, 1)) \
        / torch.tensor(spec.std).view(3, 1, 1)
    assert torch.allclose(batch[0, :, :32, :], want, atol=1e-5)  # frame at the top-left, BGR, normalized
    assert torch.allclose(batch[0, :, 32:, :], torch.tensor(spec.pad).view(3, 1, 1).expand(3, 32, 64))
    assert lb.pad.tolist() == [[0.0, 0.0]] and lb.scale.tolist() == [1.0]
    # 0-255 models (YOLOX) get raw values
    raw, _ = Preprocessor(InputSpec((32, 64), scale=1.0), 1, torch.device("cpu"))([frame])
    assert torch.equal(raw[0], img.permute(2, 0, 1).float())


def test_stretch_scales_each_axis_and_maps_boxes_back():
    from rtsp_worker.detection.input_spec import InputSpec
    from rtsp_worker.detection.postprocess import to_source_pixels
    from rtsp_worker.types import Detections, Frame

    frame = Frame(0, 0, 0.0, torch.full((100, 400, 3), 50, dtype=torch.uint8), 100, 400)
    batch, lb = Preprocessor(InputSpec((64, 64), letterbox="stretch"), 1, torch.device("cpu"))([frame])
    assert torch.allclose(batch, torch.full_like(batch, 50 / 255))  # no pad anywhere
    assert torch.allclose(lb.scale, torch.tensor([[64 / 400, 64 / 100]]))
    dets = Detections(torch.tensor([[16.0, 16.0, 32.0, 48.0]]), torch.ones(1), torch.zeros(1, dtype=torch.long),
                      torch.zeros(1, dtype=torch.long))
    assert torch.allclose(to_source_pixels(dets, lb).boxes, torch.tensor([[100.0, 25.0, 200.0, 75.0]]))

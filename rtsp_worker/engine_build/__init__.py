"""Offline model preparation for `rtsp-worker build-engine`: profile shapes, FP16 ONNX conversion,
INT8 calibration frames, the TensorRT builder and the ONNX-vs-engine accuracy check.

Only `trt_builder` touches TensorRT, and only inside its functions.
"""


class BuildError(ValueError):
    """A build that cannot go ahead; the one-line message names the file, flag or camera at fault."""

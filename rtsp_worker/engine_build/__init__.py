"""Offline model preparation for `rtsp-worker build-engine`: profile shapes, FP16 ONNX conversion,
INT8 calibration frames, the TensorRT builder and the ONNX-vs-engine accuracy check.

Only `trt_builder` touches TensorRT, and only inside its functions. `cli` (the command line) imports the rest
(and torch) only when the command runs, so that every other `rtsp-worker` command starts without them.
"""

TIMING_CACHE_NAME = "trt_timing.cache"  # next to the engine unless --timing-cache says otherwise


class BuildError(ValueError):
    """A build that cannot go ahead; the one-line message names the file, flag or camera at fault."""

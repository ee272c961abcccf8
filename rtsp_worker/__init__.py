"""rtsp-worker: multi-camera RTSP detection and tracking with batched inference."""

__version__ = "0.1.0"

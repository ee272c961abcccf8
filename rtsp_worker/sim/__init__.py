"""Simulated cameras: synthetic scenes with ground truth, clips, the GStreamer RTSP server, the demo."""

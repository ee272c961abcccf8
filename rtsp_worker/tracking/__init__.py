"""Tracks from detections: the batched IOU tracker and MOT scoring."""

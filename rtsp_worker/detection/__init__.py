"""Pixels in, Detections out: batched letterbox preprocessing and vectorized box decoding + NMS."""

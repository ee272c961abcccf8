"""Camera sources: connect, demux and decode (CPU FFmpeg or NVDEC), one thread per camera."""

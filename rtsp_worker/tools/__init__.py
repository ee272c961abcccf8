"""Tools on top of the worker, not part of the running service: `doctor` (what this machine can do, and a
self-test through the real batch step) and `demo` (the worker on simulated cameras)."""

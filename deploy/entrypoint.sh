#!/bin/sh
# Container start: put the ONNX model where the engine will be cached, then run rtsp-worker.
# model.path in cameras.yaml points at /engines/<model>.onnx with build_engine: true, so the TensorRT engine
# is built next to it on the first start on this GPU (minutes) and found there on every later start.
set -eu
MODEL_SRC=${MODEL_SRC:-/app/models/synth_det.onnx}
ENGINE_DIR=${ENGINE_DIR:-/engines}
if [ -d "$ENGINE_DIR" ] && [ -w "$ENGINE_DIR" ]; then
    name=$(basename "$MODEL_SRC")
    # Copy only when the image's model changed, so a cached engine stays valid (its metadata holds a hash
    # of the ONNX it was built from; the worker rebuilds when that no longer matches).
    if ! cmp -s "$MODEL_SRC" "$ENGINE_DIR/$name"; then
        cp "$MODEL_SRC" "$ENGINE_DIR/$name"
    fi
elif [ -d "$ENGINE_DIR" ]; then
    # Not fatal (a config may put its model elsewhere), but a model.path under it will not be found.
    echo "rtsp-worker-entrypoint: warning: $ENGINE_DIR is not writable by uid $(id -u): the ONNX is not copied" \
         "there and no engine can be built in it (Kubernetes: securityContext.fsGroup: 1000)" >&2
fi
exec rtsp-worker "$@"

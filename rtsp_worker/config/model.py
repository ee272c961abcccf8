"""`model:`, `batcher:` and `detection:`: the detector, the batches it runs and the postprocessing thresholds.

`model:` is one of three sections, one per inference backend, chosen by `backend` (or, for `backend: auto`,
by the file suffix) before the keys are validated: a key that only another backend reads is an error that
names that backend, not a setting that is silently ignored. Code that builds a model config in Python calls
`ModelConfig(path=..., ...)` as before and gets the section of the backend the arguments pick.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rtsp_worker.config.base import StrictModel

BACKENDS = ("onnxruntime", "torch", "tensorrt")
TORCH_SUFFIXES = (".pt2", ".torchscript", ".pt", ".ts")
TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")
# The error type of a key that belongs to another backend; the loader words it without a field prefix.
WRONG_BACKEND = "wrong_backend"


def _is_false(value: Any) -> bool:
    try:
        return TypeAdapter(bool).validate_python(value) is False
    except ValidationError:
        return False  # not a boolean at all: the field's own validation says so


def backend_for(data: Mapping[str, Any]) -> str:
    """The backend a `model:` mapping runs on: its `backend`, or for `auto` the one its file suffix picks.

    auto: TensorRT plans (.engine/.plan/.trt) -> tensorrt; .pt2/.torchscript/.pt/.ts -> torch; an ONNX file
    with `build_engine` set -> tensorrt (the engine is built from it on first start); anything else ->
    onnxruntime. An unknown `backend` value also answers onnxruntime, whose `backend` field then refuses it.
    """
    backend = data.get("backend", "auto")
    if backend in BACKENDS:
        return str(backend)
    if backend != "auto":
        return "onnxruntime"
    suffix = PurePath(str(data.get("path", ""))).suffix.lower()
    if suffix in TENSORRT_SUFFIXES:
        return "tensorrt"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == ".onnx" and "build_engine" in data and not _is_false(data["build_engine"]):
        return "tensorrt"
    return "onnxruntime"


class ModelInputConfig(StrictModel):
    """`model.input:` the model's pixel conventions; unset fields come from metadata or the layout's default."""

    channels: Literal["rgb", "bgr"] | None = Field(None, description="Channel order the model wants.")
    scale: float | None = Field(None, gt=0, le=1, description="0-255 values are multiplied by this (1/255 or 1).")
    mean: tuple[float, float, float] | None = Field(None, description="Subtracted after scaling, per channel.")
    std: tuple[float, float, float] | None = Field(None, description="Divided by after subtracting, per channel "
                                                    "(no zero).")
    letterbox: Literal["center", "topleft", "stretch"] | None = Field(
        None, description="Frame placement: centred, top-left corner (YOLOX), or stretched (RT-DETR)."
    )
    pad_value: float | None = Field(None, ge=0, le=255, description="Letterbox fill, 0-255 units.")

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(x == 0 for x in v):
            raise ValueError(f"std {list(v)} must not contain 0")
        return v


class _PickBackend(type(BaseModel)):  # type: ignore[misc]  # pydantic's model metaclass
    """`ModelConfig(...)` builds the section of the backend its arguments pick, as `model:` in a file does."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is ModelConfig and not args:
            return ANY_MODEL.validate_python(kwargs)
        return super().__call__(*args, **kwargs)


class ModelConfig(StrictModel, metaclass=_PickBackend):
    """The detector: the keys every backend reads. Each backend's section adds its own keys."""

    BACKEND: ClassVar[str] = ""  # the backend this section is for (set by each subclass)

    path: Path = Field(..., description="The model file: .onnx (ONNX Runtime), .pt2 / .torchscript / .pt / .ts "
                       "(torch) or .engine / .plan / .trt (a TensorRT plan).")
    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = Field(
        "auto", description="auto: by the file suffix; a .onnx file with build_engine: true runs on TensorRT "
        "(on ONNX Runtime where there is no CUDA GPU). A key of another backend is an error."
    )
    input_size: tuple[Annotated[int, Field(ge=32, le=4096)], Annotated[int, Field(ge=32, le=4096)]] | None = Field(
        None, description="[height, width], multiples of 32 (default: read from the model)."
    )
    class_names: list[str] | None = Field(None, description="Class names, overriding those stored in the model.")
    layout: Literal["auto", "yolov8", "yolov5", "yolox", "yolox-decoded", "end2end", "rtdetr", "rtdetr-topk"] = Field(
        "auto", description="The model's output layout (auto: from its metadata and output shape)."
    )
    input: ModelInputConfig | None = Field(None, description="Override the model's pixel conventions.")

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """On `ModelConfig` itself: the section of the backend `obj` picks, as `ModelConfig(**obj)`."""
        if cls is ModelConfig:
            return ANY_MODEL.validate_python(obj, **kwargs)
        return super().model_validate(obj, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _keys_of_other_backends(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.BACKEND:
            return data
        for key in data:
            if key in cls.model_fields:
                continue
            owners = [b for b, section in SECTIONS.items() if key in section.model_fields]
            if not owners:
                continue  # unknown to every backend: pydantic's "unknown key"
            why = ""
            if data.get("backend", "auto") == "auto":
                suffix = PurePath(str(data.get("path", ""))).suffix or "suffix-less"
                why = f" (backend: auto picks {cls.BACKEND} for a {suffix} file"
                if suffix.lower() == ".onnx" and key == "build_engine":
                    why += " unless build_engine is true"
                elif suffix.lower() == ".onnx" and "tensorrt" in owners:
                    why += "; build_engine: true builds a TensorRT engine from it"
                why += ")"
            raise PydanticCustomError(
                WRONG_BACKEND, "model.{key} applies to the {owners} backend{s}, not {backend}{why}",
                {"key": key, "owners": " and ".join(owners), "s": "s" if len(owners) > 1 else "",
                 "backend": cls.BACKEND, "why": why},
            )
        return data

    @model_validator(mode="after")
    def _backend_matches(self) -> ModelConfig:
        if self.backend not in ("auto", self.BACKEND):
            raise ValueError(f"backend {self.backend!r} given to the {self.BACKEND} section")
        return self

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] % 32 or v[1] % 32):
            raise ValueError(f"input_size {list(v)} must be multiples of 32")
        return v

    def shared(self) -> dict[str, Any]:
        """The keys every backend reads, to build another backend's section of the same model."""
        return {k: getattr(self, k) for k in ModelConfig.model_fields}


class OnnxRuntimeModelConfig(ModelConfig):
    """`model:` run by ONNX Runtime (.onnx)."""

    BACKEND: ClassVar[str] = "onnxruntime"

    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0: the library's default).")
    parallel_runs: int = Field(
        0, ge=0, le=256, description="On the CPU: run a batch as this many single-threaded sub-batches "
        "at once (0: one per usable core; 1: off, one multi-threaded run). Independent runs do not wait for each "
        "other at every layer as one multi-threaded run does, so a decode thread that takes a core stalls one run, "
        "not all. Batches smaller than this run as one run with model.threads.",
    )
    spin: bool = Field(
        False, description="Let idle pool threads spin-wait between runs (burns CPU that decoding needs)."
    )


# One key of two backends, one description.
_FP16 = ("torch: on CUDA, run in half precision (false: float32). tensorrt: build_engine builds an FP16 engine "
         "(false: FP32).")


class TorchModelConfig(ModelConfig):
    """`model:` run by torch (an exported program .pt2, or TorchScript)."""

    BACKEND: ClassVar[str] = "torch"

    fp16: bool = Field(True, description=_FP16)
    cuda_graphs: bool = Field(True, description="On CUDA: capture one CUDA graph per batch-size bucket.")


class TensorRTModelConfig(ModelConfig):
    """`model:` run by TensorRT (a plan, or an ONNX file it builds one from)."""

    BACKEND: ClassVar[str] = "tensorrt"

    fp16: bool = Field(True, description=_FP16)
    contexts: int = Field(2, ge=1, le=8, description="Execution contexts: batches in flight at once (each needs "
                          "an optimization profile of its own in the engine).")
    build_engine: bool = Field(
        False, description="With a .onnx path: build `<path>.engine` from it on first start, and rebuild it when "
        "stale (other TensorRT, GPU, ONNX or batch size)."
    )


SECTIONS: dict[str, type[ModelConfig]] = {
    "onnxruntime": OnnxRuntimeModelConfig, "torch": TorchModelConfig, "tensorrt": TensorRTModelConfig,
}


def _pick(value: Any) -> str:
    if isinstance(value, ModelConfig):
        return value.BACKEND
    return backend_for(value) if isinstance(value, Mapping) else "onnxruntime"


# The type of `Config.model`: one section per backend, picked before its keys are validated.
AnyModelConfig = Annotated[
    Union[  # noqa: UP007 - the tagged members need the Union spelling
        Annotated[OnnxRuntimeModelConfig, Tag("onnxruntime")],
        Annotated[TorchModelConfig, Tag("torch")],
        Annotated[TensorRTModelConfig, Tag("tensorrt")],
    ],
    Discriminator(_pick),
]
ANY_MODEL: TypeAdapter[ModelConfig] = TypeAdapter(AnyModelConfig, config=ConfigDict(title="ModelConfig"))


class DetectionConfig(StrictModel):
    """Postprocessing thresholds."""

    confidence: float = Field(0.25, ge=0, le=1, description="Minimum class score kept.")
    iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold (class-aware).")
    classes: list[int | str] | None = Field(None, description="Keep only these class ids or names (null: all).")
    max_detections: int = Field(300, ge=1, le=10000, description="Detections kept per image, after NMS.")
    max_candidates: int = Field(3000, ge=1, le=100000, description="Candidates per image before NMS (the top "
                                "scores).")


class BatcherConfig(StrictModel):
    """How frames of all cameras are gathered into one batch for the detector."""

    max_batch: int = Field(16, ge=1, le=256, description="Most frames in one batch (one per camera); a model "
                           "exported with a fixed batch size runs at most that many.")
    max_wait_ms: float = Field(10.0, ge=0, le=10000, description="Wait at most this long to fill a batch.")
    overlap: bool = Field(
        True, description="Postprocess, track and write one batch while the next is preprocessed and inferred."
    )

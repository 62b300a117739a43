"""Which device profile each export backend checks a model against by default.

Kept free of torch and SDK imports: the CLI reads it to build its help text."""
from __future__ import annotations

#: backend -> default target profile (``None``: no precision check)
DEFAULT_TARGET_PROFILES: dict[str, str | None] = {
    "onnx": None,
    "tensorrt": "tensorrt-orin",
    "coreml": "coreml-ane",
    "tflite": "edgetpu",
}

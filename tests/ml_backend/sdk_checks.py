"""What label-studio-sdk says of the regions the backend sends. The backend builds its region dicts
itself (an RLE mask, a placeholder keypoint, meta text: PredictionValue adds nothing to that), so
the tests check every one against the SDK's own validator."""

from __future__ import annotations

from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface


@lru_cache(maxsize=8)
def _interface(config: str) -> LabelInterface:
    return LabelInterface(config)


def assert_valid_result(config: str, result: list[dict]) -> None:
    errors = _interface(config).validate_prediction({"result": result}, return_errors=True)
    assert errors == [], errors

"""Label Studio's timestamps as the store compares them: which version of an annotation is newer is
decided on this text, so every form Label Studio sends (offsets, "Z", no zone) sorts alike."""

from __future__ import annotations

from datetime import datetime, timezone


def parse_timestamp(value: str | None) -> str:
    """Label Studio's ISO timestamps normalised to sortable UTC text; "" when absent, which sorts
    before every timestamp (a version Label Studio did not date never replaces one it did)."""
    if value is None or value == "":
        return ""
    try:
        stamp = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=timezone.utc)
        return stamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except OverflowError:  # a date near year 1 or 9999 that leaves the range once moved to UTC
        raise ValueError(f"timestamp {value!r} is out of range") from None

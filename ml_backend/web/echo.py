"""How a caller's values appear in messages, answers and logs: bounded, whatever their size.

A request may carry a megabyte-long key, version or id, and a label config may define thousands of
classes; a message that quoted them whole would make a small request cost a large answer and as
much log. Every message that repeats caller input goes through these.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_SHOWN = 40  # characters of one quoted value
MAX_NAMES = 20  # names listed before "... and N more"


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """The text, cut to `limit` characters."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quote(value, limit: int = MAX_SHOWN) -> str:
    """The value's repr, cut to `limit` characters."""
    return cut(repr(value), limit)


def names(items: Iterable, limit: int = MAX_NAMES) -> str:
    """The first `limit` items, comma-separated and each cut, then how many more."""
    items = list(items)
    shown = [cut(str(item)) for item in items[:limit]]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f" ... and {rest} more" if rest else "")

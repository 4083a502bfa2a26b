"""How a caller's values appear in messages, answers and logs: bounded, whatever their size.

A request may carry a megabyte-long key, version or id, and a label config may define thousands of
classes; a message that quoted them whole would make a small request cost a large answer and as
much log. Every message that repeats caller input goes through these two.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_SHOWN = 40  # characters of one quoted value
MAX_NAMES = 20  # names listed before "... and N more"


def quote(value, limit: int = MAX_SHOWN) -> str:
    """The value's repr, cut to `limit` characters."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def names(items: Iterable, limit: int = MAX_NAMES) -> str:
    """The first `limit` items, comma-separated, each cut like `quote` cuts, then how many more."""
    items = list(items)
    shown = [str(item) if len(str(item)) <= MAX_SHOWN else str(item)[:MAX_SHOWN - 3] + "..." for item in items[:limit]]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f" ... and {rest} more" if rest else "")

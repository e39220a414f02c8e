"""The clock storage dates its records by, in one place.

Every part of a repository reads the time as ``clock.now_ms()`` (the module attribute, not an imported name), so a
test that moves this node's clock moves it for all of them at once:
``monkeypatch.setattr("flair_node.storage.clock.now_ms", lambda: later)``.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch: the unit of every record's ``timestamp_ms``."""
    return time.time_ns() // 1_000_000

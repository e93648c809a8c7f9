"""Waiting on a condition in tests: poll until it holds, fail with what was awaited."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], timeout: float = 90.0, what: str = "condition", every: float = 0.25) -> T:
    """The check's first truthy value, looked for every ``every`` seconds; an AssertionError
    naming ``what`` once ``timeout`` seconds have passed without one."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not met after {timeout}s"
        time.sleep(every)

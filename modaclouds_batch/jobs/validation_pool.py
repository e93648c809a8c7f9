"""Archive validation off the request threads, bounded for everyone and per user.

Inflating an archive to check it costs CPU in proportion to what it inflates to; a user
who sends gzip bombs in parallel would otherwise hold every request thread. Here at most
``workers`` archives are checked at once, and one user may have at most ``per_user`` of
them in flight (queued or running): past that the submission is refused with a 429.
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from ..errors import RateLimited

T = TypeVar("T")
RETRY_AFTER = 5


class ValidationPool:
    def __init__(self, workers: int, per_user: int):
        if workers < 1 or per_user < 1:
            raise ValueError("archive_validation_workers and archive_validations_per_user must be at least 1")
        self.per_user = per_user
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archive-check")
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def run(self, user: str, check: Callable[[], T]) -> T:
        """``check()`` on a pool thread, waited for; :class:`RateLimited` if ``user`` has enough in flight."""
        with self._lock:
            if self._in_flight[user] >= self.per_user:
                raise RateLimited(
                    f"you have {self._in_flight[user]} archive(s) being checked already, the "
                    f"archive_validations_per_user limit of {self.per_user}; retry when they are done",
                    retry_after=RETRY_AFTER, limit="archive_validations_per_user")
            self._in_flight[user] += 1
        try:
            return self._executor.submit(check).result()
        finally:
            with self._lock:
                self._in_flight[user] -= 1
                if not self._in_flight[user]:
                    del self._in_flight[user]

    def in_flight(self, user: str) -> int:
        with self._lock:
            return self._in_flight[user]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

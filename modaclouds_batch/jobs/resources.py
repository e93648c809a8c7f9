"""What a job asks of a worker: CPUs, memory, disk and a wall-time limit.

Pure parsing and checking (no HTTP, no HTCondor). Sizes take the units people type
(``512MB``, ``8GB``, ``1.5G``; a bare number is MB) and are binary, as HTCondor's
``request_memory = 8GB`` is 8192 MB. Durations take seconds or ``1h30m``-style text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..errors import InvalidRequest

# What a job gets when it asks for nothing (also documented in docs/api.md).
DEFAULT_CPUS = 1
DEFAULT_MEMORY_MB = 128
DEFAULT_DISK_MB = 1024
MAX_CPUS = 1024
MAX_SIZE_MB = 1 << 30  # 1 PiB: anything larger is a typo
MAX_TIME_LIMIT_SECONDS = 366 * 24 * 3600

_SIZE_UNITS_MB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?\s*$", re.IGNORECASE)
_DURATION_PART_RE = re.compile(r"(\d+)\s*([dhms])", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(?:\d+\s*[dhms]\s*)+$", re.IGNORECASE)
_DURATION_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Resources:
    cpus: int = DEFAULT_CPUS
    memory_mb: int = DEFAULT_MEMORY_MB
    disk_mb: int = DEFAULT_DISK_MB
    # Seconds run.sh may run before it is stopped; None: no limit.
    time_limit: int | None = None

    def as_view(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory_mb": self.memory_mb, "disk_mb": self.disk_mb}


def parse_cpus(value: Any, field: str = "cpus") -> int:
    if value is None or value == "":
        return DEFAULT_CPUS
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= MAX_CPUS:
        raise InvalidRequest(f"{field} must be a whole number of CPUs from 1 to {MAX_CPUS}, e.g. 4", field=field)
    return int(text)


def parse_size_mb(value: Any, field: str, default: int) -> int:
    """``8GB`` -> 8192; a bare number is MB; rounded up to a whole MB."""
    if value is None or value == "":
        return default
    match = None if isinstance(value, bool) else _SIZE_RE.match(str(value))
    if not match:
        raise InvalidRequest(f"{field} must be a size such as 512MB, 8GB or 2048 (MB); got {str(value)[:40]!r}",
                             field=field)
    number, unit = float(match.group(1)), (match.group(2) or "m").lower()
    megabytes = math.ceil(number * _SIZE_UNITS_MB[unit])
    if not 1 <= megabytes <= MAX_SIZE_MB:
        raise InvalidRequest(f"{field} must be between 1MB and {MAX_SIZE_MB // (1024 * 1024)}TB", field=field)
    return megabytes


def parse_duration(value: Any, field: str) -> int | None:
    """Seconds (``5400``) or ``1h30m``, ``90m``, ``45s``, ``2d``; None when not given."""
    if value is None or value == "":
        return None
    text = "" if isinstance(value, bool) else str(value).strip()
    if text.isdigit():
        seconds = int(text)
    elif _DURATION_RE.match(text):
        seconds = sum(int(n) * _DURATION_SECONDS[u.lower()] for n, u in _DURATION_PART_RE.findall(text))
    else:
        raise InvalidRequest(f"{field} must be seconds or a duration such as 1h30m, 90m or 45s; "
                             f"got {text[:40]!r}", field=field)
    if not 1 <= seconds <= MAX_TIME_LIMIT_SECONDS:
        raise InvalidRequest(f"{field} must be from 1 second to {MAX_TIME_LIMIT_SECONDS // 86400} days", field=field)
    return seconds


def resources_from(cpus: Any, memory: Any, disk: Any, time_limit: Any) -> Resources:
    return Resources(
        cpus=parse_cpus(cpus, "job-cpus"),
        memory_mb=parse_size_mb(memory, "job-memory", DEFAULT_MEMORY_MB),
        disk_mb=parse_size_mb(disk, "job-disk", DEFAULT_DISK_MB),
        time_limit=parse_duration(time_limit, "job-time-limit"),
    )


def fits(resources: Resources, offer: Mapping[str, int]) -> bool:
    return (resources.cpus <= offer.get("cpus", 0) and resources.memory_mb <= offer.get("memory_mb", 0)
            and resources.disk_mb <= offer.get("disk_mb", 0))


FIELDS = {"cpus": "job-cpus", "memory_mb": "job-memory", "disk_mb": "job-disk"}


def unsatisfiable_reason(resources: Resources, offers: Iterable[Mapping[str, int]]) -> tuple[str, str, dict] | None:
    """Why no worker could ever run this job (message, field, largest offer); None when one can."""
    offers = list(offers)
    if not offers or any(fits(resources, offer) for offer in offers):
        return None  # no workers at all is a different wait (and the runtime check says so)
    largest = {key: max(offer.get(key, 0) for offer in offers) for key in ("cpus", "memory_mb", "disk_mb")}
    asked = resources.as_view()
    over = [key for key in FIELDS if asked[key] > largest[key]]
    short = [f"{key.split('_')[0]} {asked[key]}" + ("" if key == "cpus" else " MB") for key in over]
    short = short or ["this combination on one worker"]
    message = (f"no worker can offer {', '.join(short)}: the largest offer is {largest['cpus']} CPUs, "
               f"{largest['memory_mb']} MB memory and {largest['disk_mb']} MB disk. Ask for less, or send "
               "job-resources-wait=true to queue it until such a worker joins")
    return message, FIELDS[over[0]] if over else "job-cpus", largest

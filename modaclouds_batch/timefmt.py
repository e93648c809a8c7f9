"""ISO-8601 UTC timestamps: the one format the API and the store use."""

from __future__ import annotations

from datetime import datetime, timezone


def to_iso(moment: datetime) -> str:
    """Fixed-width ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` so strings sort like times."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_iso() -> str:
    return to_iso(datetime.now(timezone.utc))


def epoch_to_iso(seconds: int | float | None) -> str | None:
    """HTCondor reports times as epoch seconds; 0 or None means 'not yet'."""
    if not seconds:
        return None
    return to_iso(datetime.fromtimestamp(float(seconds), timezone.utc))


def parse_iso(text: str) -> datetime:
    """Accept any ISO-8601 form (``Z`` or an offset; a naive time is taken as UTC)."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment

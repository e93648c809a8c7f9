"""ISO-8601 UTC timestamps: the one format the API and the store use."""

from __future__ import annotations

from datetime import datetime, timezone


def to_iso(moment: datetime) -> str:
    """Fixed-width ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` so strings sort like times."""
    # isoformat pads the year to four digits; strftime's %Y does not (year 576 is "576").
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


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
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00: past datetime's range once in UTC
        raise ValueError(f"{text!r} is out of range") from None

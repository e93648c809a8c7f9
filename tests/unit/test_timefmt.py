"""Times on the wire and in the store: fixed-width ISO-8601 UTC that sorts like the times."""

from datetime import datetime, timezone

import pytest

from modaclouds_batch.timefmt import parse_iso, to_iso


def test_years_before_1000_keep_four_digits_so_strings_still_sort_like_times():
    early = to_iso(datetime(576, 5, 6, 4, 51, 50, 210300, tzinfo=timezone.utc))
    assert early == "0576-05-06T04:51:50.210300Z"
    assert early < to_iso(datetime(2026, 1, 1, tzinfo=timezone.utc))


def test_offsets_are_converted_to_utc():
    assert to_iso(parse_iso("2026-11-22T23:40:01+01:00")) == "2026-11-22T22:40:01.000000Z"
    assert to_iso(parse_iso("2026-11-22T22:40:01")) == "2026-11-22T22:40:01.000000Z"


@pytest.mark.parametrize("text", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+01:00", "yesterday"])
def test_times_outside_the_calendar_are_value_errors_like_any_bad_time(text):
    with pytest.raises(ValueError):
        to_iso(parse_iso(text))

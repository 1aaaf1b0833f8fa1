"""End to end on emulated links: `netprobe check` against `netprobe serve`, real processes.

A representative subset of the scenario matrix (the whole matrix: scripts/bench_accuracy.py).
"""

from __future__ import annotations

import pytest

from netprobe.lab import check_lab_available, load_profiles
from netprobe.lab.accuracy import check_on_profile, format_row

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

_REASON = check_lab_available()
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SUBSET = ["clean", "slow-symmetric", "starved-uplink", "loss-8", "satellite", "dead"]


@pytest.mark.parametrize("name", SUBSET)
async def test_check_on_emulated_link(name: str) -> None:
    profile = load_profiles()[name]
    row = await check_on_profile(profile)
    assert row.ok, format_row(row) + "\n" + row.stderr
    assert row.wall_s <= 15.5, format_row(row)
    assert "Traceback" not in row.stderr
    # exit status matches the verdict (0 video, 10 audio_only, 11 phone, 12 unknown)
    assert row.exit_code == {"video": 0, "audio_only": 10, "phone": 11, "unknown": 12}[
        row.verdict]

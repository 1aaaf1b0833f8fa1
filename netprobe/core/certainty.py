"""How sure a verdict is, in words a client can read: `sure`, `fairly_sure` or `unsure`.

A verdict's `confidence` is not a probability that it is right (nothing has calibrated it): it
encodes how far the figures sit from the thresholds that decided the verdict (`classify.py`:
0.5 at a threshold, growing with the smallest relative margin m as 0.5 + 0.98 m, capped at
0.99 from m = 0.5 on). A percentage made of it would promise what no one has measured, so
people get words and the number stays in the JSON for support staff and tools.

The rule (documented in docs/check-format.md, top-level `certainty`):

- `unsure` when the verdict was decided by a figure the check did not finish measuring (a
  `*_not_measured` or `*_not_tested_for_*` reason: the check stopped before the figure was
  known), whatever the number says;
- else `sure` from `SURE_FROM` (m >= 0.41: every deciding figure is further from its limit than
  even the widest stated measurement tolerance, loss ±1.5 points at the 5 % video limit = 30 %);
- else `fairly_sure` from `FAIRLY_SURE_FROM` (m >= 0.2: beyond the tolerance of delay, ±10 %,
  and of rate, -20 %, but not always that of loss);
- else `unsure`: some figure sits within about 20 % of a limit, so measuring again could land
  on the other side;
- none for `unknown`: there is no verdict to be sure of.

Verdicts not made by the classifier use the same scale: `too_lossy_to_connect` carries an
estimated probability (0.99 when the evidence sufficed, less when the connect time ran out
first), the agent's own signals fixed values
(network down 0.9, processor saturated 0.7), an unconfirmed `phone` window 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from netprobe.core.classify import UNKNOWN, Verdict
from netprobe.core.words import N_

SURE = "sure"
FAIRLY_SURE = "fairly_sure"
UNSURE = "unsure"
#: Certainty codes, surest first.
CERTAINTIES = (SURE, FAIRLY_SURE, UNSURE)

SURE_FROM = 0.90
"""Least `confidence` that reads `sure` (a smallest relative margin of about 0.41)."""
FAIRLY_SURE_FROM = 0.70
"""Least `confidence` that reads `fairly_sure` (a smallest relative margin of about 0.2)."""

_WORDS = {
    SURE: N_("sure"),
    FAIRLY_SURE: N_("fairly sure"),
    UNSURE: N_("not sure (the figures sit close to a limit)"),
}
_INCOMPLETE_WORDS = N_("not sure (the check ended before every figure was known)")


@dataclass(frozen=True)
class Certainty:
    code: str
    """`sure`, `fairly_sure` or `unsure` (stable; documented in docs/check-format.md)."""
    words: str
    """The same for a person, e.g. "fairly sure", in English (a catalogue msgid: shown as
    `netprobe.i18n._(words)`); never a percentage."""


def is_incomplete(code: str) -> bool:
    """A reason code that says a figure was not (fully) measured, not that it was bad."""
    return code.endswith("_not_measured") or "_not_tested_for_" in code


def certainty_of(verdict: str, confidence: float, reason_codes: Iterable[str]
                 ) -> Certainty | None:
    """The certainty of a verdict given by its name, `confidence` and reason codes (as in a
    `netprobe.check/1` or `netprobe.status/1` document); None for `unknown`."""
    if verdict == UNKNOWN:
        return None
    if any(is_incomplete(c) for c in reason_codes):
        return Certainty(UNSURE, _INCOMPLETE_WORDS)
    if not isinstance(confidence, (int, float)) or not math.isfinite(confidence):
        code = UNSURE
    elif confidence >= SURE_FROM:
        code = SURE
    elif confidence >= FAIRLY_SURE_FROM:
        code = FAIRLY_SURE
    else:
        code = UNSURE
    return Certainty(code, _WORDS[code])


def certainty(v: Verdict) -> Certainty | None:
    """The certainty of a `Verdict`; None for `unknown`."""
    return certainty_of(v.verdict, v.confidence, (r.code for r in v.reasons))


def with_certainty(doc: dict[str, Any], verdict_key: str = "verdict") -> dict[str, Any]:
    """A copy of a result or status document (`verdict_key`: the field naming its verdict,
    `recommendation` in a status) with `certainty`, the code or None, right after
    `confidence`."""
    c = certainty_of(doc[verdict_key], doc["confidence"],
                     [r["code"] for r in doc.get("reasons", ())])
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = value
        if key == "confidence":
            out["certainty"] = None if c is None else c.code
    return out

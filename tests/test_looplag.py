"""The event-loop lag report: lags over the threshold folded into at most one line a second."""

from __future__ import annotations

import pytest

from eagleeye.common.looplag import Lag, LagReport

# (time, lag) steps and the report each must give: None, or the worst lag with how many were over.
Step = tuple[float, Lag, Lag | None]
CASES: dict[str, list[Step]] = {
    "lags under the threshold are never reported": [
        (0.1, Lag(0.01, 0.0), None), (0.2, Lag(0.099, 0.1), None), (5.0, Lag(0.05, 0.0), None)],
    "the first lag over it is reported at once": [(0.1, Lag(0.25, 0.3), Lag(0.25, 0.3, 1))],
    "later ones within the second are folded into the next report, with the worst and its CPU time": [
        (0.1, Lag(0.25, 0.3), Lag(0.25, 0.3, 1)), (0.3, Lag(0.15, 0.2), None), (0.6, Lag(0.4, 0.01), None),
        (0.9, Lag(0.01, 0.0), None), (1.1, Lag(0.01, 0.0), Lag(0.4, 0.01, 2)), (1.2, Lag(0.01, 0.0), None)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_lag_report(name: str) -> None:
    report = LagReport(warn_s=0.1, every_s=1.0)
    for now, lag, expected in CASES[name]:
        assert report.add(lag, now) == expected, (now, lag)

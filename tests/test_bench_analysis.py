"""The benchmark's figures from per-frame records: what a client lost, when traffic moved."""

from __future__ import annotations

import pytest

from bench.analysis import Record, Run, fault_figures, switch_back_figures, traffic_moves


def ok(sent: float, backend: str, latency: float = 0.02) -> Record:
    return Record(sent=sent, done=sent + latency, backend=backend, answers=1)


def failed(sent: float, code: str = "UNAVAILABLE") -> Record:
    return Record(sent=sent, done=sent + 0.01, error=code)


def steady(start: float, end: float, backend: str, rate: float = 10) -> list[Record]:
    n = round((end - start) * rate)
    return [ok(start + i / rate, backend) for i in range(n)]


def test_clean_failover_counts_no_loss_and_times_the_first_standby_answer() -> None:
    records = steady(0, 2, "primary") + steady(2, 5, "standby")
    run = Run(records, fault_at=2.0, back_at=5.0, end_at=5.0)
    f = fault_figures(run)
    assert (f.frames, f.client_errors, f.lost, f.duplicated) == (50, 0, 0, None)
    assert f.to_switch_ms == pytest.approx(20)           # the first standby answer, 20 ms after the fault
    assert f.traffic_moves == 1
    assert f.before[0] == pytest.approx(20) and f.during[0] == pytest.approx(20)


@pytest.mark.parametrize(("extra", "errors", "lost", "codes"), [
    ([failed(2.05)], 1, 1, {"UNAVAILABLE": 1}),
    ([failed(2.05), failed(2.15, "DEADLINE_EXCEEDED")], 2, 2, {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}),
    ([Record(sent=2.05)], 0, 1, {}),                        # never answered, no error: lost all the same
])
def test_unary_failures_are_errors_and_lost_frames(extra: list[Record], errors: int, lost: int,
                                                    codes: dict[str, int]) -> None:
    run = Run(steady(0, 2, "primary") + extra + steady(2.5, 4, "standby"), fault_at=2.0, back_at=4.0, end_at=4.0)
    f = fault_figures(run)
    assert (f.client_errors, f.lost, f.error_codes) == (errors, lost, codes)
    assert f.to_switch_ms == pytest.approx(520)


def test_stream_break_is_one_error_however_many_frames_it_takes() -> None:
    lost_in_break = [failed(2.0 + i / 10) for i in range(5)]
    dup = ok(3.0, "standby")
    dup.answers = 2
    run = Run(steady(0, 2, "primary") + lost_in_break + [dup], fault_at=2.0, back_at=4.0, end_at=4.0,
              breaks=[(2.5, "UNAVAILABLE")], streams=True)
    f = fault_figures(run)
    assert (f.client_errors, f.lost, f.duplicated) == (1, 5, 1)


def test_frame_errors_in_a_stream_count_one_each() -> None:
    run = Run([*steady(0, 2, "primary"), failed(2.1, "FRAME_INVALID_ARGUMENT")], fault_at=2.0, end_at=3.0,
              streams=True)
    assert fault_figures(run).client_errors == 1


def test_no_standby_answer_means_no_switch() -> None:
    run = Run(steady(0, 2, "primary") + [failed(2 + i / 10) for i in range(10)], fault_at=2.0, end_at=3.0)
    f = fault_figures(run)
    assert f.to_switch_ms is None and f.lost == 10


def test_switch_back_is_timed_from_ready_and_counts_errors_before_it() -> None:
    # Primary restarted at 5 s, ready at 8 s; a proxy that sends it traffic at 7 s gets errors.
    records = (steady(0, 2, "primary") + steady(2, 7, "standby") + [failed(7 + i / 10) for i in range(10)]
               + steady(8, 10, "primary"))
    run = Run(records, fault_at=2.0, back_at=5.0, ready_at=8.0, end_at=10.0)
    back = switch_back_figures(run)
    assert back is not None
    assert back.to_switch_ms == pytest.approx(20) and back.back_ms == pytest.approx(20)
    assert fault_figures(run).back_ms == pytest.approx(20)     # the fault's row carries it too
    assert (back.client_errors, back.lost) == (10, 10)
    assert switch_back_figures(Run(records, fault_at=2.0, end_at=10.0)) is None


def test_flapping_counts_each_move_of_the_majority() -> None:
    records = (steady(0, 1, "primary") + steady(1, 2, "standby") + steady(2, 3, "primary")
               + steady(3, 4, "standby"))
    assert traffic_moves(records, 0, 4) == 3
    # A few answers from the other worker inside a bin do not make a move.
    mixed = [*steady(0, 2, "primary", rate=40), ok(0.5, "standby"), ok(1.2, "standby")]
    assert traffic_moves(mixed, 0, 2) == 0


def test_late_answers_from_a_resumed_primary_are_not_a_move() -> None:
    # Frames sent into a stopped primary at 2.0-2.5 s are answered by it when it resumes at 3 s.
    late = [ok(2 + i / 10, "primary", latency=3 - (2 + i / 10)) for i in range(5)]
    records = [*steady(0, 2, "primary"), *late, *steady(2.5, 6, "standby")]
    assert traffic_moves(records, 0, 6) == 1

"""The autoscaler's policy (pure: time is given) and the reading of the backlog from an
orchestrator's /metrics text."""

from __future__ import annotations

import pytest

from helix.cluster.autoscale import Autoscaler, Policy, read_backlog

POLICY = Policy(minimum=1, maximum=4, up_ratio=1.0, down_ratio=0.25, up_cooldown=5, down_window=30)


def test_a_burst_goes_to_the_maximum_in_one_step() -> None:
    scaler = Autoscaler(POLICY)
    decision = scaler.observe(0.0, backlog=1000, capacity=32, workers=1)
    assert decision is not None
    assert (decision.workers, decision.wanted) == (1, 4)
    assert "oracles 1 -> 4" in decision.describe()


def test_a_small_excess_adds_one_and_the_cooldown_holds_the_next() -> None:
    scaler = Autoscaler(POLICY)
    first = scaler.observe(0.0, backlog=40, capacity=32, workers=1)
    assert first is not None
    assert first.wanted == 2
    # Still loaded (the new process has not registered yet): nothing within the cooldown.
    assert scaler.observe(1.0, backlog=40, capacity=32, workers=2) is None
    assert scaler.observe(4.9, backlog=80, capacity=32, workers=2) is None
    later = scaler.observe(5.0, backlog=80, capacity=32, workers=2)
    assert later is not None
    assert later.wanted > 2


def test_between_the_ratios_nothing_changes() -> None:
    scaler = Autoscaler(POLICY)
    for second in range(100):
        assert scaler.observe(float(second), backlog=16, capacity=32, workers=2) is None


def test_scale_down_waits_for_a_whole_quiet_window() -> None:
    scaler = Autoscaler(POLICY)
    assert scaler.observe(0.0, backlog=0, capacity=128, workers=4) is None
    for second in range(1, 30):
        assert scaler.observe(float(second), backlog=0, capacity=128, workers=4) is None
    decision = scaler.observe(30.0, backlog=0, capacity=128, workers=4)
    assert decision is not None
    assert decision.wanted == 1  # idle: straight to the minimum


def test_one_busy_sample_in_the_window_holds_the_scale_down() -> None:
    scaler = Autoscaler(POLICY)
    for second in range(31):
        backlog = 60 if second == 20 else 0
        assert scaler.observe(float(second), backlog=backlog, capacity=128, workers=4) is None
    # The busy sample leaves the window 30 s later; then the window's peak decides.
    quiet = None
    for second in range(31, 60):
        quiet = quiet or scaler.observe(float(second), backlog=0, capacity=128, workers=4)
    assert quiet is not None
    assert quiet.at >= 50.0


def test_scale_down_keeps_what_the_windows_peak_needed() -> None:
    policy = Policy(minimum=1, maximum=8, up_ratio=1.0, down_ratio=0.3, down_window=10)
    scaler = Autoscaler(policy)
    decision = None
    for second in range(12):
        decision = decision or scaler.observe(float(second), 40, capacity=200, workers=8)
    assert decision is not None
    assert decision.wanted == 2  # ceil(8 * 0.2 / 1.0)


def test_out_of_bounds_counts_are_mended() -> None:
    scaler = Autoscaler(POLICY)
    low = scaler.observe(0.0, backlog=0, capacity=0, workers=0)
    assert low is not None
    assert low.wanted == 1
    high = Autoscaler(POLICY).observe(0.0, backlog=0, capacity=0, workers=9)
    assert high is not None
    assert high.wanted == 4


def test_no_capacity_with_a_backlog_is_pressure_to_scale_up() -> None:
    scaler = Autoscaler(POLICY)
    decision = scaler.observe(0.0, backlog=5, capacity=0, workers=1)
    assert decision is not None
    assert decision.wanted > 1


def test_the_backlog_is_read_from_metrics_text() -> None:
    text = (
        "# HELP helix_orchestrator_backlog x\n# TYPE helix_orchestrator_backlog gauge\n"
        "helix_orchestrator_backlog 812.0\n"
        "# HELP helix_orchestrator_oracle_capacity x\n"
        "# TYPE helix_orchestrator_oracle_capacity gauge\n"
        "helix_orchestrator_oracle_capacity 64.0\n"
    )
    assert read_backlog(text) == (812, 64)
    with pytest.raises(ValueError, match="helix_orchestrator_oracle_capacity"):
        read_backlog("helix_orchestrator_backlog 3\n")

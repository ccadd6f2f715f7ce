"""Agent leases (`helix.registry.leases.LeaseTable`), driven by an explicit `now`."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from helix.registry.leases import LeaseTable


def test_a_lease_lapses_at_its_deadline_never_before():
    table = LeaseTable()
    table.grant("a", 1, 2.0, now=10.0)
    assert table.deadline("a", 1) == 12.0
    assert table.deadline("a", 2) is None  # another registration of the name
    assert table.lapsed(11.999) == []
    assert table.lapsed(12.0) == [("a", 1)]


def test_renewal_extends_by_the_ttl_from_now():
    table = LeaseTable()
    table.grant("a", 1, 2.0, now=0.0)
    assert table.renew("a", 1, now=1.5) == 2.0
    assert table.lapsed(2.0) == []  # the old deadline passes unnoticed
    assert table.lapsed(3.4) == []
    assert table.lapsed(3.5) == [("a", 1)]


def test_renewal_of_another_epoch_or_an_unknown_lease_is_refused():
    table = LeaseTable()
    table.grant("a", 2, 2.0, now=0.0)
    assert table.renew("a", 1, now=1.0) is None
    assert table.renew("b", 1, now=1.0) is None
    assert table.deadline("a", 2) == 2.0


def test_a_new_grant_replaces_the_lease():
    table = LeaseTable()
    table.grant("a", 1, 2.0, now=0.0)
    table.grant("a", 5, 10.0, now=1.0)
    assert table.lapsed(2.0) == []
    assert table.lapsed(11.0) == [("a", 5)]
    assert len(table) == 1


def test_a_released_lease_never_lapses():
    table = LeaseTable()
    table.grant("a", 1, 1.0, now=0.0)
    table.release("a")
    table.release("a")  # twice is fine
    assert len(table) == 0
    assert table.lapsed(100.0) == []


def test_a_longer_ttl_extends_the_lease_from_now():
    table = LeaseTable()
    table.grant("a", 1, 2.0, now=0.0)
    table.set_ttl("a", 10.0, now=1.0)
    assert table.lapsed(10.9) == []
    assert table.lapsed(11.0) == [("a", 1)]


def test_a_shorter_ttl_keeps_the_deadline_and_applies_from_the_next_renewal():
    table = LeaseTable()
    table.grant("a", 1, 100.0, now=0.0)
    table.set_ttl("a", 10.0, now=1.0)
    assert table.deadline("a", 1) == 100.0  # not sooner than the TTL it last heard
    table.renew("a", 1, now=2.0)
    assert table.deadline("a", 1) == 12.0
    assert table.lapsed(11.9) == []
    assert table.lapsed(12.0) == [("a", 1)]  # seen at the new deadline, not at 100


def test_a_reported_lease_is_looked_at_again_only_after_recheck():
    table = LeaseTable()
    table.grant("a", 1, 1.0, now=0.0)
    assert table.lapsed(1.0) == [("a", 1)]
    table.renew("a", 1, now=1.2)  # renewed before the expiry was applied
    assert table.lapsed(5.0) == []  # the caller has it: nothing is reported twice
    table.recheck("a", now=1.2)
    assert table.lapsed(1.2) == []  # renewed: its new deadline is scheduled instead
    assert table.lapsed(2.2) == [("a", 1)]


def test_recheck_after_a_failed_expiry_reports_it_on_the_next_sweep():
    table = LeaseTable()
    table.grant("a", 1, 1.0, now=0.0)
    assert table.lapsed(1.0) == [("a", 1)]
    table.recheck("a", now=1.0)
    assert table.lapsed(1.5) == [("a", 1)]
    table.recheck("gone", now=1.5)  # unknown: nothing to look at
    assert table.lapsed(2.0) == []


def test_stale_heap_entries_are_compacted():
    table = LeaseTable()
    for epoch in range(1, 1001):  # re-registering one name over and over
        table.grant("a", epoch, 5.0, now=float(epoch))
    assert table.scheduled == 1000
    assert table.lapsed(0.0) == []
    assert table.scheduled <= 4 * len(table) + 64
    assert table.lapsed(1005.0) == [("a", 1000)]


# A model of the contract: each lease has a deadline (grant and renew: now + ttl; set_ttl:
# the later of the deadline and now + ttl). `lapsed(now)` never reports a lease before its
# deadline, and reports every lapsed lease unless it was reported before and not granted,
# set or rechecked since ("outstanding": the caller is expiring it).

NAMES = ("a", "b")
steps = st.lists(
    st.one_of(
        st.tuples(st.just("grant"), st.sampled_from(NAMES), st.integers(1, 5)),
        st.tuples(st.just("renew"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("set_ttl"), st.sampled_from(NAMES), st.integers(1, 5)),
        st.tuples(st.just("release"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("recheck"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("advance"), st.just(""), st.integers(0, 4)),
        st.tuples(st.just("lapsed"), st.just(""), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(steps)
# A TTL shortened by an update, then a renewal: the lease must lapse at the new, earlier
# deadline (a heap entry only at the old one would hide it until then).
@example([("grant", "a", 5), ("set_ttl", "a", 1), ("renew", "a", 0), ("advance", "", 2)])
def test_lapsed_is_never_early_and_never_misses_a_lease(script):  # noqa: C901 - a step a branch
    table = LeaseTable()
    now = 0.0
    leases: dict[str, tuple[int, float, float]] = {}  # name -> (epoch, ttl, deadline)
    outstanding: set[str] = set()
    epoch = 0
    for step, name, value in [*script, ("lapsed", "", 0)]:
        if step == "grant":
            epoch += 1
            table.grant(name, epoch, float(value), now)
            leases[name] = (epoch, float(value), now + value)
            outstanding.discard(name)
        elif step == "renew" and name in leases:
            lease_epoch, ttl, _ = leases[name]
            assert table.renew(name, lease_epoch, now) == ttl
            leases[name] = (lease_epoch, ttl, now + ttl)
        elif step == "set_ttl" and name in leases:
            lease_epoch, _, deadline = leases[name]
            table.set_ttl(name, float(value), now)
            leases[name] = (lease_epoch, float(value), max(deadline, now + value))
            outstanding.discard(name)
        elif step == "release":
            table.release(name)
            leases.pop(name, None)
            outstanding.discard(name)
        elif step == "recheck":
            table.recheck(name, now)
            outstanding.discard(name)
        elif step == "advance":
            now += value
        elif step == "lapsed":
            reported = table.lapsed(now)
            for found, found_epoch in reported:
                assert found in leases
                assert leases[found][0] == found_epoch
                assert leases[found][2] <= now  # never early
            due = {n for n, (_, _, deadline) in leases.items() if deadline <= now}
            assert due - outstanding <= {n for n, _ in reported}  # never missed
            outstanding |= {n for n, _ in reported}
        for name_, (lease_epoch, _, deadline) in leases.items():
            assert table.deadline(name_, lease_epoch) == deadline

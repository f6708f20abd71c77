"""The presence ``Roster`` (PROTOCOL §5.2-5.4): snapshots, deltas and reconnect reconcile."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from metered_realtime.core import PresencePeer, Roster, RosterChange

SELF = "me"


def p(peer_id: str, **metadata: Any) -> PresencePeer:
    return PresencePeer(peer_id, dict(metadata) if metadata else None)


def ids(peers: tuple[PresencePeer, ...]) -> list[str]:
    return [x.peer_id for x in peers]


def awaiting(roster: Roster) -> bool:
    """``roster.awaiting_snapshot`` (a call, so that type narrowing does not stick)."""
    return roster.awaiting_snapshot


def seeded(*peers: PresencePeer) -> Roster:
    """A roster whose first frame (the snapshot) listed ``peers``."""
    roster = Roster("demo/lobby")
    roster.apply(peers, (), SELF)
    return roster


# --- the first frame --------------------------------------------------------------------


def test_first_frame_is_a_snapshot() -> None:
    roster = Roster("demo/lobby")
    assert awaiting(roster)
    change = roster.apply((p("a", n=1), p("b")), (), SELF)
    assert change == RosterChange(arrived=(p("a", n=1), p("b")), snapshot=True)
    assert list(roster.members) == ["a", "b"]
    assert roster.members["a"].metadata == {"n": 1}
    assert not awaiting(roster)


def test_first_frame_is_a_snapshot_even_if_it_looks_like_a_delta() -> None:
    """Only the ``joined`` array of the roster frame is used (§5.4 step 4)."""
    roster = Roster("c")
    change = roster.apply((p("a"),), (p("zz"),), SELF)
    assert change.snapshot
    assert ids(change.arrived) == ["a"]
    assert change.departed == ()
    assert list(roster.members) == ["a"]


def test_empty_snapshot() -> None:
    roster = Roster("c")
    assert roster.apply((), (), SELF) == RosterChange(snapshot=True)
    assert roster.members == {}
    assert not awaiting(roster)


def test_snapshot_skips_self_and_dedupes() -> None:
    roster = Roster("c")
    change = roster.apply((p("a"), p(SELF), p("b"), p("a", v=2), p(SELF)), (), SELF)
    assert ids(change.arrived) == ["a", "b"]
    assert SELF not in roster.members
    assert list(roster.members) == ["a", "b"]


def test_self_id_none_skips_nothing() -> None:
    roster = Roster("c")
    change = roster.apply((p(SELF), p("a")), (), None)
    assert ids(change.arrived) == [SELF, "a"]


# --- deltas -----------------------------------------------------------------------------


def test_second_frame_is_a_delta() -> None:
    roster = seeded(p("a"), p("b"))
    change = roster.apply((p("c", k=1),), (p("a"),), SELF)
    assert change == RosterChange(arrived=(p("c", k=1),), departed=(p("a"),))
    assert not change.snapshot
    assert list(roster.members) == ["b", "c"]


def test_delta_processes_joined_before_left() -> None:
    roster = seeded(p("a"))
    # a newcomer that joins and leaves in one frame: it arrives, then departs
    change = roster.apply((p("x"),), (p("x"),), SELF)
    assert ids(change.arrived) == ["x"]
    assert ids(change.departed) == ["x"]
    assert "x" not in roster.members
    # a known member listed in both: the join only refreshes it, the leave removes it
    change = roster.apply((p("a", v=9),), (p("a"),), SELF)
    assert change.arrived == ()
    assert change.departed == (p("a", v=9),)
    assert roster.members == {}


def test_duplicate_join_updates_metadata_without_second_arrival() -> None:
    roster = seeded(p("a", v=1))
    change = roster.apply((p("a", v=2),), (), SELF)
    assert change.arrived == ()
    assert change.departed == ()
    assert roster.members["a"].metadata == {"v": 2}
    change = roster.apply((p("n", v=1), p("n", v=2)), (), SELF)
    assert ids(change.arrived) == ["n"]
    assert roster.members["n"].metadata == {"v": 2}


def test_left_of_unknown_peer_is_ignored() -> None:
    roster = seeded(p("a"))
    change = roster.apply((), (p("ghost"), p(SELF)), SELF)
    assert change == RosterChange()
    assert list(roster.members) == ["a"]


def test_left_twice_departs_once() -> None:
    roster = seeded(p("a"), p("b"))
    change = roster.apply((), (p("a"), p("a")), SELF)
    assert ids(change.departed) == ["a"]


def test_departed_entry_is_the_known_one() -> None:
    """``left`` entries may lack metadata (§5.3); the departure reports what was known."""
    roster = seeded(p("a", name="Aurora"))
    change = roster.apply((), (p("a"),), SELF)
    assert change.departed == (p("a", name="Aurora"),)


def test_delta_join_of_self_is_skipped() -> None:
    roster = seeded(p("a"))
    change = roster.apply((p(SELF), p("b")), (), SELF)
    assert ids(change.arrived) == ["b"]
    assert SELF not in roster.members


# --- reconcile after a drop -------------------------------------------------------------


def test_stale_roster_diffs_next_frame_as_full_roster() -> None:
    roster = seeded(p("a", v=1), p("b", v=1), p("c", v=1))
    roster.mark_stale()
    assert awaiting(roster)
    change = roster.apply((p("d", v=1), p("b", v=2), p(SELF), p("a", v=1)), (p("b"),), SELF)
    assert change.snapshot
    assert change.departed == (p("c", v=1),)
    assert change.survivors == (p("b", v=2), p("a", v=1))  # refreshed from the roster
    assert change.arrived == (p("d", v=1),)
    assert roster.members == {"d": p("d", v=1), "b": p("b", v=2), "a": p("a", v=1)}
    assert roster.members["b"].metadata == {"v": 2}
    assert not awaiting(roster)
    # later frames are deltas again
    change = roster.apply((), (p("d"),), SELF)
    assert not change.snapshot
    assert ids(change.departed) == ["d"]


def test_stale_roster_with_empty_snapshot_departs_everyone() -> None:
    roster = seeded(p("a"), p("b"))
    roster.mark_stale()
    change = roster.apply((), (), SELF)
    assert ids(change.departed) == ["a", "b"]
    assert change.arrived == change.survivors == ()
    assert roster.members == {}


def test_mark_stale_twice_still_one_snapshot() -> None:
    roster = seeded(p("a"))
    roster.mark_stale()
    roster.mark_stale()
    assert roster.apply((p("a"),), (), SELF).snapshot
    assert not roster.apply((p("a"),), (), SELF).snapshot


def test_reconcile_dedupes_roster() -> None:
    roster = seeded(p("a"))
    roster.mark_stale()
    change = roster.apply((p("a", v=1), p("a", v=2), p("b"), p("b")), (), SELF)
    assert ids(change.survivors) == ["a"]
    assert ids(change.arrived) == ["b"]
    assert list(roster.members) == ["a", "b"]


def test_reconcile_with_new_self_id() -> None:
    """With a pk key our peer id changes across reconnects (P6): the new id is skipped."""
    roster = seeded(p("a"), p("old-me"))
    roster.mark_stale()
    change = roster.apply((p("a"), p("new-me")), (), "new-me")
    assert ids(change.departed) == ["old-me"]
    assert ids(change.survivors) == ["a"]
    assert change.arrived == ()


# --- properties -------------------------------------------------------------------------

PEER_IDS = st.sampled_from(["a", "b", "c", "d", "e", "f", SELF])
ENTRY = st.builds(
    PresencePeer, PEER_IDS, st.none() | st.fixed_dictionaries({"v": st.integers(0, 3)})
)
FRAME = st.lists(ENTRY, max_size=8).map(tuple)


@settings(max_examples=300, deadline=None)
@given(before=FRAME, after=FRAME, first_is_snapshot=st.booleans())
def test_reconcile_partitions_members(
    before: tuple[PresencePeer, ...],
    after: tuple[PresencePeer, ...],
    first_is_snapshot: bool,
) -> None:
    roster = Roster("c")
    if first_is_snapshot:
        roster.apply(before, (), SELF)
        roster.mark_stale()
        before_set = {x.peer_id for x in before} - {SELF}
    else:
        before_set = set()
    change = roster.apply(after, (), SELF)
    after_set = {x.peer_id for x in after} - {SELF}
    arrived, departed, survivors = (
        set(ids(change.arrived)),
        set(ids(change.departed)),
        set(ids(change.survivors)),
    )
    assert change.snapshot
    for group in (change.arrived, change.departed, change.survivors):
        assert len(ids(group)) == len(set(ids(group)))  # no duplicates
    assert arrived | survivors == after_set
    assert departed | survivors == before_set
    assert not arrived & survivors
    assert not departed & survivors
    assert not arrived & departed
    assert set(roster.members) == after_set
    first_of: dict[str, PresencePeer] = {}
    for x in after:
        first_of.setdefault(x.peer_id, x)
    for s in change.survivors:  # refreshed from the new roster
        assert s == first_of[s.peer_id] == roster.members[s.peer_id]


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.tuples(FRAME, FRAME), max_size=10))
def test_deltas_follow_a_set_model(
    frames: list[tuple[tuple[PresencePeer, ...], tuple[PresencePeer, ...]]],
) -> None:
    roster = Roster("c")
    roster.apply((), (), SELF)  # empty snapshot
    model: dict[str, PresencePeer] = {}
    for joined, left in frames:
        known = set(model)
        change = roster.apply(joined, left, SELF)
        assert not change.snapshot
        assert change.survivors == ()
        for entry in joined:
            if entry.peer_id != SELF:
                model[entry.peer_id] = entry
        arrived_expected = [i for i in dict.fromkeys(ids(joined)) if i != SELF and i not in known]
        departed_expected = [i for i in dict.fromkeys(ids(left)) if i in model]
        assert ids(change.arrived) == arrived_expected
        assert ids(change.departed) == departed_expected
        for gone in change.departed:
            assert gone == model.pop(gone.peer_id)
        assert roster.members == model

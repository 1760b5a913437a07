"""The resident index: slots found by version id through any sequence of adds, frees and growth."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.cache.table import VersionTable

#: Few distinct home buckets at first, so probe runs and their shifts on removal are exercised.
ids = st.integers(0, (1 << 63) - 1) | st.integers(0, 64).map(lambda i: i << 10)


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), ids), max_size=400))
def test_find_matches_a_dict_through_adds_and_frees(ops: list[tuple[bool, int]]) -> None:
    table = VersionTable()
    model: dict[int, int] = {}
    gen = 0
    for add, vid in ops:
        if add and vid not in model:
            gen += 1
            model[vid] = table.add(vid, gen, size=10, block_size=4)
        elif not add and vid in model:
            table.free(model.pop(vid))
        assert len(table) == len(model)
    for vid, slot in model.items():
        assert table.find(vid) == slot
        assert table.gen[slot] and table.vid[slot] == vid
    for _add, vid in ops:
        if vid not in model:
            assert table.find(vid) == -1
    assert sorted(table.slots()) == sorted(model.values())


def test_growth_keeps_every_slot_findable() -> None:
    table = VersionTable()
    slots = {vid * 0x9E3779B97F4A7C15 % (1 << 63): 0 for vid in range(50_000)}
    for gen, vid in enumerate(slots, start=1):
        slots[vid] = table.add(vid, gen, size=1, block_size=1)
    assert all(table.find(vid) == slot for vid, slot in slots.items())
    for vid in list(slots)[::2]:
        table.free(slots.pop(vid))
    assert all(table.find(vid) == slot for vid, slot in slots.items())
    assert table.tier_counts(2) == [len(slots), 0]

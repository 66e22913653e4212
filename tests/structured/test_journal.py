"""The structured search's journal: facts read back in the order taken, settings guarded, damage refused."""

import pytest

from autoprune.errors import UserError
from autoprune.structured.journal import JOURNAL_FILE, Journal, Scored, Timing, decode, encode
from autoprune.structured.layout import Plan

FACTS = {"model": "stories260K", "calib_windows": 8, "probe": {"batch": 1, "min_seconds": 1.0}}


def test_events_survive_the_codec():
    for event in (Timing(Plan(2, 1, 64), 1.41, 10.5, 14.8), Scored(Plan(2, 1, 64, (0, 3)), 17.25)):
        assert decode(encode(event)) == event


def test_nothing_is_written_before_start_and_facts_come_back_in_order(tmp_path):
    shape = Plan(1, 0, 8)
    j = Journal(tmp_path / "out", FACTS)
    j.timed(Timing(shape, 1.2, 10.0, 12.0))  # measured before the search is sure to run: held in memory
    assert not (tmp_path / "out").exists() and j.next_timing(shape) is None
    j.start()
    j.timed(Timing(shape, 1.3, 10.0, 13.0))
    assert j.score(Plan(1, 0, 8, (2,)), lambda p: 5.0) == 5.0

    again = Journal(tmp_path / "out", FACTS)
    assert again.replayed == 3
    assert [again.next_timing(shape).speedup for _ in range(2)] == [1.2, 1.3] and again.next_timing(shape) is None
    assert again.score(Plan(1, 0, 8, (2,)), lambda p: pytest.fail("recomputed a recorded score")) == 5.0


def test_other_settings_and_damage_are_refused_and_a_torn_line_cut(tmp_path):
    j = Journal(tmp_path, FACTS)
    j.start()
    j.timed(Timing(Plan(1), 1.2, 10.0, 12.0))
    path = tmp_path / JOURNAL_FILE
    with pytest.raises(UserError, match="calib_windows=8"):
        Journal(tmp_path, {**FACTS, "calib_windows": 16})
    whole = path.read_text()
    path.write_text(whole + '{"kind": "sco')
    assert Journal(tmp_path, FACTS).replayed == 1 and path.read_text() == whole
    path.write_text(whole + '{"kind": "lost"}\n')
    with pytest.raises(UserError, match=f"{JOURNAL_FILE}:3: damaged line"):
        Journal(tmp_path, FACTS)
    path.write_text(whole.split("\n", 1)[1])  # no settings first
    with pytest.raises(UserError, match=":1: damaged line"):
        Journal(tmp_path, FACTS)

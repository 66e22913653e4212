"""The journal's one codec and its pure replay: every event round-trips, journals written before
the codec still read, a torn last line is dropped, and a damaged one is refused in one line."""

from __future__ import annotations

import json
import math

import pytest

from autoprune.errors import UserError
from autoprune.messages import ProxyResult, ValidationResult
from autoprune.pruning.policy import Policy
from autoprune.search.events import (Done, Note, PhaseEnded, PhaseStarted, Reported, Scored, Selected, Submitted,
                                     decode, encode, replay)
from autoprune.search.journal import Journal, read_events

POLICY = Policy(metric="mul(abs(W), X)", sparsity=0.5, allocation="explicit", block_ratios=[0.4, 0.6])
EVENTS = [
    PhaseStarted("metric", 1.0),
    Submitted(1, "metric", "gp", POLICY, 2, False, {"generation": 0}, 1.5),
    Submitted(2, "metric", "gp", Policy(), None, True, {}, 1.6),
    Scored(1, ProxyResult(1.25, 0.5, 0.3, 512, masks="ab12"), 2.0),
    Scored(2, ProxyResult.failed("RuntimeError: out of memory"), 2.5),
    Note("RL gets final rewards only: no model", 2.6),
    PhaseEnded("metric", 3.0),
    Selected(1, ValidationResult(12.5, 4.0, 2048, 0.5, (0.4, 0.6)), 5.0),
    Selected("sparsegpt+owl@0.1", ValidationResult(14.0, 4.0, 2048, 0.5, (0.45, 0.55)), 6.0),
    Selected("wanda", ValidationResult.failed("ValueError: bad"), 6.5),
    Reported(1, ValidationResult(19.0, 3.0, 4096, 0.5, (0.4, 0.6)), 7.0),
    Reported("dense", ValidationResult(9.0, 3.0, 4096, 0.0), 7.5),
    Done(8.0),
]


def _same(a, b) -> bool:
    """Equal, NaN fields included (a failed result's sparsity is NaN)."""
    return json.dumps(encode(a), sort_keys=True) == json.dumps(encode(b), sort_keys=True) and type(a) is type(b)


def test_every_event_round_trips_through_json():
    for e in EVENTS:
        back = decode(json.loads(json.dumps(encode(e))))
        assert _same(back, e), (e, back)
    assert decode(encode(EVENTS[3])) == EVENTS[3]


def test_replay_folds_the_events_into_the_search_state():
    state = replay(EVENTS, max_batches=4)
    assert list(state.submitted) == [1, 2] and state.next_id == 3
    assert state.scored[1].fidelity == 0.5 and state.scored[1].full is False  # 2 of 4 proxy batches
    assert state.scored[2].result.error and state.scored[2].fidelity == 1.0 and not state.scored[2].full
    assert state.started == ["metric"] and state.ended == ["metric"]
    assert set(state.selected) == {1, "sparsegpt+owl@0.1", "wanda"} and math.isinf(state.selected["wanda"].perplexity)
    assert set(state.reported) == {1, "dense"} and state.done and state.events == len(EVENTS)
    assert state.pending() == []
    assert replay(EVENTS[:3], 4).pending() == EVENTS[1:3]
    # the flat row tracking and the CSV read: the submit line with its result and fidelity
    row = state.scored[1].row()
    assert row["id"] == 1 and row["policy"] == POLICY.to_dict() and row["result"]["loss"] == 1.25
    assert row["fidelity"] == 0.5 and row["strategy"] == "gp"


def test_journals_from_before_the_codec_still_read(tmp_path):
    """Lines as the first journals wrote them (no tag, no sequential, a failure's result without
    its later fields, a validation without block ratios) decode to the same events."""
    old = [
        {"event": "phase_start", "phase": "metric", "t": 0.5},
        {"event": "submit", "id": 1, "phase": "metric", "strategy": "random", "policy": Policy().to_dict(),
         "batches": None, "t": 1.0},
        {"event": "result", "id": 1, "result": {"loss": 2.0, "sparsity": 0.5, "seconds": 0.1, "tokens": 10,
                                                "error": None, "unknown_later_field": 1}, "t": 1.2},
        {"event": "validate", "id": 1, "result": {"perplexity": 15.0, "tokens": 10, "sparsity": 0.5, "seconds": 2.0},
         "t": 3.0},
        {"event": "report", "key": 1, "result": {"error": "worker died"}, "t": 4.0},
    ]
    path = tmp_path / "journal.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in old))
    state = replay(read_events(path), 4)
    assert state.scored[1].result.loss == 2.0 and state.scored[1].submitted.tag == {}
    assert state.selected[1].perplexity == 15.0 and state.reported[1].error == "worker died"


def test_a_torn_last_line_is_dropped_and_a_damaged_one_refused(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    for e in EVENTS[:4]:
        j.append(e)
    j.close()
    with open(path, "a") as f:
        f.write('{"event": "result", "id": 2, "res')  # killed mid-write
    again = Journal(path)
    assert len(again.events) == 4
    again.append(EVENTS[4])
    again.close()
    assert len(read_events(path)) == 5 and path.read_text().count("\n") == 5
    path.write_text(path.read_text() + '{"event": "result", "id": "x"}\n')
    with pytest.raises(UserError, match="line 6"):
        Journal(path)
    path.write_text('{"event": "teleport"}\n')
    with pytest.raises(UserError, match="unknown kind"):
        read_events(path)

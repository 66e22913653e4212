"""Budgets, and the random baseline as a strategy (ask/tell/best/done/state round trip)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search.base import SearchContext, run_serial
from autoprune.search.budget import Budget, parse_budget
from autoprune.search.random_search import RandomStrategy, balanced_ratios


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("20m", 1200), ("8h", 28800), ("1h30m", 5400),
                                          ("1.5m", 90), (" 2D ", 172800)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "5 minutes", "-5m", "0s", "1h-3m", "5m30", "abc"])
def test_malformed_budget_is_a_user_error(text):
    with pytest.raises(UserError, match="budget"):
        parse_budget(text)


def test_budget_counts_earlier_sessions():
    now = [100.0]
    b = Budget(60, spent=20, clock=lambda: now[0])
    assert b.elapsed == 20 and b.left == 40
    now[0] = 110.0
    assert b.left == 30
    assert b.at(1.0) == 140.0 and b.until(0.5) == -0.0


def test_balanced_ratios_hold_the_weighted_target():
    w = [10, 30, 60]
    r = balanced_ratios(0.7, [0.3, -0.2, 0.25], w)
    assert all(0 <= x <= 0.99 for x in r)
    assert sum(x * n for x, n in zip(r, w)) / sum(w) == pytest.approx(0.7, abs=1e-9)


def _context(tmp_path: Path, policy: Policy) -> SearchContext:
    sizes = tuple({"q": 100 * (i + 1), "mlp": 300} for i in range(4))
    return SearchContext(policy, sizes, max_batches=2, seed=3, run_dir=tmp_path)


def _fake_loss(policy: Policy) -> ProxyResult:
    """A deterministic stand-in objective with a known optimum (wanda, uniform)."""
    loss = {"wanda": 1.0, "ria": 1.2, "magnitude": 2.0}[policy.metric]
    if policy.block_ratios is not None:
        loss += sum(abs(r - policy.sparsity) for r in policy.block_ratios)
    elif policy.allocation == "owl":
        loss += policy.owl_lambda
    return ProxyResult(loss, policy.sparsity, 0.0, 1)


def test_random_metric_phase_covers_the_grid_then_is_done(tmp_path):
    s = RandomStrategy(_context(tmp_path, Policy(sparsity=0.6)), {"phase": "metric"})
    n = run_serial(s, lambda cs: [_fake_loss(c.policy) for c in cs], max_candidates=100, batch=4)
    assert n == 3 * 5 and s.done() and s.ask(1) == []
    best, loss = s.best()
    assert (best.metric, best.allocation, loss) == ("wanda", "uniform", 1.0)


def test_random_allocation_phase_keeps_metric_and_target(tmp_path):
    ctx = _context(tmp_path, Policy(metric="ria", sparsity=0.6))
    s = RandomStrategy(ctx, {"phase": "allocation", "spread": 0.2})
    cands = s.ask(5)
    assert len(cands) == 5 and len({c.policy.block_ratios for c in cands}) == 5
    weights = [sum(b.values()) for b in ctx.block_sizes]
    for c in cands:
        assert c.policy.metric == "ria" and c.policy.allocation == "explicit"
        assert sum(r * w for r, w in zip(c.policy.block_ratios, weights)) / sum(weights) == pytest.approx(0.6)


def test_random_state_round_trip_continues_identically(tmp_path):
    ctx = _context(tmp_path, Policy(sparsity=0.5))
    a = RandomStrategy(ctx, {"phase": "allocation"})
    for c in a.ask(3):
        a.tell(c, _fake_loss(c.policy))
    b = RandomStrategy(ctx, {"phase": "allocation"})
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # as the orchestrator stores it
    assert b.best() == a.best()
    assert [c.policy for c in b.ask(2)] == [c.policy for c in a.ask(2)]


def test_nm_pattern_leaves_no_allocation_to_search(tmp_path):
    s = RandomStrategy(_context(tmp_path, Policy(sparsity=0.5, pattern="2:4")), {"phase": "allocation"})
    assert s.done() and s.ask(3) == []

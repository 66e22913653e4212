"""The evolutionary allocation search: arms (mask x update) chosen first, every child exact to the
target within per-linear bounds, multi-step selection, a parent that only improves, resume."""

from __future__ import annotations

import copy
import json

import pytest

from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.pruning.engine import collect_stats
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import allocation_sparsity
from autoprune.search.base import SearchContext, run_serial
from autoprune.config import read
from autoprune.search.evo import EvoSpace, EvoStrategy, arms


@pytest.fixture(scope="module")
def evaluator(stories, calib):
    model = copy.deepcopy(stories.model)
    return ProxyEvaluator(model, collect_stats(model, calib, progress=False), calib[:8], proxy_batch=2,
                          calib_windows=calib)


def _sizes(evaluator):
    from autoprune.models import decoder_blocks, prunable_linears

    _, blocks = decoder_blocks(evaluator.model)
    return tuple({n: lin.weight.numel() for n, lin in prunable_linears(b).items()} for b in blocks)


def _context(evaluator, tmp_path, base=Policy(sparsity=0.7), updates=("none", "sparsegpt", "admm"), warm=()):
    return SearchContext(base, _sizes(evaluator), evaluator.max_batches, 0, tmp_path, warm, updates)


def _run(evo, evaluator, n, log=None):
    def evaluate(cands):
        if log is not None:
            log.extend(cands)
        return [evaluator.evaluate(c.policy, c.batches) for c in cands]
    return run_serial(evo, evaluate, n, batch=8)


def test_arms_then_exact_children_and_multi_step_selection(evaluator, tmp_path):
    ctx = _context(evaluator, tmp_path, warm=((0.6, 0.65, 0.7, 0.75, 0.8),))
    evo = EvoStrategy(ctx, {"offspring": 8, "fidelities": [1, 2, None], "survivors": [3, 1], "bounds": [0.1, 0.9]})
    log = []
    _run(evo, evaluator, 60, log)
    assert arms(ctx.base_policy, ctx.updates) == [("wanda", "none"), ("wanda", "sparsegpt"), ("wanda", "admm"),
                                                  ("sparsegpt", "sparsegpt"), ("sparsegpt", "admm")]
    first = log[:5]  # the arms, uniform, at full fidelity
    assert [(c.policy.metric, c.policy.update, c.policy.allocation, c.batches) for c in first] == \
        [(m, u, "uniform", None) for m, u in arms(ctx.base_policy, ctx.updates)]
    best_arm = min(evo.arm_losses, key=evo.arm_losses.get)
    assert f"{evo.arm[0]}|{evo.arm[1]}" == best_arm
    children = [c for c in log if c.tag.get("stage") == "evolve"]
    assert [c.batches for c in children[:12]] == [1] * 8 + [2] * 3 + [None]
    sizes = [n for blk in ctx.block_sizes for n in blk.values()]
    for c in children:
        assert (c.policy.metric, c.policy.update) == evo.arm
        assert allocation_sparsity(c.policy, ctx.block_sizes) == pytest.approx(0.7, abs=0.5 / sum(sizes))
        ratios = [r for blk in c.policy.layer_ratios for _, r in blk]
        assert all(0.1 - 1e-9 <= r <= 0.9 + 1e-9 for r in ratios)
    res = evaluator.evaluate(evo.best()[0])
    assert res.ok and res.sparsity == pytest.approx(0.7, abs=1e-4)
    assert evo.parent[1] <= min(evo.arm_losses.values())  # the parent only ever improves


def test_nm_chooses_the_arm_only_and_resumes(evaluator, tmp_path):
    base = Policy.from_method("wanda", 0.5, "2:4")
    evo = EvoStrategy(_context(evaluator, tmp_path, base), {})
    assert _run(evo, evaluator, 50) == len(arms(base, ("none", "sparsegpt", "admm"))) and evo.done()
    again = EvoStrategy(_context(evaluator, tmp_path, base), {})
    again.load_state_dict(evo.state_dict())
    assert again.done() and again.arm == evo.arm and again.best()[1] == evo.best()[1]


def test_resume_keeps_the_parent(evaluator, tmp_path):
    evo = EvoStrategy(_context(evaluator, tmp_path, updates=("none",)), {"offspring": 4, "survivors": [2, 1]})
    _run(evo, evaluator, 30)
    again = EvoStrategy(_context(evaluator, tmp_path, updates=("none",)), {"offspring": 4, "survivors": [2, 1]})
    again.load_state_dict(json.loads(json.dumps(evo.state_dict(), allow_nan=False)))
    assert again.parent == evo.parent and again.generation == evo.generation
    cands = again.ask(4)  # the rung in flight goes on: what the original asks next
    assert cands and all(c.tag["stage"] == "evolve" for c in cands) and cands == evo.ask(4)


def test_bad_spaces_are_refused(evaluator, tmp_path):
    with pytest.raises(UserError, match="unknown keys"):
        read(EvoSpace, {"offspring": 4, "children": 3}, "evo.yaml")
    with pytest.raises(UserError, match="one rung more"):
        read(EvoSpace, {"fidelities": [1, None], "survivors": [4, 1]}, "evo.yaml")
    with pytest.raises(UserError, match="unknown update"):
        EvoStrategy(_context(evaluator, tmp_path, updates=("none", "obs")), {})

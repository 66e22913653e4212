"""BOStrategy: Optuna ask/tell, multi-fidelity pruning, resuming an interrupted study from storage."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyEvaluator, ProxyResult
from autoprune.evaluation.ratio_proxy import RatioProxy
from autoprune.pruning.engine import collect_stats
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import allocation_sparsity
from autoprune.search.base import SearchContext, run_serial
from autoprune.search.bo import BOSpaces, BOStrategy

SIZES = tuple({"self_attn.q_proj": 4096, "mlp.up_proj": 11008} for _ in range(4))
GOAL = (0.45, 0.55, 0.75, 0.65)  # the allocation the synthetic objective prefers


def bowl(policy: Policy, batches: int) -> ProxyResult:
    """A smooth objective over block ratios, noisier at low fidelity (a stand-in for the model)."""
    loss = sum((r - g) ** 2 for r, g in zip(policy.block_ratios, GOAL)) + 0.05 * (sum(policy.block_ratios) % 0.1) / batches
    return ProxyResult(loss, policy.sparsity, 0.0, 100 * batches)


def context(run_dir: Path) -> SearchContext:
    return SearchContext(Policy(sparsity=0.6), SIZES, max_batches=4, seed=0, run_dir=run_dir)


def space(**kw) -> dict:
    return {"allocation": "per_block", "n_trials": 12, "n_startup_trials": 4, "fidelities": [1, None], **kw}


def evaluate(cands):
    return [bowl(c.policy, c.batches) for c in cands]


def test_bo_improves_on_uniform_and_meets_the_target(tmp_path):
    bo = BOStrategy(context(tmp_path), space(n_trials=25, fidelities=[]))
    seen = []
    run_serial(bo, lambda cs: seen.extend(cs) or evaluate(cs), 1000)
    assert bo.done() and bo.finished() == 25
    assert (tmp_path / "optuna.db").exists()
    assert seen[0].policy.block_ratios == pytest.approx([0.6] * 4, abs=1e-4)  # the uniform baseline first
    for c in seen:
        assert round(allocation_sparsity(c.policy, SIZES) * sum(sum(b.values()) for b in SIZES)) == round(0.6 * 4 * 15104)
    policy, loss = bo.best()
    assert loss < bowl(seen[0].policy, 4).loss / 2


@pytest.mark.parametrize("name", ["per_block", "attn_mlp", "depth_curve"])
def test_warm_starts_are_the_first_trials_after_uniform(tmp_path, name):
    owl_like = (0.55, 0.58, 0.62, 0.65)
    ctx = SearchContext(Policy(sparsity=0.6), SIZES, 4, 0, tmp_path, warm_starts=(owl_like, (0.6,) * 4))
    bo = BOStrategy(ctx, space(allocation=name, n_trials=6, fidelities=[]))
    seen = []
    run_serial(bo, lambda cs: seen.extend(cs) or evaluate(cs), 1000)
    assert seen[0].policy.block_ratios == pytest.approx([0.6] * 4, abs=1e-4)  # uniform, once: no duplicate
    assert seen[1].policy.block_ratios == pytest.approx(owl_like, abs=0.02)  # projected onto the target
    assert seen[2].policy.block_ratios != pytest.approx([0.6] * 4, abs=1e-4)  # the sampler's own trials


def test_one_study_per_space_asked_in_turn_and_resumed(tmp_path):
    two = space(allocation=["per_block", "attn_mlp"], n_trials=5, fidelities=[])
    bo = BOSpaces(context(tmp_path), two)
    seen = []
    run_serial(bo, lambda cs: seen.extend(cs) or evaluate(cs), 1000)
    assert bo.done() and len(seen) == 10
    assert [c.tag["space"] for c in seen[:4]] == ["per_block", "attn_mlp"] * 2
    assert (tmp_path / "per_block" / "optuna.db").exists() and (tmp_path / "attn_mlp" / "optuna.db").exists()
    assert bo.best()[1] == min(p.best()[1] for p in bo.parts.values())
    again = BOSpaces(context(tmp_path), two)  # a restart finds both studies finished
    again.load_state_dict(json.loads(json.dumps(bo.state_dict())))
    assert again.done() and again.ask(1) == [] and again.best() == bo.best()
    one = BOSpaces(context(tmp_path / "one"), space(n_trials=2, fidelities=[]))  # a single space: as before
    assert list(one.parts) == ["per_block"] and one.parts["per_block"].storage.endswith("one/optuna.db")
    for bad in ([], ["per_block", "per_block"], 3):
        with pytest.raises(UserError, match="allocation must be"):
            BOSpaces(context(tmp_path / "bad"), space(allocation=bad))


def test_weak_trials_are_pruned_at_low_fidelity(tmp_path):
    bo = BOStrategy(context(tmp_path), space(n_trials=30, fidelities=[1, 4]))
    seen = []
    run_serial(bo, lambda cs: seen.extend(cs) or evaluate(cs), 1000)
    trials = bo.study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and len(pruned) + len(complete) == 30
    assert all(list(t.intermediate_values) == [1] for t in pruned)
    assert sum(c.batches == 4 for c in seen) == len(complete)


def test_gp_sampler(tmp_path):
    bo = BOStrategy(context(tmp_path), space(sampler="gp", n_trials=6, n_startup_trials=3, fidelities=[]))
    run_serial(bo, evaluate, 100)
    assert isinstance(bo.study.sampler, optuna.samplers.GPSampler) and bo.finished() == 6


INTERRUPTED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from test_bo import BOStrategy, context, space, bowl
from pathlib import Path
bo = BOStrategy(context(Path({run_dir!r})), space(n_trials=12))
told = 0
while True:
    cand = bo.ask(1)[0]
    if told == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # dies with this candidate in flight
    bo.tell(cand, bowl(cand.policy, cand.batches))
    told += 1
"""


def test_interrupted_bo_resumes_without_losing_completed_trials(tmp_path):
    script = INTERRUPTED.format(tests=str(Path(__file__).parent), run_dir=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    name = optuna.get_all_study_names(storage)[0]
    before = optuna.load_study(study_name=name, storage=storage).get_trials()
    finished = {t.number: (t.state, t.value) for t in before if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    running = [t for t in before if t.state == TrialState.RUNNING]
    assert finished and running

    bo = BOStrategy(context(tmp_path), space(n_trials=12))
    assert bo.study_name == name and bo.finished() == len(finished)
    first = bo.ask(1)[0]
    assert all(first.tag["trial"] != t.number for t in running)
    assert first.policy == bo.allocation.decode(running[0].params, Policy(sparsity=0.6), SIZES)
    bo.tell(first, bowl(first.policy, first.batches))
    run_serial(bo, evaluate, 1000)
    after = {t.number: t for t in bo.study.get_trials()}
    for number, (state, value) in finished.items():
        assert (after[number].state, after[number].value) == (state, value)
    assert all(after[t.number].state == TrialState.FAIL for t in running)
    assert bo.finished() == 12 and bo.done()


def test_restart_from_state_dict_adopts_trials_in_flight(tmp_path):
    """The orchestrator's protocol: restore state_dict(), then deliver the results of what was in flight."""
    bo = BOStrategy(context(tmp_path), space(n_trials=10, fidelities=[1, 4]))
    first = bo.ask(3)
    bo.tell(first[0], bowl(first[0].policy, first[0].batches))
    state = bo.state_dict()
    assert len(state["inflight"]) + len(state["promoted"]) == 3
    del bo  # the process stops here

    bo = BOStrategy(context(tmp_path), space(n_trials=10, fidelities=[1, 4]))
    bo.load_state_dict(state)
    for cand in first[1:]:
        bo.tell(cand, bowl(cand.policy, cand.batches))
    run_serial(bo, evaluate, 1000)
    states = [t.state for t in bo.study.get_trials()]
    assert TrialState.FAIL not in states and bo.finished() == 10 and bo.done()
    bo.tell(first[0], bowl(first[0].policy, 1))  # a late replay of a finished trial changes nothing
    assert bo.finished() == 10


def test_bad_input(tmp_path):
    ctx = context(tmp_path)
    with pytest.raises(UserError, match="bo.yaml: sampler must be one of tpe, gp, got 'cmaes'"):
        BOStrategy(ctx, space(sampler="cmaes"))
    with pytest.raises(UserError, match="unknown keys colour"):
        BOStrategy(ctx, space(colour="red"))
    with pytest.raises(UserError, match="unknown allocation space 'nope'"):
        BOStrategy(ctx, space(allocation="nope"))
    for bad in ([4, 1], [None, 2], [True], "1,2"):
        with pytest.raises(UserError, match="bo.yaml: fidelities must be"):
            BOStrategy(ctx, space(fidelities=bad))
    # rungs past the proxy's 4 batches collapse onto the full fidelity
    assert BOStrategy(ctx, space(fidelities=[2, 8, None], study_name="collapse")).rungs == (2, 4)
    with pytest.raises(UserError, match="cannot open Optuna storage"):
        BOStrategy(ctx, space(storage="nosuchdb://x"))
    with pytest.raises(UserError, match="cannot meet the target"):
        bo = BOStrategy(ctx, space(allocation={"kind": "per_block", "bounds": [0.0, 0.5]}))
        bo.ask(1)


def test_bo_on_the_real_proxy(stories, calib, tmp_path):
    model = copy.deepcopy(stories.model)
    evaluator = ProxyEvaluator(model, collect_stats(model, calib, progress=False), calib[:8])
    base = Policy.from_method("wanda", 0.7)
    proxy = RatioProxy(evaluator, base)
    sizes = tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()} for blk in proxy.blocks)
    ctx = SearchContext(base, sizes, evaluator.max_batches, 0, tmp_path)
    bo = BOStrategy(ctx, {"allocation": "per_block", "n_trials": 8, "n_startup_trials": 4, "fidelities": []})
    results = []

    def run(cands):
        out = [proxy.evaluate(c.policy, c.batches) for c in cands]
        results.extend(out)
        return out

    run_serial(bo, run, 100)
    assert all(r.ok and r.sparsity == pytest.approx(0.7, abs=1e-6) for r in results)
    policy, loss = bo.best()
    assert loss <= proxy.evaluate(base).loss

"""The allocation environment (check_env, budget by construction, block damage) and RLStrategy."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from autoprune.errors import UserError
from autoprune.evaluation.block_damage import BlockDamage
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.evaluation.ratio_proxy import RatioProxy
from autoprune.models.layers import decoder_blocks
from autoprune.pruning.engine import apply_policy, collect_stats
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import allocation_sparsity
from autoprune.search.base import Candidate, SearchContext, run_serial
from autoprune.search.rl import RLStrategy
from autoprune.search.rl_env import AllocationEnv, make_units

BASE = Policy.from_method("wanda", 0.6)


@pytest.fixture(scope="module")
def proxy(stories, calib):
    model = copy.deepcopy(stories.model)
    evaluator = ProxyEvaluator(model, collect_stats(model, calib, progress=False), calib[:8])
    return RatioProxy(evaluator, BASE)


@pytest.fixture(scope="module")
def damage(proxy, calib):
    return BlockDamage(proxy, calib[:4])


def sizes_of(proxy):
    return tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()} for blk in proxy.blocks)


def make_env(proxy, damage, unit="block"):
    sizes = sizes_of(proxy)
    return AllocationEnv(BASE, sizes, make_units(sizes, unit), lambda p: proxy.evaluate(p).loss, damage)


def test_check_env(proxy, damage):
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = make_env(proxy, damage)
    gym_check(env, skip_render_check=True)
    sb3_check(env, warn=True)


@pytest.mark.slow
@pytest.mark.parametrize("unit", ["block", "linear"])
def test_budget_holds_by_construction(proxy, damage, unit):
    env = make_env(proxy, damage, unit)
    sizes = sizes_of(proxy)
    total = sum(sum(b.values()) for b in sizes)
    rng = np.random.default_rng(0)
    episodes = ([1.0] * 40, [-1.0] * 40, rng.uniform(-1, 1, 40))
    for actions in episodes if unit == "block" else episodes[2:]:  # 35 linear steps: one episode
        obs, _ = env.reset()
        done, t = False, 0
        while not done:
            obs, reward, done, _, info = env.step(np.array([actions[t]], dtype=np.float32))
            assert np.isfinite(reward) and env.observation_space.contains(obs)
            t += 1
        assert t == len(env.units) and np.isfinite(info["loss"])
        assert all(0.0 <= r <= 0.95 + 1e-9 for r in env.ratios)
        assert np.dot(env.ratios, env.sizes) == pytest.approx(0.6 * total)
        assert round(allocation_sparsity(env.last_policy, sizes) * total) == round(0.6 * total)


def test_block_damage_adds_up_to_the_error_of_the_pruned_model(proxy, damage, calib):
    env = make_env(proxy, damage)
    env.reset()
    damages, done = [], False
    for a in (0.5, -0.3, 0.9, -1.0, 0.0):
        _, _, done, _, info = env.step(np.array([a], dtype=np.float32))
        damages.append(info["damage"])
    assert done and all(d > 0 for d in damages[:4])
    # independently: the engine prunes a copy one-shot, and the last block's outputs are compared
    model = copy.deepcopy(proxy.evaluator.model)
    proxy.evaluator.restore()
    _, blocks = decoder_blocks(model)
    dense_out, pruned_out = [], []
    for store, policy in ((dense_out, None), (pruned_out, env.ratios)):
        if policy is not None:
            apply_policy(model, Policy(sparsity=0.6, allocation="explicit", block_ratios=policy), proxy.evaluator.stats)
        h = blocks[-1].register_forward_hook(lambda _m, _i, out, s=store: s.append(out[0] if isinstance(out, tuple) else out))
        with torch.no_grad():
            for batch in calib[:4].split(8):
                model(batch, use_cache=False)
        h.remove()
    err = sum(((p - d) ** 2).sum() for p, d in zip(pruned_out, dense_out)) / sum((d ** 2).sum() for d in dense_out)
    assert sum(damages) == pytest.approx(err.item(), rel=1e-4)
    env.reset()
    assert damage.step(env.units[0], 0.0) == 0.0


@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_rl_strategy_searches_and_leaves_the_model_dense(proxy, damage, tmp_path, algorithm):
    dense = {n: lin.weight.clone() for n, lin in proxy.evaluator.linears.items()}
    sizes = sizes_of(proxy)
    ctx = SearchContext(BASE, sizes, proxy.evaluator.max_batches, 0, tmp_path)
    rl = RLStrategy(replace(ctx, damage=damage), {"algorithm": algorithm, "episodes": 12})
    results = []

    def evaluate(cands):
        out = [proxy.evaluate(c.policy, c.batches) for c in cands]
        results.extend(out)
        return out

    stranger = Candidate(BASE, None, {"episode": 99})
    rl.tell(stranger, proxy.evaluate(BASE))  # not an episode of this agent (a replay): ignored
    assert run_serial(rl, evaluate, 100) == 12 and rl.done() and rl.ask(1) == []
    assert all(r.ok and r.sparsity == pytest.approx(0.6, abs=1e-6) for r in results)
    policy, loss = rl.best()
    assert loss == min(r.loss for r in results) and len(rl.history) == 12
    assert all(torch.equal(dense[n], lin.weight) for n, lin in proxy.evaluator.linears.items())


def test_final_reward_only_without_a_damage_oracle(proxy, tmp_path):
    ctx = SearchContext(BASE, sizes_of(proxy), proxy.evaluator.max_batches, 0, tmp_path)
    rl = RLStrategy(ctx, {"episodes": 3, "unit": "linear"})
    assert run_serial(rl, lambda cs: [proxy.evaluate(c.policy) for c in cs], 10) == 3
    assert rl.env.features.shape == (35, 0) and rl.best() is not None


def test_bad_input(proxy, tmp_path):
    ctx = SearchContext(BASE, sizes_of(proxy), 1, 0, tmp_path)
    with pytest.raises(UserError, match="rl.yaml: algorithm must be one of ppo, sac, ddpg, got 'a2c'"):
        RLStrategy(ctx, {"algorithm": "a2c"})
    with pytest.raises(UserError, match="unknown keys gamma"):
        RLStrategy(ctx, {"gamma": 0.9})
    with pytest.raises(UserError, match="rl.yaml: unit must be one of block, linear, got 'head'"):
        RLStrategy(ctx, {"unit": "head"})
    with pytest.raises(UserError, match="invalid agent arguments"):
        RLStrategy(ctx, {"agent": {"no_such_argument": 1}})
    with pytest.raises(UserError, match=r"bounds \[0, 0.5\] cannot meet the target sparsity 0.6"):
        RLStrategy(ctx, {"bounds": [0.0, 0.5]})


def test_block_damage_calls_leave_the_model_dense(proxy, damage):
    dense = {n: lin.weight.clone() for n, lin in proxy.evaluator.linears.items()}
    units = make_units(sizes_of(proxy), "linear")
    damage.features(units)
    damage.reset()
    for unit in units[:9]:  # into the second block, mid-way
        assert damage.step(unit, 0.7) > 0
        assert all(torch.equal(dense[n], lin.weight) for n, lin in proxy.evaluator.linears.items())


@pytest.fixture(scope="module")
def worker():
    from autoprune.search.workers import ProxyWorker, WorkerSpec

    spec = WorkerSpec("stories260K", calib_windows=8, proxy_windows=8, eval_windows=8, seqlen=128, gradients=False,
                      device="cpu", dtype="float32")
    w = ProxyWorker(spec)
    assert w.ready()["error"] is None
    return w


def test_evaluate_between_damage_steps_on_a_worker_changes_nothing(worker):
    sizes = tuple(dict(b) for b in worker.ready()["block_sizes"])
    units = make_units(sizes, "linear")
    ratios = np.linspace(0.2, 0.9, len(units))
    assert worker.damage_start(BASE) is None
    features = worker.damage("features", units)
    worker.damage("reset")
    alone = [worker.damage("step", u, r) for u, r in zip(units, ratios)]
    others = [Policy(sparsity=0.6, allocation="explicit", block_ratios=[0.3, 0.9, 0.5, 0.7, 0.6]),  # the damage's ranks
              Policy(metric="magnitude", sparsity=0.6, allocation="explicit", block_ratios=[0.6] * 5),  # new ranks
              Policy.from_method("ria", 0.6, allocation="owl")]  # pruned from scratch
    expected = [worker.evaluate(p).loss for p in others]
    dense = {n: lin.weight.clone() for n, lin in worker.evaluator.linears.items()}
    worker.damage("reset")
    interleaved = []
    for i, (u, r) in enumerate(zip(units, ratios)):
        interleaved.append(worker.damage("step", u, r))
        assert worker.evaluate(others[i % 3]).loss == expected[i % 3]
    assert interleaved == alone and sum(d > 0 for d in alone) >= len(units) - 2
    assert np.array_equal(worker.damage("features", units), features)
    assert all(torch.equal(dense[n], lin.weight) for n, lin in worker.evaluator.linears.items())
    assert "2:4" in worker.damage_start(Policy.from_method("wanda", 0.5, "2:4"))
    with pytest.raises(RuntimeError, match="no block damage"):
        worker.damage("step", units[0], 0.5)


def test_worker_block_ratios_are_the_engines(worker):
    from autoprune.pruning.allocation import block_ratios
    from autoprune.pruning.engine import blocks_linears

    got = worker.block_ratios(BASE, ["owl", "alpha"])
    bls = blocks_linears(worker.lm.model)
    for name in ("owl", "alpha"):
        policy = replace(BASE, allocation=name, block_ratios=None, layer_ratios=None)
        assert got[name] == pytest.approx(block_ratios(policy, bls, worker.evaluator.stats.X))
    assert got["owl"] != pytest.approx([BASE.sparsity] * len(bls))
    assert worker.block_ratios(Policy(metric="wanda", pattern="2:4"), ["owl", "alpha"]) == {}


@pytest.mark.parametrize("algorithm", ["ppo", "sac"])
def test_a_resumed_agent_continues_where_it_stopped(proxy, damage, tmp_path, algorithm):
    """K episodes, the state through JSON, a new strategy (same seed) replays them without
    evaluating anything or stepping the damage oracle, then the next M equal an uninterrupted run's."""
    import json

    ctx = SearchContext(BASE, sizes_of(proxy), proxy.evaluator.max_batches, 0, tmp_path, damage=damage)
    space = {"algorithm": algorithm, "episodes": 14, "agent": {"n_steps": 10, "batch_size": 10} if algorithm == "ppo"
             else {"learning_starts": 10}}  # the agent learns within the replayed episodes
    evaluate = lambda cands: [proxy.evaluate(c.policy) for c in cands]  # noqa: E731
    whole = RLStrategy(ctx, space)
    seen = []
    run_serial(whole, lambda cs: seen.extend(cs) or evaluate(cs), 100)
    first = RLStrategy(ctx, space)
    run_serial(first, evaluate, 6)
    open_ = first.ask(1)  # in flight when the search stops
    state = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    assert len(state["episodes"]) == 6 and state["pending"]["damages"] == open_[0].tag["damages"]
    calls = []
    counting = type("Counting", (), {"features": lambda s, u: damage.features(u), "reset": lambda s: damage.reset(),
                                     "step": lambda s, u, r: calls.append(u) or damage.step(u, r)})()
    second = RLStrategy(replace(ctx, damage=counting), space)
    second.load_state_dict(state)
    assert calls == [] and second.ask(1) == []  # replayed; the open episode is asked again, waiting for its result
    second.tell(open_[0], evaluate(open_)[0])
    rest = []
    run_serial(second, lambda cs: rest.extend(cs) or evaluate(cs), 100)
    assert [c.policy for c in seen] == [c.policy for c in [*seen[:6], *open_, *rest]] and second.diverged == 0
    assert len(calls) == 7 * len(ctx.block_sizes) and second.history[:7] == whole.history[:7]

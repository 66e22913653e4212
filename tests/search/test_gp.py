"""GP search over metric expressions with the real proxy evaluator on stories260K."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from autoprune.config import read
from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.pruning.engine import collect_stats
from autoprune.pruning.expression import parse
from autoprune.pruning.policy import Policy
from autoprune.pruning.simplify import rank_form, rank_key
from autoprune.search.base import SearchContext, run_serial
from autoprune.search.gp import GPSpace, GPStrategy

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"population": 8, "generations": 2, "max_height": 4, "low_batches": 1, "promote": 2, "sequential": 1,
         "sequential_share": 1.0}


@pytest.fixture(scope="module")
def evaluator(stories, calib):
    model = __import__("copy").deepcopy(stories.model)
    stats = collect_stats(model, calib[:4], gradients=True, progress=False)
    return ProxyEvaluator(model, stats, calib[8:12], "kl", batch_size=2, calib_windows=calib[:4])


def _context(evaluator, tmp_path, pattern="unstructured", seed=0):
    return SearchContext(Policy(metric="wanda", sparsity=0.5, pattern=pattern), (), evaluator.max_batches, seed, tmp_path)


def _evaluate(evaluator):
    return lambda cands: [evaluator.evaluate(c.policy, c.batches, c.sequential) for c in cands]


def test_search_space_file_and_validation():
    space = read(GPSpace, yaml.safe_load((ROOT / "search_spaces" / "gp.yaml").read_text()), "gp.yaml")
    assert "mms" in space.unary and space.terminals == ("W", "X", "G", "Hd", "Hi")
    with pytest.raises(UserError, match="gp.yaml: unknown keys popsize"):
        read(GPSpace, {"popsize": 3}, "gp.yaml")
    with pytest.raises(UserError, match="gp.yaml: unknown unary cube"):
        read(GPSpace, {"unary": ["abs", "cube"]}, "gp.yaml")
    with pytest.raises(UserError, match="gp.yaml: population must be an integer, got 6.5"):
        GPStrategy(SearchContext(Policy(), (), 1, 0, Path(".")), {"population": 6.5})
    # a spec stored before the ``strategy`` key was dropped from gp.yaml still reads
    assert read(GPSpace, {"population": 8}, "gp.yaml") == GPStrategy(
        SearchContext(Policy(), (), 1, 0, Path(".")), {"strategy": "gp", "population": 8}).space


def test_gp_search_runs_caches_and_ranks(evaluator, tmp_path):
    gp = GPStrategy(_context(evaluator, tmp_path), {**SMALL, "seeds": ["magnitude"]})
    n = run_serial(gp, _evaluate(evaluator), 1000, batch=4)
    assert gp.done() and n == gp.counts["evaluated"]
    # every rank key is evaluated at most once per fidelity
    seen = [(h["key"], h["fidelity"]) for h in gp.history]
    assert len(seen) == len(set(seen))
    # the proposed candidates outnumber the evaluations: the cache and simplification skipped the rest
    assert gp.counts["proposed"] > gp.counts["evaluated"] - gp.counts["promoted"]
    policy, loss = gp.best()
    magnitude = evaluator.evaluate(Policy(metric="magnitude")).loss
    assert loss <= magnitude  # the magnitude seed is in the population, elitism keeps the best
    hof = gp.hall_of_fame()
    assert hof[0]["key"] == policy.metric and hof[0]["seq"] == loss  # ranked by the sequential rung
    assert [h["seq"] for h in hof] == sorted(h["seq"] for h in hof)
    parse(policy.metric)  # the best is a canonical expression
    # each generation scored its best full-fidelity metrics not yet scored sequentially, and those only
    seq = [h for h in gp.history if h["fidelity"] == "seq"]
    assert len(seq) == SMALL["generations"] * SMALL["sequential"]
    high = {h["key"] for h in gp.history if h["fidelity"] == "high"}
    assert {h["key"] for h in seq} <= high
    # the best metric by the sequential rung after generation 0 is an elite of generation 1
    first = [h for h in seq if h["generation"] == 0 and h["loss"] is not None]
    assert min(first, key=lambda h: h["loss"])["key"] in {str(rank_form(e)) for e in gp.population}


def test_sequential_rung_is_the_full_protocol(evaluator, stories, calib):
    """A sequential-fidelity score equals sequential pruning of a fresh copy, then KL to dense."""
    import copy

    from autoprune.evaluation.kl import kl_to_dense
    from autoprune.pruning.engine import prune_sequential

    policy = Policy(metric="mul(abs(W), sqrt(mul(X, G)))", sparsity=0.5)
    res = evaluator.evaluate(policy, sequential=True)
    model = copy.deepcopy(stories.model)
    prune_sequential(model, policy, calib[:4], batch_size=2, progress=False)  # collects its own gradients
    assert res.ok and res.loss == pytest.approx(kl_to_dense(model, evaluator.reference), rel=1e-4)
    assert res.loss != pytest.approx(evaluator.evaluate(policy).loss, rel=1e-3)  # not the one-shot score
    assert evaluator.evaluate(policy, sequential=True).cached  # its masks are cached apart from one-shot's
    without = ProxyEvaluator(evaluator.model, evaluator.stats, evaluator.windows, "kl", batch_size=2)
    with pytest.raises(UserError, match="calibration windows"):
        without.evaluate(policy, sequential=True)


def test_bad_candidates_get_the_worst_fitness(evaluator, tmp_path):
    res = evaluator.evaluate(Policy(metric="rowsum(W)"), 1)
    assert not res.ok and res.error == "constant scores" and math.isinf(res.loss)
    gp = GPStrategy(_context(evaluator, tmp_path), {**SMALL, "seeds": ["rowsum(W)", "div(W, sub(X, X))", "wanda"]})
    run_serial(gp, _evaluate(evaluator), 1000, batch=4)
    assert gp.done()
    assert math.isinf(gp.fitness(parse("rowsum(W)")))
    assert gp.counts["degenerate"] >= 1


def test_equivalent_masks_hit_the_proxy_cache(evaluator):
    a = evaluator.evaluate(Policy(metric="mul(abs(W), X)"), 1)
    b = evaluator.evaluate(Policy(metric="wanda"), 1)
    c = evaluator.evaluate(Policy(metric="mul(W, sub(0, X))"), 1)  # not equivalent: |.| missing
    assert b.cached and b.loss == a.loss
    assert not c.cached and c.loss != a.loss


def test_mask_hash_tells_apart_masks_one_swap_apart(evaluator):
    W = evaluator.linears[evaluator.probe].weight.data
    dense = evaluator.mask_hash()
    W[3, 5] = 0.0
    one = evaluator.mask_hash()
    evaluator.restore()
    W[3, 6] = 0.0  # as many zeros in every row, another weight
    swapped = evaluator.mask_hash()
    assert len({dense, one, swapped}) == 3
    evaluator.restore()
    W[3, 5] = 0.0
    assert evaluator.mask_hash() == one  # the same mask, the same digest
    evaluator.restore()
    assert evaluator.mask_hash() == dense


def test_proxy_batches_smaller_than_a_forward_batch(evaluator):
    policy = Policy(metric="wanda")
    fine = ProxyEvaluator(evaluator.model, evaluator.stats, evaluator.windows, "kl", batch_size=4, proxy_batch=1)
    assert fine.max_batches == 4 and evaluator.max_batches == 2
    # the first two windows, one forward batch each way: the same loss and tokens
    a, b = fine.evaluate(policy, 2), evaluator.evaluate(policy, 1)
    assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.tokens == b.tokens
    assert fine.evaluate(policy, 1).tokens == b.tokens // 2
    with pytest.raises(UserError):
        ProxyEvaluator(evaluator.model, evaluator.stats, evaluator.windows, proxy_batch=0)


def test_state_dict_is_json_and_resumes(evaluator, tmp_path):
    ctx = _context(evaluator, tmp_path, seed=3)
    a = GPStrategy(ctx, SMALL)
    ev = _evaluate(evaluator)
    first = a.ask(5)
    for cand, res in zip(first[:3], ev(first[:3])):
        a.tell(cand, res)
    state = json.loads(json.dumps(a.state_dict()))
    b = GPStrategy(ctx, SMALL)
    b.load_state_dict(state)
    assert [str(e) for e in b.population] == [str(e) for e in a.population]
    # the two unanswered candidates stay in flight (the driver tells their results after a resume),
    # not asked again; the rest of the generation comes as it would have
    again = [c.tag["key"] for c in b.ask(100)]
    assert again == [c.tag["key"] for c in a.ask(100)] and not {c.tag["key"] for c in first[3:]} & set(again)
    for cand, res in zip(first[3:], ev(first[3:])):
        b.tell(cand, res)
    assert b._inflight == {(k, "low") for k in again}


def test_same_seed_same_search(evaluator, tmp_path):
    runs = []
    for _ in range(2):
        gp = GPStrategy(_context(evaluator, tmp_path, "2:4", seed=7), {**SMALL, "population": 6})
        run_serial(gp, _evaluate(evaluator), 1000, batch=8)
        runs.append([(h["key"], h["loss"]) for h in gp.history])
    assert runs[0] == runs[1]
    assert all(rank_key(parse(k)) == k for k, _ in runs[0])


def test_seed_outside_primitive_set_is_refused(evaluator, tmp_path):
    with pytest.raises(UserError, match="not in the primitive set"):
        GPStrategy(_context(evaluator, tmp_path), {**SMALL, "unary": ["abs", "sqr"], "seeds": ["ria"]})


def test_sequential_rung_is_rationed_and_the_hall_of_fame_has_distinct_masks(evaluator, tmp_path):
    gp = GPStrategy(_context(evaluator, tmp_path, seed=5), {**SMALL, "generations": 6, "sequential_share": 0.05})
    run_serial(gp, _evaluate(evaluator), 10000, batch=8)
    seq = [h for h in gp.history if h["fidelity"] == "seq"]
    assert 1 <= len(seq) < 6  # generation 0 always has one; then only while under 5% of the time
    hof = gp.hall_of_fame()
    digests = [gp.masks[h["key"]] for h in hof]
    assert len(digests) == len(set(digests))
    for h in hof:  # each entry is the shortest key with its masks among those scored at the ranking fidelity
        same = [k for k, d in gp.masks.items() if d == gp.masks[h["key"]] and k in gp._table()]  # ranked ones
        assert len(h["key"]) == min(len(k) for k in same)


def test_first_generation_scores_metrics_of_w_and_x_first(evaluator, tmp_path):
    """A worker collects G and the Hessians when a candidate first needs them, so generation 0
    asks for the metrics that read only W and X before the others."""
    from autoprune.pruning.metrics import needs_gradients, needs_hessian

    gp = GPStrategy(_context(evaluator, tmp_path), {**SMALL, "population": 16})
    cands = gp.ask(16)
    extra = [needs_gradients(c.policy.metric) or needs_hessian(c.policy.metric) for c in cands]
    assert any(extra) and not all(extra) and extra == sorted(extra)

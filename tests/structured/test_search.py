"""The structured search (``autoprune shrink --speedup --search``): the space, the one-shot proxy, the
strategies meeting the speed-up constraint on measured speed, the Pareto front, determinism with a
seed, MLflow runs in a temporary store, and bad input."""

import csv
import random
import statistics

import pytest
import torch

from autoprune.cli import main
from autoprune.structured import Plan, Planner, Probe, discover
from autoprune.structured.layout import check_plan
from autoprune.structured.proxy import OneShot
from autoprune.structured.search import Trial, finalists, pareto_front, run_trials
from autoprune.structured.space import Space
from autoprune.structured.speedup import Candidate
from autoprune.structured.strategies import STRATEGIES, make_strategy
from autoprune.structured.surgery import config_changes
from tests.cli_check import one_line_error

ARGS = ["--model", "stories260K", "--seqlen", "128", "--calib", "tinystories:0-499", "--calib-windows", "8"]
FAST = Probe(batch=1, prompt=32, new_tokens=8, repeats=3)


@pytest.fixture(scope="module")
def oneshot(stories, calib, heldout):
    return OneShot(stories.model, calib[:8], heldout[:2])


@pytest.fixture(scope="module")
def space(stories, oneshot):
    planner = Planner(stories.model, FAST)
    return Space.of(planner.layout, planner.channel_removals, oneshot.block_order())


def modelled_speed(plan: Plan) -> tuple[float, float]:
    """A deterministic stand-in for measured speed (for determinism tests only): the removed share."""
    up = 1 / (1 - 0.15 * plan.blocks - 0.1 * plan.kv_groups / 4 - 0.4 * plan.channels / 172 * (5 - plan.blocks) / 5)
    return up, 100 * up


def test_space_plans_are_valid_and_start_from_block_influence(stories, space):
    lay = discover(stories.model)
    assert space.kv == (0, 2, 3) and space.channels[0] == 0 and all(c % 4 == 172 % 4 for c in space.channels[1:])
    assert all((172 - c) % 4 == 0 for c in space.channels)
    assert space.decode(2, 0, 0).drop == tuple(sorted(space.order[:2]))
    rng = random.Random(0)
    plan = space.random(rng)
    for _ in range(200):
        plan = space.mutate(plan, rng)
        check_plan(plan, lay, "stories260K")  # a count, a distinct sorted set, a removable width
        config_changes(stories.model, lay, plan, [i for i in range(5) if i not in plan.drop])
        assert plan.shape == Plan(plan.blocks, plan.kv_groups, plan.channels)


def test_oneshot_copy_of_the_empty_plan_is_dense_and_removes_what_the_plan_says(stories, oneshot, heldout):
    with torch.no_grad():
        assert torch.equal(oneshot.shrunk(Plan()).eval()(heldout[:2]).logits, stories.model(heldout[:2]).logits)
    m = oneshot.shrunk(Plan(2, 2, 86, (0, 3)))
    assert len(m.model.layers) == 3 and m.config.num_key_value_heads == 2 and m.config.intermediate_size == 86
    assert m.model.layers[0].mlp.down_proj.weight.shape == (64, 86)
    assert oneshot.loss(Plan(2, 2, 86, (0, 3))) > oneshot.loss(Plan(1, 0, 0, (1,))) > oneshot.loss(Plan())


def test_pareto_front_is_non_dominated():
    rng = random.Random(0)
    trials = [Trial(i, Plan(i % 5, 0, 4 * i), rng.uniform(1, 3), 0.0, rng.uniform(5, 50), True, 0.0) for i in range(40)]
    trials.append(Trial(40, Plan(0, 0, 200), 2.0, 0.0, None, False, 0.0))  # not scored: never on the front
    front = pareto_front(trials)
    assert front and all(t.loss is not None for t in front)
    for t in front:
        assert not any(o.loss <= t.loss and o.speedup >= t.speedup and o is not t for o in trials if o.loss)
    for t in trials:  # every scored trial off the front is dominated by one on it
        if t.loss is not None and t not in front:
            assert any(f.loss <= t.loss and f.speedup >= t.speedup for f in front)
    assert [t.speedup for t in front] == sorted(t.speedup for t in front)


@pytest.mark.parametrize("strategy", ["tpe", "evo"])
def test_search_meets_the_measured_speedup(stories, calib, oneshot, strategy):
    from autoprune.structured.driver import SearchSettings, search_plans

    planner = Planner(stories.model, FAST)
    target = 1.3
    found = search_plans(stories.model, planner, calib[:8], None, SearchSettings(strategy, target, 10, finalists=2),
                         oneshot=oneshot)
    assert len(found.trials) == 10
    for t in found.trials:
        assert t.feasible == (t.speedup >= target) and (t.loss is None) == (not t.feasible)
    assert found.candidates
    confirmed = lambda plan: statistics.mean(planner.confirmations.get(plan.shape, [target]))
    for c in found.candidates:  # timed again: the fresh timings of the shape still reach the target
        assert c.speedup >= target and confirmed(c.plan) >= target and len(planner.confirmations[c.plan.shape]) >= 2
    best = min(t.loss for t in found.trials if t.feasible and confirmed(t.plan) >= target)
    assert next(t.loss for t in found.trials if t.plan == found.candidates[0].plan) == best


def test_confirmations_are_fresh_and_accumulate_per_shape(stories):
    planner = Planner(stories.model, FAST)
    chosen = planner.speedup(Plan(1))  # the measurement a search chose the plan by
    first = planner.confirm(Plan(1))
    second = planner.confirm(Plan(1, 0, 0, (2,)))  # the same shape, other blocks: the same timing
    fresh = planner.confirmations[Plan(1)]
    assert len(fresh) == 4 and planner.measured[Plan(1)] == [chosen, *fresh]
    assert first == pytest.approx(statistics.mean(fresh[:2])) and second == pytest.approx(statistics.mean(fresh))


@pytest.mark.parametrize("strategy,pareto", [("tpe", False), ("nsga2", True), ("evo", False)])
def test_same_seed_same_trials(oneshot, space, strategy, pareto):
    def plans(seed):
        s = make_strategy(strategy, space, 1.5, pareto, 12, seed)
        return [t.plan for t in run_trials(s, modelled_speed, oneshot.loss, 1.5, 12, score_all=pareto)]

    first = plans(0)
    assert plans(0) == first and plans(1) != first


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fitted", [False, True])
def test_the_families_plans_start_every_search_and_stay_finalists(oneshot, space, strategy, fitted):
    """The known recipes' plans are the first trials, as given (channels too when the strategy fits
    its own), and every one still feasible on fresh timing competes in the final selection,
    however the proxy ranks it."""
    width, depth, short = (Candidate("width", space.plan(0, 0, space.channels[-1]), 1.64),
                           Candidate("depth", space.plan(3, 0, 0), 1.82),
                           Candidate("mixed", space.plan(1, 0, space.channels[-2]), 1.51))
    seeds = [width, depth, short]
    loss = lambda p: 1.0 if p == short.plan else 10.0 + p.blocks + p.channels / 100  # the proxy prefers mixed
    fit = (lambda blocks, kv: space.channels[len(space.channels) // 2]) if fitted else None
    s = make_strategy(strategy, space, 1.5, False, 8, 0, channels_for=fit)
    trials = run_trials(s, modelled_speed, loss, 1.5, 8, seeds=seeds)
    assert [t.plan for t in trials[:3]] == [c.plan for c in seeds]
    assert [t.origin for t in trials] == ["width", "depth", "mixed"] + [""] * 5
    assert all(t.loss is not None for t in trials[:3])  # feasible under the modelled speed: scored

    fresh = lambda p: 1.4 if p == short.plan else modelled_speed(p)[0]  # the mixed plan falls short when timed again
    ranked = sorted((t for t in trials if t.loss is not None and fresh(t.plan) >= 1.5), key=lambda t: t.loss)
    for k in (1, 3):
        cands = finalists(trials, k, 1.5, fresh, strategy, seeds=seeds)
        plans = [c.plan for c in cands]
        assert len(plans) == len(set(plans)) and {width.plan, depth.plan} <= set(plans) and short.plan not in plans
        assert plans[0] == ranked[0].plan and cands[0].family == (ranked[0].origin or strategy)
    untried = finalists(trials[3:], 2, 1.5, fresh, strategy, seeds=seeds)  # seeds never tried are not finalists
    assert untried == finalists(trials[3:], 2, 1.5, fresh, strategy)


@pytest.mark.parametrize("select", [None, "tinystories:500-999"])
def test_the_proxy_scores_other_windows_of_the_selection_data(tmp_path, stories, select):
    """Proxy and selection windows come from the same data (the proxy ranks plans as the selection
    will), never overlap, and never take a calibration window; real models choose on
    wikitext2-valid unless told, the TinyStories toys on their own unused windows."""
    from autoprune.data import load_documents, tokenize_windows
    from autoprune.jobs.common import calibration_windows
    from autoprune.jobs.shrink import ShrinkConfig, search_windows

    calib_set = "tinystories:0-499"
    assert ShrinkConfig(model="stories260K", out=tmp_path / "o", speedup=1.3).select == "wikitext2-valid"  # C4
    cfg = ShrinkConfig(model="stories260K", out=tmp_path / "o", speedup=1.3, calib=calib_set, calib_windows=8,
                       select=select, select_windows=4, proxy_windows=3, seqlen=128)
    assert cfg.select == (select or calib_set)
    chosen, proxy = search_windows(stories.tokenizer, cfg)
    rows = lambda w: {tuple(r.tolist()) for r in w}
    source = rows(tokenize_windows(stories.tokenizer, load_documents(cfg.select), 128))
    calibration = rows(calibration_windows(stories.tokenizer, calib_set, 8, 128, 0))
    assert len(rows(chosen)) == 4 and len(rows(proxy)) == 3 and rows(chosen) | rows(proxy) <= source
    assert not rows(chosen) & rows(proxy) and not (rows(chosen) | rows(proxy)) & calibration


def test_cli_search_resumes_after_an_interrupt_and_logs_trials_front_and_runs(tmp_path, capsys, monkeypatch):
    """Interrupted at its third proxy score, a search leaves its timings and scores in the folder; the
    same command then retraces the same trials from them (identical measured speed-ups: nothing
    timed anew) and finishes: trials.csv (the families' plans first), the front, the plot, and in
    MLflow the interrupted run killed and the finished one with a run per trial and the choice.
    Other settings are refused in one line; a torn last line is dropped."""
    from mlflow.tracking import MlflowClient

    from autoprune.structured.journal import JOURNAL_FILE
    from autoprune.structured.proxy import OneShot

    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["shrink", *ARGS, "--speedup", "1.05", "--search", "nsga2", "--pareto", "--trials", "6", "--finalists",
            "1", "--tracking-uri", uri, "--experiment", "t", "--out", str(out)]
    real_loss, calls = OneShot.loss, []

    def interrupted(self, plan):
        calls.append(plan)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(self, plan)

    monkeypatch.setattr(OneShot, "loss", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err.strip().endswith("autoprune: interrupted")
    monkeypatch.setattr(OneShot, "loss", real_loss)
    lines = (out / JOURNAL_FILE).read_text().splitlines()
    assert '"facts"' in lines[0] and sum('"scored"' in line for line in lines) == 2
    with open(out / JOURNAL_FILE, "a") as f:
        f.write('{"kind": "tim')  # a torn line, as a kill mid-write leaves it
    one_line_error(capsys, [*argv[:-2], "--calib-windows", "7", "--out", str(out)], "calib_windows=8")
    assert main(argv) == 0
    assert "resuming the search" in capsys.readouterr().err
    assert all(line.endswith("}") for line in (out / JOURNAL_FILE).read_text().splitlines())

    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [int(r["trial"]) for r in rows] == list(range(6)) and all(r["proxy_ppl"] for r in rows)  # --pareto scores all
    seeded = [r["seed"] for r in rows]  # the families' plans that reach 1.05x on this machine came first
    assert seeded[0] and seeded == sorted(seeded, key=lambda f: not f)
    assert list(csv.DictReader(open(out / "pareto.csv"))) and (out / "pareto.png").stat().st_size > 0

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("autoprune/t")
    killed, done = sorted(client.search_runs([exp.experiment_id], "tags.`autoprune.kind` = 'shrink-search'"),
                          key=lambda r: r.info.start_time)
    assert killed.info.status == "KILLED" and done.info.status == "FINISHED"
    assert int(done.data.tags["autoprune.replayed_measurements"]) >= len(lines) - 1

    def trials(parent):
        runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert all(r.data.tags["autoprune.kind"] == "shrink-trial" for r in runs)
        return runs, {int(r.data.tags["autoprune.shrink_trial"]): (r.data.params["plan"], r.data.metrics["speedup"],
                                                                     r.data.metrics.get("proxy_ppl")) for r in runs}

    _, before = trials(killed)
    runs, after = trials(done)
    assert len(before) == 2 and len(after) == 6 and all(after[n] == before[n] for n in before)
    assert all({"speedup", "tokens_per_s", "proxy_ppl"} <= set(r.data.metrics) and "plan" in r.data.params
               for r in runs)
    chosen = [r for r in runs if r.data.tags.get("autoprune.chosen") == "true"]
    assert len(chosen) == 1 and done.data.tags["autoprune.chosen_run_id"] == chosen[0].info.run_id
    artifacts = {a.path for a in client.list_artifacts(done.info.run_id)}
    assert {"trials.csv", "pareto.csv", "pareto.png", "autoprune_shrink.json"} <= artifacts
    assert done.data.metrics["speedup"] >= 1.05


def test_bad_search_input_exits_2_and_writes_nothing(tmp_path, capsys):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    bad = [(["--speedup", "1.5", "--trials", "0"], "trials must be positive"),
           (["--speedup", "1.5", "--search", "evo", "--pareto"], "tpe or nsga2"),
           (["--speedup", "1.5", "--search", "families", "--trials", "3"], "takes no --trials"),
           (["--channels", "0.5", "--trials", "3"], "pass --speedup"),
           (["--speedup", "1.5", "--search", "sgd"], "unknown --search"),
           (["--speedup", "1.5", "--finalists", "0"], "finalists must be positive"),
           (["--speedup", "50", "--trials", "3"], "out of reach"),
           (["--speedup", "1.5", "--select", "tinystories:500-999", "--eval", "tinystories:500-999"],
            "chosen on other data")]
    for argv, match in bad:
        one_line_error(capsys, ["shrink", *ARGS, *argv, "--tracking-uri", uri, "--out", str(out)], match)
    assert not out.exists()


def test_a_plan_drops_the_blocks_it_names(fresh_model, calib):
    from autoprune.errors import UserError
    from autoprune.structured import shrink_model

    report = shrink_model(fresh_model, Plan(2, 0, 0, (0, 4)), calib)
    assert report.dropped_blocks == (0, 4) and len(fresh_model.model.layers) == 3 and report.block_influence == ()
    with pytest.raises(UserError, match="distinct sorted"):
        check_plan(Plan(2, 0, 0, (4, 0)), discover(fresh_model), "stories260K")


def test_latency_model_fits_measurements_and_finds_the_boundary(stories, space):
    from autoprune.structured.latency import LatencyModel, _features

    lay = discover(stories.model)
    model = LatencyModel(stories.model, lay)
    assert model.speedup(Plan()) == pytest.approx(1.0, abs=0.01)  # the prior: parameter shares summing to 1
    truth = torch.tensor([0.3, 0.3, 0.1, 0.3], dtype=torch.float64)
    rng = random.Random(0)
    measured = {}
    for _ in range(12):
        p = space.random(rng)
        measured[p.shape] = [1 / float(torch.tensor(_features(lay, p), dtype=torch.float64) @ truth)]
    model.fit(measured)
    for shape, (up,) in measured.items():
        assert model.speedup(shape) == pytest.approx(up, rel=0.05)
    target = 1.6
    for blocks in range(3):
        c = model.least_channels(blocks, 2, space.channels, target)
        assert model.speedup(Plan(blocks, 2, c)) >= target or c == space.channels[-1]
        smaller = [x for x in space.channels if x < c]
        assert not smaller or model.speedup(Plan(blocks, 2, smaller[-1])) < target
    assert model.speedup(Plan(model.depth_for(target))) >= target

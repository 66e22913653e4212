"""BO and RL allocation search against the uniform, OWL and AlphaPruning allocations, full sequential protocol.

For each target sparsity: one-shot Wanda statistics on 64 calibration windows (256 tokens,
tinystories:0-499, seed 0), a KL-to-dense proxy on 16 other windows of tinystories:0-499
(seed 1), ratio candidates by cached score orders. BO (Optuna, one study per ``--space``; its
first trials are the uniform, OWL and AlphaPruning ratios) and RL (stable-baselines3, per-step
block-damage rewards) search on calibration data only: their top ``--top-k`` allocations by
proxy are pruned by the sequential protocol and scored on 32 more windows of tinystories:0-499
(seed 2), and the best there (across BO's spaces too) is the search's result. It and the
baselines are then pruned with ``prune_sequential`` on a fresh copy of the dense model and
scored by perplexity on every 256-token window of tinystories:500-999.

    python benchmarks/allocation_search.py --sparsity 0.5 0.7 --bo-trials 60 --rl-episodes 120
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from autoprune.evaluation.block_damage import BlockDamage
from autoprune.evaluation.perplexity import perplexity
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.evaluation.ratio_proxy import RatioProxy
from autoprune.jobs.common import calibration_windows, evaluation_windows
from autoprune.models import load_model
from autoprune.pruning.allocation import block_ratios
from autoprune.pruning.engine import PruneReport, collect_stats, prune_sequential
from autoprune.pruning.policy import Policy
from autoprune.search.base import SearchContext, Strategy
from autoprune.search.bo import BOStrategy
from autoprune.search.rl import RLStrategy

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def drive(strategy: Strategy, proxy: RatioProxy, limit: int, desc: str) -> tuple[int, list[tuple[float, Policy]]]:
    """Evaluate what ``strategy`` asks for until it is done: (proxy evaluations, full-fidelity results)."""
    n, full = 0, []
    with tqdm(total=limit, desc=desc, leave=False) as bar:
        while not strategy.done() and n < limit:
            cands = strategy.ask(1)
            if not cands:
                break
            for c in cands:
                res = proxy.evaluate(c.policy, c.batches)
                strategy.tell(c, res)
                if res.ok and c.batches in (None, proxy.evaluator.max_batches):
                    full.append((res.loss, c.policy))
            n += len(cands)
            bar.update(len(cands))
    return n, full


def select(dense, full: list[tuple[float, Policy]], k: int, calib: torch.Tensor,
           windows: torch.Tensor) -> tuple[float, Policy]:
    """The best of the top ``k`` allocations by proxy under the sequential protocol on
    calibration-side windows: (its perplexity there, the policy)."""
    top = []
    for loss, policy in sorted(full, key=lambda x: x[0]):
        if policy not in top:
            top.append(policy)
        if len(top) == k:
            break
    return min(((final_ppl(dense, p, calib, windows)[0], p) for p in top), key=lambda x: x[0])


def final_ppl(dense: torch.nn.Module, policy: Policy, calib: torch.Tensor, heldout: torch.Tensor) -> tuple[float, PruneReport]:
    model = copy.deepcopy(dense)
    report = prune_sequential(model, policy, calib, progress=False)
    return perplexity(model, heldout).perplexity, report


def evaluate_all(found: dict, proxy: RatioProxy, dense, calib, heldout, s: float) -> list[tuple]:
    rows = []
    for name, (policy, n, sec) in found.items():
        kl = proxy.evaluate(policy).loss
        ppl, report = final_ppl(dense, policy, calib, heldout)
        if policy.allocation == "owl" and name != "owl":
            ratios = f"lambda {policy.owl_lambda:.3f}, M {policy.owl_m:.2f}"
        else:
            ratios = " ".join(f"{r:.2f}" for r in report.block_ratios)
        rows.append((f"{s:g}", name, n, sec, kl, ppl, report.sparsity, ratios))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--space", default="per_block,attn_mlp",
                    help="allocation spaces for BO (search_spaces/allocation.yaml), comma-separated: one study each, "
                         "the selection windows pick the allocation among them")
    ap.add_argument("--sampler", default="tpe", choices=["tpe", "gp"])
    ap.add_argument("--bo-trials", type=int, default=60)
    ap.add_argument("--rl-episodes", type=int, default=120, help="0: BO only")
    ap.add_argument("--rl-algorithm", default="ppo", choices=["ppo", "sac", "ddpg"])
    ap.add_argument("--top-k", type=int, default=5, help="proxy-best allocations validated on calibration-side windows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on a shared CPU)")
    ap.add_argument("--objective", default="kl", choices=["kl", "ppl"], help="proxy loss")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    lm = load_model("stories260K", dtype="float32", device="cpu")
    calib = calibration_windows(lm.tokenizer, "tinystories:0-499", 64, 256, 0)
    proxy_windows = calibration_windows(lm.tokenizer, "tinystories:0-499", 16, 256, 1)
    select_windows = calibration_windows(lm.tokenizer, "tinystories:0-499", 32, 256, 2)
    heldout = evaluation_windows(lm.tokenizer, "tinystories:500-999", 256)
    dense = lm.model
    stats = collect_stats(dense, calib, progress=False)
    evaluator = ProxyEvaluator(copy.deepcopy(dense), stats, proxy_windows, args.objective)
    rows = []
    for s in args.sparsity:
        base = Policy.from_method("wanda", s)
        proxy = RatioProxy(evaluator, base)
        sizes = tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()} for blk in proxy.blocks)
        run_dir = Path(tempfile.mkdtemp(prefix=f"alloc-{s:g}-"))
        found = {"uniform": (base, 1, 0.0), "owl": (Policy.from_method("wanda", s, allocation="owl"), 1, 0.0),
                 f"alpha (eps {Policy.alpha_eps:g})": (Policy.from_method("wanda", s, allocation="alpha"), 1, 0.0)}
        # BO's first trials: uniform, then the OWL and AlphaPruning ratios (warm starts)
        warm = tuple(tuple(block_ratios(p, proxy.blocks, stats.X)) for p, _, _ in list(found.values())[1:])
        ctx = SearchContext(base, sizes, evaluator.max_batches, args.seed, run_dir, warm_starts=warm)

        t0, n_all, picks = time.perf_counter(), 0, []
        for space in args.space.split(","):  # one study per space; the selection windows pick among them
            bo_space = {**yaml.safe_load((SPACES / "bo.yaml").read_text()), "allocation": space,
                        "sampler": args.sampler, "n_trials": args.bo_trials}
            bo = BOStrategy(replace(ctx, run_dir=run_dir / space), bo_space)
            n, full = drive(bo, proxy, 10 * args.bo_trials, f"BO {space} {s:g}")
            n_all += n
            picks.append((*select(dense, full, args.top_k, calib, select_windows), space))
            print(f"BO {space} at {s:g}: {n} candidates; its pick has ppl {picks[-1][0]:.3f} on the selection windows")
        _, best, space = min(picks, key=lambda x: x[0])
        found[f"BO ({args.sampler}, {space})"] = (best, n_all, time.perf_counter() - t0)

        if args.rl_episodes == 0:  # BO only
            rows += evaluate_all(found, proxy, dense, calib, heldout, s)
            continue
        rl_space = {**yaml.safe_load((SPACES / "rl.yaml").read_text()), "episodes": args.rl_episodes,
                    "algorithm": args.rl_algorithm}
        t0 = time.perf_counter()
        rl = RLStrategy(replace(ctx, damage=BlockDamage(proxy, proxy_windows[:8])), rl_space)
        n, full = drive(rl, proxy, args.rl_episodes, f"RL {s:g}")
        _, best = select(dense, full, args.top_k, calib, select_windows)
        found[f"RL ({args.rl_algorithm}, per block)"] = (best, n, time.perf_counter() - t0)

        rows += evaluate_all(found, proxy, dense, calib, heldout, s)

    print(f"\nstories260K, Wanda, proxy: {args.objective} on 16x256 windows of tinystories:0-499; "
          f"top {args.top_k} by proxy validated by the sequential protocol on 32x256 other windows of tinystories:0-499 "
          f"(included in search s); ppl: sequential protocol, {len(heldout)}x256 windows of tinystories:500-999")
    head = f"{'sparsity':>8}  {'allocation':<26} {'candidates':>10} {'search s':>9} {'proxy':>9} {'ppl':>8} {'achieved':>9}  block ratios"
    print(head + "\n" + "-" * len(head))
    for s, name, n, sec, kl, ppl, achieved, ratios in rows:
        print(f"{s:>8}  {name:<26} {n:>10} {sec:>9.1f} {kl:>9.4f} {ppl:>8.2f} {achieved:>9.5f}  {ratios}")


if __name__ == "__main__":
    main()

"""``autoprune shrink``: structured pruning into a smaller, faster model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.commands import add_model_args, print_report, quiet_libraries


def add_parser(sub) -> None:
    p = sub.add_parser("shrink", help="remove blocks, attention heads and MLP channels: a smaller, faster model",
                       description="Remove whole structures (decoder blocks, KV groups with their query heads, MLP "
                                   "channels), reconstruct the layers that read them, and write a smaller folder "
                                   "that transformers loads with from_pretrained.")
    add_model_args(p)
    p.add_argument("--blocks", type=int, default=0, help="decoder blocks to drop, lowest Block Influence first")
    p.add_argument("--heads", type=float, default=0.0, help="fraction of KV groups (a key/value head with its "
                   "query heads) removed from every kept block")
    p.add_argument("--channels", type=float, default=0.0, help="fraction of MLP channels removed from every kept block")
    p.add_argument("--speedup", type=float, help="instead of a plan: the plan that reaches this measured decode "
                   "speed-up on this machine with the lowest selection perplexity, found by --search")
    p.add_argument("--search", default="tpe", help="how --speedup finds the plan: tpe (default) or nsga2 search the "
                   "blocks dropped (Block Influence order) and the heads removed, evo also which blocks, the channels "
                   "fitted to the speed boundary; each trial timed and scored by a cheap proxy. families: the "
                   "least-removal depth, width, width+heads and mixed plans, by bisection")
    p.add_argument("--trials", type=int, help="search trials (default: 40; about 10-15 s each on SmolLM2-135M)")
    p.add_argument("--pareto", action="store_true", help="map the front of proxy perplexity against measured "
                   "speed-up (pareto.csv, pareto.png); the model saved is the front's best plan at --speedup")
    p.add_argument("--finalists", type=int, default=3, help="best searched plans shrunk for real and scored on the "
                   "selection windows (default: 3)")
    p.add_argument("--proxy-windows", type=int, default=4, help="windows of the --select data (not the "
                   "selection windows) the search's proxy scores each plan on (default: 4)")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db", help="MLflow tracking URI of a search "
                   "(default: sqlite:///runs/mlflow.db)")
    p.add_argument("--experiment", default="shrink", help="MLflow experiment of a search (default: shrink)")
    p.add_argument("--importance", default="activation", help="activation (FLAP fluctuation), obs (SlimGPT's "
                   "structured OBS), taylor (|W*G|), or a metric name or expression such as 'mul(abs(W), X)', "
                   "summed over each structure's weights")
    p.add_argument("--reconstruct", action=argparse.BooleanOptionalAction, default=True,
                   help="least-squares compensation of what was removed in o_proj / down_proj (default: on)")
    p.add_argument("--damp", type=float, default=0.01, help="reconstruction ridge, relative to the mean Gram diagonal")
    p.add_argument("--calib", default="c4", help="calibration data: file or named set, optional :START-END")
    p.add_argument("--calib-windows", type=int, default=128, help="calibration windows (default: 128)")
    p.add_argument("--select", help="--speedup: data the plan is chosen on, and the search's proxy scored on "
                   "(other windows of it); default: wikitext2-valid, or for TinyStories calibration its unused windows")
    p.add_argument("--select-windows", type=int, default=16, help="selection windows (default: 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", help="also report dense and shrunk perplexity on this data (chooses nothing)")
    p.add_argument("--eval-windows", type=int, help="evaluate on the first N windows only")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from rich.console import Console
    from rich.table import Table

    from autoprune.jobs.shrink import ShrinkConfig, shrink

    cfg = ShrinkConfig(model=args.model, out=args.out, blocks=args.blocks, heads=args.heads, channels=args.channels,
                       speedup=args.speedup, search=args.search, trials=args.trials, pareto=args.pareto,
                       finalists=args.finalists, proxy_windows=args.proxy_windows, tracking_uri=args.tracking_uri,
                       experiment=args.experiment, importance=args.importance, reconstruct=args.reconstruct,
                       damp=args.damp, calib=args.calib, calib_windows=args.calib_windows, select=args.select,
                       select_windows=args.select_windows, seqlen=args.seqlen, seed=args.seed,
                       batch_size=args.batch_size, eval=args.eval, eval_windows=args.eval_windows,
                       device=args.device, dtype=args.dtype)
    res = shrink(cfg)
    if res.trials:
        print(f"{cfg.search}: {len(res.trials)} trials, {sum(t.feasible for t in res.trials)} reached "
              f"{cfg.speedup:g}x, {len(res.front)} on the Pareto front; trials in {res.out / 'trials.csv'}, "
              f"MLflow {cfg.tracking_uri}")
    if res.candidates:
        cands = Table(title=f"plans reaching the speed-up (chosen on {cfg.select})")
        for col in ("family", "plan", "decode speed-up", "selection ppl"):
            cands.add_column(col, justify="right")
        for sel in res.candidates:
            c = sel.candidate
            cands.add_row(c.family, c.plan.describe(res.layout), f"{c.speedup:.2f}x", f"{sel.loss:.3f}")
        Console().print(cands)
    rows = [("plan", res.plan.describe(res.layout) + (f" ({res.family})" if res.family else "")),
            ("parameters", f"{res.report.params_before:,} -> {res.report.params_after:,}"),
            ("decode speed-up (measured, batch 1)", f"{res.speedup:.2f}x"),
            ("decode tokens/s (dense -> shrunk)", f"{res.tokens_per_s[0]:.1f} -> {res.tokens_per_s[1]:.1f}"),
            ("importance / reconstruct", f"{cfg.importance} / {'least squares' if cfg.reconstruct else 'none'}"),
            ("calibration", f"{cfg.calib_windows} x {cfg.seqlen} tokens of {cfg.calib}"),
            ("shrink seconds", f"{res.report.seconds:.1f}")]
    if res.perplexity is not None:
        rows.append((f"perplexity on {cfg.eval} (dense -> shrunk)", f"{res.dense_perplexity:.3f} -> {res.perplexity:.3f}"))
    print_report(f"autoprune shrink: {cfg.model}", rows + [("saved to", str(res.out))])
    return 0

"""``autoprune search``: find a pruning policy within a time budget (live progress view)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoprune.commands import quiet_libraries


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="search pruning metrics and layer-wise sparsity within a time budget",
                       description="Spend a time budget searching pruning policies on Ray workers; log to MLflow; "
                                   "validate and export the best policy.")
    p.add_argument("--model", help="hub id, model folder, .gguf file, llama2.c .bin, or alias (stories260K, "
                                   "smollm2-135m)")
    p.add_argument("--budget", help="wall-clock budget: 30s, 20m, 8h, 1h30m (default: 5m)")
    p.add_argument("--sparsity", type=float, help="global fraction of weights to remove (default: 0.5)")
    p.add_argument("--pattern", help="unstructured (default), 2:4, 4:8 or any N:M")
    p.add_argument("--strategies", help="comma-separated: gp, bo, rl, evo, random (default: gp,evo)")
    p.add_argument("--calib", help="calibration/search data (default: tinystories:0-499 for stories models, else c4)")
    p.add_argument("--eval", help="final validation data (default: tinystories:500-999 after tinystories "
                                  "calibration, else wikitext2)")
    p.add_argument("--select", help="data the winner is chosen on (default: the calibration set's unused windows "
                                    "for stories models, else wikitext2-valid); --eval only reports")
    p.add_argument("--select-windows", type=int, help="selection windows (default: 32)")
    p.add_argument("--updates", help="weight updates the search may choose, from none, sparsegpt, admm "
                                     "(default: all three)")
    p.add_argument("--calib-windows", type=int, help="calibration windows for the statistics (default: 64)")
    p.add_argument("--proxy-windows", type=int, help="windows the proxy loss is measured on (default: 16)")
    p.add_argument("--proxy-batch", type=int, help="windows per proxy batch, the unit of fidelity that "
                                                   "search spaces count in (default: 2)")
    p.add_argument("--per-forward", type=int, help="one-shot candidates stacked into one forward pass (default: 1 "
                                                   "on a CPU; on a GPU up to 16, as 2 GiB of stacked weights allow)")
    p.add_argument("--eval-windows", type=int, help="final validation windows (default: 128)")
    p.add_argument("--seqlen", type=int, help="tokens per window (default: 256 for stories models, else 2048)")
    p.add_argument("--objective", help="proxy loss: kl (to the dense model, default) or ppl")
    p.add_argument("--workers", type=int, help="Ray worker actors, one per GPU or CPU slot (default: 1)")
    p.add_argument("--cpus-per-worker", type=float, help="CPU slots per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (default: 0); above 1, each worker spreads "
                   "its model over its GPUs")
    p.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///runs/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment (default: autoprune/<out folder name>)")
    p.add_argument("--log-candidates", help="MLflow runs per candidate: top (the validated ones, each strategy's "
                   "best, the recipes; default), all, or none (every candidate is in the journal and "
                   "candidates.csv either way)")
    p.add_argument("--top-k", type=int, help="candidates fully validated at the end (default: 3)")
    p.add_argument("--baselines", help="recipes validated beside the winner under the same protocol, "
                                       "method[+allocation] (wanda, sparsegpt, ... with +owl or +alpha), or none "
                                       "(default: sparsegpt+owl,sparsegpt,wanda+owl,wanda)")
    p.add_argument("--owl-lambdas", help="OWL lambdas of the recipes, tuned on the selection split "
                                         "(default: 0.05,0.1,0.15,0.2)")
    p.add_argument("--reference-top", type=int, help="dense tokens per position the KL proxy keeps (default: 256)")
    p.add_argument("--spaces", help="a folder of search space files (gp.yaml, evo.yaml, ...) overriding the "
                   "packaged ones, file by file; the resolved spaces are stored with the run")
    p.add_argument("--out", type=Path, help="run folder (default: runs/search)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --out")
    p.add_argument("--save-model", action="store_true", help="also save the pruned model (save_pretrained)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda ... (default: auto)")
    p.add_argument("--dtype", help="auto, float32, float16, bfloat16 (default: auto)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    started = _process_start()  # the budget counts the start-up too
    quiet_libraries()
    from autoprune.errors import UserError
    from autoprune.jobs.search import SearchConfig, resume_config, search

    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("run", "command", "resume")}
    if not given.get("save_model"):
        given.pop("save_model", None)
    if args.resume:
        cfg = resume_config(given.get("out", Path("runs/search")), given)
    else:
        if args.model is None:
            raise UserError("--model is required (unless --resume)")
        cfg = SearchConfig.from_dict(given)
    with SearchView(cfg, started) as view:
        res = search(cfg, resume=args.resume, on_update=view.update, started=started)
    view.final(res)
    return 0


def _process_start() -> float:
    """The monotonic clock reading when this process started (interpreter start-up included)."""
    import psutil

    return time.monotonic() - max(0.0, time.time() - psutil.Process().create_time())


class SearchView:
    """The live view, redrawn twice a second from the latest status: from the first second the
    start-up step (the workers' loading, statistics and dense reference, with their progress) and
    the time left; then per strategy the candidates and candidates per second, the phase's time
    left, validation progress and the best so far."""

    RATE_WINDOW = 30.0  # seconds the candidates-per-second are averaged over

    def __init__(self, cfg, started: float):
        from rich.console import Console
        from rich.live import Live

        self.cfg, self.started = cfg, started
        self.status: dict | None = None
        self.updated = started
        self.history: list[tuple[float, dict[str, int]]] = []
        self.console = Console()
        self.live = Live(self, console=self.console, refresh_per_second=2, transient=False)

    def __enter__(self) -> "SearchView":
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def update(self, status: dict) -> None:
        now = time.monotonic()
        self.status = {**status, "evaluated": dict(status["evaluated"])}  # the view draws from another thread
        self.updated = now
        self.history.append((now, dict(status["evaluated"])))
        while self.history and now - self.history[0][0] > self.RATE_WINDOW:
            self.history.pop(0)

    def __rich__(self):
        from rich import box
        from rich.table import Table

        now, st = time.monotonic(), self.status
        t = Table(title=f"autoprune search: {self.cfg.model} at {self.cfg.sparsity:g} ({self.cfg.pattern}), "
                        f"budget {self.cfg.budget} -> {self.cfg.out}", box=box.SIMPLE_HEAD, show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        left = (st["left"] - (now - self.updated)) if st else self.cfg.seconds - (now - self.started)
        phase = st["phase"] if st else ""
        if not phase:
            phase = f"start-up: {self._startup(now)}"
        elif st.get("deadline") is not None:
            phase += f" ({max(0.0, st['deadline'] - now):.0f}s left in the phase)"
        t.add_row("phase", phase)
        t.add_row("time left", f"{max(0.0, left):.0f}s of {self.cfg.budget}")
        if st:
            rates = self._rates()
            for name, n in st["evaluated"].items():
                t.add_row(f"  {name}", f"{n} candidates, {rates.get(name, 0.0):.2f}/s")
            if st.get("validations"):
                done, planned = st["validations"]
                t.add_row("validation", f"{done} of {planned} planned (selection, then evaluation data)")
            best = st.get("best")
            t.add_row("best proxy loss", f"{best['result']['loss']:.4f}  {_describe(best['policy'])}" if best else "-")
            if st.get("retried") or st.get("replaced"):
                t.add_row("workers", f"{st.get('replaced', 0)} replaced, {st.get('retried', 0)} jobs retried")
        return t

    def _startup(self, now: float) -> str:
        """The workers' start-up step from their progress file, else how long the start has taken."""
        import json

        from autoprune.jobs.run_folder import STARTUP_FILE

        try:
            step = json.loads((self.cfg.out / STARTUP_FILE).read_text())
        except (OSError, ValueError):
            return f"starting Ray and the workers ({now - self.started:.0f}s)"
        count = f" {step['done'] + 1}/{step['total']}" if step.get("total") else ""
        return f"workers: {step['step']}{count} ({now - self.started:.0f}s)"

    def _rates(self) -> dict[str, float]:
        if len(self.history) < 2:
            return {}
        (t0, first), (t1, last) = self.history[0], self.history[-1]
        return {k: (v - first.get(k, 0)) / max(t1 - t0, 1e-9) for k, v in last.items()}

    def final(self, res) -> None:
        from rich.table import Table

        t = Table(title="autoprune search: result")
        t.add_column("field")
        t.add_column("value")
        default = res.proxy_loss is None and res.recipe is None
        t.add_row("best policy", _describe(res.best.to_dict()) + (" (the default: no candidate scored in time)"
                                                                  if default else ""))
        if res.recipe is not None:
            t.add_row("note", f"the recipe {res.recipe} beat every candidate on the selection split: it is returned")
        t.add_row("proxy loss", f"{res.proxy_loss:.4f}" if res.proxy_loss is not None else "-")
        t.add_row(f"perplexity on {self.cfg.select} (selection)",
                  f"{res.select_perplexity:.3f}" if res.select_perplexity is not None else "-")
        t.add_row(f"perplexity on {self.cfg.eval} (report)", f"{res.perplexity:.3f}" if res.perplexity is not None
                  else "not validated (budget spent)")
        for b in res.baselines:
            lam = f" (lambda {b['policy']['owl_lambda']:g})" if b.get("policy") and b["policy"]["allocation"] == "owl" else ""
            t.add_row(f"recipe: {b['name']}{lam}", _baseline(b))
        t.add_row("candidates", ", ".join(f"{k} {v}" for k, v in res.candidates.items()))
        t.add_row("seconds per phase", ", ".join(f"{k} {v:.0f}" for k, v in res.phases.items()))
        t.add_row("workers replaced / candidates retried", f"{res.replaced} / {res.retried}")
        t.add_row("seconds (this run)", f"{res.seconds:.1f}")
        t.add_row("saved to", str(res.out / "best_policy.json"))
        self.console.print(t)


def _baseline(row: dict) -> str:
    """A baseline's perplexity and the winner's relative improvement over it, or why it was skipped."""
    if "skipped" in row:
        return f"skipped: {row['skipped']}"
    text = f"{row['perplexity']:.3f}"
    if row.get("improvement") is not None:
        gain = row["improvement"]
        text += f" (winner {abs(gain):.1%} {'lower' if gain >= 0 else 'higher'})"
    return text


def _describe(policy: dict) -> str:
    alloc = policy["allocation"]
    if alloc == "owl":
        alloc = f"owl(l={policy['owl_lambda']:g})"
    elif alloc == "alpha":
        alloc = f"alpha(eps={policy['alpha_eps']:g})"
    elif alloc == "explicit":
        alloc = "[" + " ".join(f"{r:.2f}" for r in policy["block_ratios"]) + "]"
    update = policy.get("update", "none")
    return f"{policy['metric']} / {alloc}" + ("" if update == "none" else f" / {update}")

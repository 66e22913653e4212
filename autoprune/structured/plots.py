"""The structured search's picture: proxy perplexity against measured decode tokens/s, every trial and the front.

Tokens/s on the x axis are each trial's measured speed-up (a ratio timed interleaved with the
dense model, so a machine busy with other work slows both alike) times the dense model's measured
decode rate: one consistent axis, on which the front is the front of the speed-ups."""

from __future__ import annotations

from pathlib import Path

from autoprune.structured.search import Trial, pareto_front


def plot_front(trials: list[Trial], path: Path, dense_tokens_per_s: float, target: float | None = None,
               chosen: Trial | None = None, title: str = "structured search") -> Path:
    """Scored trials (feasible filled, short of ``target`` hollow), the Pareto front as a line, the
    target as a vertical line and the ``chosen`` trial as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = dense_tokens_per_s
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scored = [t for t in trials if t.loss is not None]
    for feasible, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "none", "edgecolors": "tab:blue"})):
        pts = [t for t in scored if t.feasible == feasible]
        if pts:
            ax.scatter([t.speedup * rate for t in pts], [t.loss for t in pts], s=14, alpha=0.7,
                       label="trials" + ("" if feasible else " (short of the target)"), **style)
    front = pareto_front(trials)
    if front:
        ax.plot([t.speedup * rate for t in front], [t.loss for t in front], color="black", lw=1.2, marker=".",
                label="Pareto front (proxy)")
    if target:
        ax.axvline(target * rate, color="grey", ls="--", lw=1, label=f"target {target:g}x")
    if chosen is not None and chosen.loss is not None:
        ax.scatter([chosen.speedup * rate], [chosen.loss], marker="*", s=220, color="gold", edgecolor="black",
                   zorder=5, label="chosen")
    ax.set_xlabel(f"decode tokens/s, batch 1 (measured speed-up x dense {rate:.1f} tokens/s)")
    ax.set_ylabel("proxy perplexity")
    if scored and max(t.loss for t in scored) > 10 * min(t.loss for t in scored):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

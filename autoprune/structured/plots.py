"""The structured search's picture: proxy perplexity against measured decode tokens/s, every trial and the front."""

from __future__ import annotations

from pathlib import Path

from autoprune.structured.search import Trial, pareto_front


def plot_front(trials: list[Trial], path: Path, target_tokens_per_s: float | None = None,
               chosen: Trial | None = None, title: str = "structured search") -> Path:
    """Scored trials (feasible filled, short of the target hollow), the Pareto front as a step line,
    the target's tokens/s as a vertical line and the ``chosen`` trial as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    scored = [t for t in trials if t.loss is not None]
    for feasible, style in ((True, {"color": "tab:blue"}), (False, {"facecolors": "none", "edgecolors": "tab:blue"})):
        pts = [t for t in scored if t.feasible == feasible]
        if pts:
            ax.scatter([t.tokens_per_s for t in pts], [t.loss for t in pts], s=14, alpha=0.7,
                       label="trials" + ("" if feasible else " (short of the target)"), **style)
    front = pareto_front(trials)
    if front:
        ax.step([t.tokens_per_s for t in front], [t.loss for t in front], where="post", color="black", lw=1.2,
                label="Pareto front (proxy)")
    if target_tokens_per_s:
        ax.axvline(target_tokens_per_s, color="grey", ls="--", lw=1, label="target speed-up")
    if chosen is not None and chosen.loss is not None:
        ax.scatter([chosen.tokens_per_s], [chosen.loss], marker="*", s=220, color="gold", edgecolor="black",
                   zorder=5, label="chosen")
    ax.set_xlabel("measured decode tokens/s (batch 1)")
    ax.set_ylabel("proxy perplexity")
    if scored and max(t.loss for t in scored) > 10 * min(t.loss for t in scored):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

"""PNG plots of a search: the best policies' per-block ratios and the search's progress."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, ax, path: Path) -> Path:
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_layer_ratios(policies: list[tuple[str, list[float]]], path: Path, winner: str | None = None,
                      recipes: list[tuple[str, list[float]]] = ()) -> Path:
    """One line per (label, block ratios) of the validated candidates, the ``winner`` (a label)
    drawn thick; the recipes' ratios dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, ratios in policies:
        won = label == winner
        ax.plot(range(len(ratios)), ratios, marker="o", lw=3 if won else 1, zorder=3 if won else 2,
                label=f"{label} (winner)" if won else label)
    for label, ratios in recipes:
        ax.plot(range(len(ratios)), ratios, ls="--", lw=1.5 if label == winner else 1, color="grey" if label != winner
                else "black", label=f"recipe {label}" + (" (winner)" if label == winner else ""))
    ax.set_xticks(range(max((len(r) for _, r in [*policies, *recipes]), default=0)))
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity ratio")
    ax.set_title("layer-wise sparsity: validated candidates and recipes")
    return _save(plt, fig, ax, path)


def plot_progress(entries: list[dict], path: Path, winner: int | None = None) -> Path:
    """Proxy loss of every full-fidelity candidate in order, per strategy, the best so far, and the
    search's validated ``winner`` (a candidate id) marked where it was found."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ok = [e for e in entries if e["result"]["error"] is None and e.get("fidelity", 1.0) == 1.0
          and not e.get("sequential")]
    for strategy in sorted({e["strategy"] for e in ok}):
        pts = [(i, e["result"]["loss"]) for i, e in enumerate(ok) if e["strategy"] == strategy]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, label=strategy)
    best, curve = float("inf"), []
    for e in ok:
        best = min(best, e["result"]["loss"])
        curve.append(best)
    ax.plot(range(len(curve)), curve, color="black", label="best proxy so far")
    found = [(i, e["result"]["loss"]) for i, e in enumerate(ok) if e["id"] == winner]
    if found:
        ax.scatter([found[0][0]], [found[0][1]], marker="*", s=220, color="gold", edgecolor="black", zorder=5,
                   label=f"winner #{winner} (validated)")
    ax.set_xlabel("full-fidelity candidate (completion order)")
    ax.set_ylabel("proxy loss")
    ax.set_yscale("log")
    ax.set_title("search progress")
    return _save(plt, fig, ax, path)

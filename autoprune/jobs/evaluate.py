"""``autoprune eval``: perplexity of a (pruned) model on a data set."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.config import Config, check_positive
from autoprune.evaluation import perplexity
from autoprune.jobs.common import evaluation_windows
from autoprune.models import load_model
from autoprune.pruning.engine import model_sparsity


@dataclass
class EvalConfig(Config):
    model: str
    data: str = "wikitext2"
    seqlen: int = 2048
    windows: int | None = None  # the first N windows only
    batch_size: int = 8
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "windows", "batch_size")


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """{"perplexity", "nll", "tokens", "windows", "sparsity", "model", "data", "seqlen"}."""
    lm = load_model(cfg.model, cfg.dtype, cfg.device)
    windows = evaluation_windows(lm.tokenizer, cfg.data, cfg.seqlen, cfg.windows)
    res = perplexity(lm.model, windows, cfg.batch_size, progress)
    return {"model": cfg.model, "data": cfg.data, "seqlen": cfg.seqlen, "windows": len(windows),
            "tokens": res.tokens, "nll": res.nll, "perplexity": res.perplexity,
            "sparsity": model_sparsity(lm.model)[0]}

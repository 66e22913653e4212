"""Shared setup of the GP benchmarks: stories260K, calibration/proxy/evaluation windows, the full protocol."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from autoprune.evaluation.perplexity import perplexity
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.jobs.common import calibration_windows, evaluation_windows
from autoprune.models import load_model
from autoprune.pruning.engine import collect_stats, prune_sequential
from autoprune.pruning.policy import Policy


@dataclass
class Setup:
    model: torch.nn.Module
    calib: torch.Tensor  # 64 x 256 tokens of tinystories:0-499, seed 0 (the sequential protocol's calibration)
    proxy: torch.Tensor  # proxy windows from tinystories:0-499, seed 1 (search selects on these only)
    select: torch.Tensor  # 32 x 256 tokens of tinystories:0-499, seed 2: the sequential protocol ranks finalists
    heldout: torch.Tensor  # every 256-token window of tinystories:500-999
    evaluator: ProxyEvaluator  # fidelity in proxy batches of ``proxy_batch`` windows
    stats_seconds: float


def setup(proxy_windows: int = 32, objective: str = "kl", threads: int = 1, proxy_batch: int = 2) -> Setup:
    torch.set_num_threads(threads)
    lm = load_model("stories260K", dtype="float32", device="cpu")
    calib = calibration_windows(lm.tokenizer, "tinystories:0-499", 64, 256, 0)
    proxy = calibration_windows(lm.tokenizer, "tinystories:0-499", proxy_windows, 256, 1)
    select = calibration_windows(lm.tokenizer, "tinystories:0-499", 32, 256, 2)
    heldout = evaluation_windows(lm.tokenizer, "tinystories:500-999", 256)
    t0 = time.perf_counter()
    stats = collect_stats(lm.model, calib, gradients=True, progress=False)
    ev = ProxyEvaluator(lm.model, stats, proxy, objective, batch_size=8, proxy_batch=proxy_batch)
    return Setup(lm.model, calib, proxy, select, heldout, ev, time.perf_counter() - t0)


def pruned(s: Setup, policy: Policy) -> torch.nn.Module:
    """A fresh copy of the dense model, pruned by the full sequential protocol."""
    model = copy.deepcopy(s.model)
    prune_sequential(model, policy, s.calib, batch_size=8, progress=False)
    return model


def full_protocol(s: Setup, policy: Policy) -> float:
    """Perplexity on tinystories:500-999 after sequential pruning of a fresh copy of the dense model."""
    return perplexity(pruned(s, policy), s.heldout, batch_size=8).perplexity

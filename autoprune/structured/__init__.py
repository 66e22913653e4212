"""Structured pruning that makes a model faster: whole decoder blocks, KV groups of attention heads
and MLP channels removed, the layers that read them reconstructed by least squares, and a smaller
model that plain transformers loads."""

from autoprune.structured.apply import ShrinkReport, dense_block_influence, parameters, shrink_model
from autoprune.structured.importance import Importance
from autoprune.structured.layout import Layout, Plan, discover
from autoprune.structured.speed import Probe, Speed, measure
from autoprune.structured.speedup import Candidate, Planner, select_plan

__all__ = ["Candidate", "Importance", "Layout", "Plan", "Planner", "Probe", "ShrinkReport", "Speed",
           "dense_block_influence", "discover", "measure", "parameters", "select_plan", "shrink_model"]

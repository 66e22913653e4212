"""Calibration and evaluation text: documents from files or named sets, cut into token windows."""

from autoprune.data.documents import load_documents
from autoprune.data.windows import sample_windows, tokenize_windows

__all__ = ["load_documents", "sample_windows", "tokenize_windows"]

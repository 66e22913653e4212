"""Documents from a data spec: ``NAME_OR_PATH[:START-END]``.

- a ``.txt`` file: documents separated by lines holding only ``<|endoftext|>`` (else one document);
- a ``.jsonl`` file: one document per line, in its ``text`` field;
- a named set: ``tinystories`` (the validation split), ``wikitext2`` (test split; ``wikitext2-valid``),
  ``c4`` (validation documents), read from ``$AUTOPRUNE_DATA_DIR/text`` when there, else the Hub.

``START-END`` picks documents START..END inclusive, in file order (``tinystories:0-499``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from autoprune.errors import UserError

EOT = "<|endoftext|>"
_SLICE = re.compile(r"^(?P<src>.+?)(?::(?P<a>\d+)-(?P<b>\d+))?$")


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if EOT not in text:
        return [text]
    return [d.strip() for d in re.split(rf"^\s*{re.escape(EOT)}\s*$", text, flags=re.M) if d.strip()]


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            docs.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}:{i + 1}: not a JSON object with a 'text' field") from None
    return docs


def _read_wikitext(path: Path) -> list[str]:
    # One stream, as the Hub's rows joined by "\n\n" (Wanda / SparseGPT convention).
    return ["\n\n".join(path.read_text(encoding="utf-8").splitlines())]


@dataclass(frozen=True)
class NamedSet:
    local: str  # path under $AUTOPRUNE_DATA_DIR/text
    hub: tuple[str, str]  # (dataset repo, file)
    reader: Callable[[Path], list[str]]


NAMED: dict[str, NamedSet] = {
    "tinystories": NamedSet("tinystories/tinystories_valid_first1000_eot.txt",
                            ("roneneldan/TinyStories", "TinyStories-valid.txt"), _read_txt),
    "wikitext2": NamedSet("wikitext-2-raw/wiki.test.raw",
                          ("Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet"), _read_wikitext),
    "wikitext2-valid": NamedSet("wikitext-2-raw/wiki.valid.raw",
                                ("Salesforce/wikitext", "wikitext-2-raw-v1/validation-00000-of-00001.parquet"),
                                _read_wikitext),
    "c4": NamedSet("c4/c4_validation_2k.first1000.jsonl",
                   ("allenai/c4", "en/c4-validation.00000-of-00008.json.gz"), _read_jsonl),
}


def _from_hub(name: str, spec: NamedSet) -> list[str]:
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(spec.hub[0], spec.hub[1], repo_type="dataset"))
    except Exception as e:
        raise UserError(f"data {name!r}: not under $AUTOPRUNE_DATA_DIR/text and the Hub could not be "
                        f"reached ({type(e).__name__})") from None
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        return ["\n\n".join(r.rstrip("\n") for r in rows)] if name.startswith("wikitext") else rows
    if path.name.endswith(".json.gz"):
        import gzip

        return [json.loads(line)["text"] for line in gzip.open(path, "rt", encoding="utf-8")]
    return spec.reader(path)


def _read_source(src: str) -> list[str]:
    path = Path(src).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        if path.suffix in (".txt", ".raw", ""):
            return _read_txt(path)
        raise UserError(f"{src}: unsupported data file (use .txt or .jsonl)")
    if src in NAMED:
        spec = NAMED[src]
        root = os.environ.get("AUTOPRUNE_DATA_DIR")
        if root and (Path(root) / "text" / spec.local).is_file():
            return spec.reader(Path(root) / "text" / spec.local)
        return _from_hub(src, spec)
    if path.suffix or "/" in src:
        raise UserError(f"{src}: data file not found")
    raise UserError(f"unknown data {src!r}: not a file or a named set ({', '.join(NAMED)})")


def load_documents(spec: str) -> list[str]:
    """The documents named by ``spec`` (see the module docstring); never empty."""
    m = _SLICE.match(spec.strip())
    if not m:
        raise UserError("empty data spec")
    try:
        docs = _read_source(m["src"])
    except UnicodeDecodeError as e:
        raise UserError(f"{m['src']}: not UTF-8 text (byte {e.start})") from None
    if m["a"] is not None:
        a, b = int(m["a"]), int(m["b"])
        if a > b or b >= len(docs):
            raise UserError(f"{spec}: document range {a}-{b} outside 0-{len(docs) - 1}")
        docs = docs[a:b + 1]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"{spec}: no text")
    return docs

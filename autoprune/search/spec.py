"""The search spec: every strategy's space, resolved once and stored with the run.

The spaces ship inside the package (``autoprune/search_spaces/*.yaml``, also reachable as the
top-level ``search_spaces/``), so an installed wheel searches the same spaces as a checkout. A
user's folder (``--spaces DIR``) overrides whole files by name. The resolved spec (BO's allocation
spaces inlined) is written to the run folder as ``search_spec.json`` and logged with the run;
``--resume`` reads it from there, whatever the YAML files say by then.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from autoprune.errors import UserError

SPACES = ("gp", "bo", "rl", "evo", "random", "allocation")  # one YAML file each
SPEC_FILE = "search_spec.json"


def packaged_dir() -> Path:
    return Path(str(resources.files("autoprune") / "search_spaces"))


def load_yaml(path: Path) -> dict:
    """A YAML mapping from ``path`` ({} for an empty file); one-line errors."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: search space file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise UserError(f"{path}: malformed YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def resolve(override: Path | None = None) -> dict[str, dict]:
    """Every space, packaged or from ``override`` (a folder of ``<name>.yaml``), BO's allocation
    spaces inlined from ``allocation.yaml``."""
    files = {name: packaged_dir() / f"{name}.yaml" for name in SPACES}
    if override is not None:
        override = Path(override)
        if not override.is_dir():
            raise UserError(f"--spaces {override}: not a folder of search space files")
        unknown = sorted(p.stem for p in override.glob("*.yaml") if p.stem not in SPACES)
        if unknown:
            raise UserError(f"--spaces {override}: unknown space files {', '.join(unknown)} (known: {', '.join(SPACES)})")
        files.update({p.stem: p for p in override.glob("*.yaml")})
    spec = {name: load_yaml(path) for name, path in files.items() if path.is_file()}
    allocation = spec.get("allocation", {})
    names = spec.get("bo", {}).get("allocation", "per_block")
    if isinstance(names, (str, dict)):
        names = [names]
    if isinstance(names, list):
        inlined = []
        for n in names:
            if isinstance(n, str):
                if n not in allocation:
                    raise UserError(f"bo.yaml: unknown allocation space {n!r} (choose {', '.join(map(str, allocation))})")
                n = {"name": n, **allocation[n]}
            inlined.append(n)
        spec["bo"] = {**spec.get("bo", {}), "allocation": inlined}
    return spec


def save(out: Path, spec: dict) -> Path:
    path = Path(out) / SPEC_FILE
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def stored(out: Path) -> dict | None:
    """The spec a search in ``out`` started with (None for a run that predates stored specs)."""
    path = Path(out) / SPEC_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: damaged (not JSON)") from None


def check(spec: dict[str, dict], names: list[str]) -> None:
    """Read the named strategies' spaces now, so a bad value in a space file is refused in one line
    before the search makes its run folder or starts a worker."""
    from autoprune.search.registry import strategy_class

    for name in names:
        strategy_class(name).read_space(dict(spec.get(name, {})))

"""The search spec: packaged spaces, a user's overrides, one resolved spec stored with the run and
read back on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from autoprune.errors import UserError
from autoprune.search import spec

CLI = [sys.executable, "-m", "autoprune.cli"]


def test_packaged_spaces_resolve_with_bo_allocations_inlined():
    s = spec.resolve()
    assert {"gp", "bo", "rl", "evo", "allocation"} <= set(s) <= set(spec.SPACES)
    assert spec.packaged_dir().parent.name == "autoprune"
    assert [a["name"] for a in s["bo"]["allocation"]] == ["per_block", "attn_mlp"]
    assert s["bo"]["allocation"][0]["kind"] == "per_block"


def test_a_user_folder_overrides_whole_files_and_bad_ones_are_refused(tmp_path):
    (tmp_path / "gp.yaml").write_text("population: 8\n")
    s = spec.resolve(tmp_path)
    assert s["gp"] == {"population": 8} and s["evo"] == spec.resolve()["evo"]
    (tmp_path / "gpp.yaml").write_text("{}\n")
    with pytest.raises(UserError, match="unknown space files gpp"):
        spec.resolve(tmp_path)
    (tmp_path / "gpp.yaml").unlink()
    (tmp_path / "gp.yaml").write_text("population: [8\n")
    with pytest.raises(UserError, match="malformed YAML"):
        spec.resolve(tmp_path)
    with pytest.raises(UserError, match="not a folder"):
        spec.resolve(tmp_path / "gp.yaml")


def test_a_bad_value_in_a_space_file_is_refused_before_the_search_writes_anything(tmp_path, capsys):
    from autoprune.cli import main

    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "bo.yaml").write_text("n_trials: -3\n")
    spec.check(spec.resolve(spaces), ["gp"])  # only the strategies the search runs are read
    with pytest.raises(UserError, match="bo.yaml: n_trials"):
        spec.check(spec.resolve(spaces), ["gp", "bo"])
    out = tmp_path / "runs" / "x"
    assert main(["search", "--model", "stories260K", "--strategies", "gp,bo", "--spaces", str(spaces),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bo.yaml: n_trials" in err and not out.exists()


@pytest.mark.slow
def test_resume_reads_the_stored_spec_not_the_edited_files(tmp_path):
    from tests.jobs.test_search import _results, _start, _wait_for

    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "gp.yaml").write_text("population: 8\ngenerations: null\n")
    args = ["search", "--model", "stories260K", "--strategies", "gp", "--calib-windows", "8", "--proxy-windows", "4",
            "--eval-windows", "8", "--top-k", "1", "--baselines", "none", "--budget", "60s", "--out", "runs/sp"]
    first = _start(args + ["--spaces", str(spaces)], tmp_path)
    journal = tmp_path / "runs" / "sp" / "journal.jsonl"
    _wait_for(lambda: len(_results(journal)) >= 2, 150, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    stored = json.loads((tmp_path / "runs" / "sp" / spec.SPEC_FILE).read_text())
    assert stored["gp"] == {"population": 8, "generations": None}
    (spaces / "gp.yaml").write_text("population: [broken\n")  # edited after the start: not read again
    resumed = subprocess.run(CLI + ["search", "--resume", "--out", "runs/sp"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "runs" / "sp" / spec.SPEC_FILE).read_text()) == stored
    bad = subprocess.run(CLI + ["search", *args[1:-1], "runs/other", "--spaces", str(spaces)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "malformed YAML" in bad.stderr and not (tmp_path / "runs" / "other").exists()


def test_code_defaults_are_the_packaged_files():
    """Each strategy's space dataclass, read from the packaged file, equals its defaults: the
    files and the code cannot disagree."""
    from autoprune.config import read
    from autoprune.search.allocation_space import AllocationSpace, parse_space
    from autoprune.search.bo import BOSpace
    from autoprune.search.evo import EvoSpace
    from autoprune.search.gp_space import GPSpace
    from autoprune.search.random_search import RandomSpace
    from autoprune.search.rl import RLSpace

    s = spec.resolve()
    classes = {"gp": GPSpace, "bo": BOSpace, "rl": RLSpace, "evo": EvoSpace, "random": RandomSpace}
    assert set(classes) | {"allocation"} == set(s) == set(spec.SPACES)
    for name, cls in classes.items():
        assert read(cls, s[name], f"{name}.yaml") == cls(), name
    for name, entry in s["allocation"].items():  # what each entry sets beyond its kind is the defaults
        own = AllocationSpace(name, entry["kind"], per_block=entry.get("per_block", False))
        assert parse_space(name, entry) == own, name


def test_one_reader_refuses_unknown_keys_and_bad_values_in_one_line():
    from autoprune.config import read
    from autoprune.search.bo import BOSpace
    from autoprune.search.rl import RLSpace

    for space, message in ((["x"], "rl.yaml: expected a mapping, got list"),
                           ({"gamma": 0.9}, "rl.yaml: unknown keys gamma"),
                           ({"episodes": "10"}, "rl.yaml: episodes must be an integer or null, got '10'"),
                           ({"episodes": True}, "rl.yaml: episodes must be an integer or null, got True"),
                           ({"episodes": 0}, "rl.yaml: episodes must be a positive integer"),
                           ({"bounds": [0.1]}, r"rl.yaml: bounds must be \[a number, a number\], got \[0.1\]"),
                           ({"bounds": [0.5, 0.2]}, r"rl.yaml: bounds must be \[low, high\] within \[0, 1\)")):
        with pytest.raises(UserError, match=message) as e:
            read(RLSpace, space, "rl.yaml")
        assert "\n" not in str(e.value)
    assert read(RLSpace, {"span": 1, "bounds": [0, 0.9]}, "rl.yaml").span == 1.0  # ints are numbers; lists tuples
    with pytest.raises(UserError, match="bo.yaml: allocation must be a space name"):
        read(BOSpace, {"allocation": ["per_block", "per_block"]}, "bo.yaml")
    with pytest.raises(UserError, match="unknown allocation space 'nope'"):
        read(BOSpace, {"allocation": "nope"}, "bo.yaml")

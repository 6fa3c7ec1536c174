"""``attnlab experiment``: each experiment runs from the command line with --seed/--out/--quick and writes its
files; bad input is one line on stderr with exit code 2."""

import inspect
import json
import subprocess
import sys

import pytest

from attnlab import cli
from attnlab.learn.experiments import cost_doubling


def _one_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{text}"
    return lines[0]


def test_scaling_through_the_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "attnlab", "experiment", "scaling", "--quick", "--seed", "1",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Without scaling var(q.k) grows with d_k" in result.stdout and "With 1/sqrt(d_k)" in result.stdout
    assert json.loads((tmp_path / "scaling.json").read_text())["seed"] == 1
    assert (tmp_path / "scaling.png").is_file()


def test_bottleneck_then_scorers_share_the_out_folder(tmp_path, capsys):
    out = str(tmp_path)
    assert cli.main(["experiment", "bottleneck", "--quick", "--steps", "2", "--max-len", "8", "--no-progress",
                     "--out", out]) == 0
    printed = capsys.readouterr()
    assert "source length" in printed.out and "5-8" in printed.out and printed.err == ""
    saved = json.loads((tmp_path / "bottleneck.json").read_text())
    assert saved["config"]["steps"] == 2 and saved["config"]["max_len"] == 8
    assert cli.main(["experiment", "scorers", "--quick", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "bottleneck task" in printed and "additive attention took" in printed
    assert (tmp_path / "scorers.png").is_file()


def test_bottleneck_shows_progress_on_stderr(tmp_path, capsys):
    assert cli.main(["experiment", "bottleneck", "--quick", "--steps", "4", "--max-len", "6", "--out",
                     str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "4/4" in err and "additive" in err and "#" in err


def test_cost_is_dispatched_to_the_cost_experiment(tmp_path, monkeypatch):
    # the cost experiment's own run is tested in test_experiment_cost.py; here: the call and its signature
    calls = []
    inspect.signature(cost_doubling.run).bind(n=128, out=str(tmp_path), seed=3, quick=True)
    monkeypatch.setattr(cost_doubling, "run", lambda **kwargs: calls.append(kwargs) or {})
    assert cli.main(["experiment", "cost", "--n", "128", "--seed", "3", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == [{"n": 128, "out": str(tmp_path), "seed": 3, "quick": True}]


@pytest.mark.parametrize("args, expected", [
    (["experiment", "scaling", "--seed", "-1"], "--seed must be a non-negative integer"),
    (["experiment", "bottleneck", "--steps", "0"], "--steps must be a positive integer"),
    (["experiment", "cost", "--n", "0"], "--n must be a positive integer"),
    (["experiment", "scorers", "--quick", "--bottleneck", "/no/such/bottleneck.json"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, capsys, tmp_path):
    assert cli.main(args + ["--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert line.startswith("attnlab experiment: error:") and expected in line and captured.out == ""


@pytest.mark.parametrize("args", [["experiment"], ["experiment", "nope"], ["experiment", "scaling", "--seed", "x"]])
def test_argument_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2 and _one_line(capsys.readouterr().err).startswith("attnlab experiment")

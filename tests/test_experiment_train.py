"""``attnlab experiment train``: the same model trained through attnlab's kernel and through torch SDPA follows the
same loss curve, to float32 rounding."""

import json

from attnlab import cli
from attnlab.learn.experiments import train


def test_loss_curves_agree_to_float32_rounding(tmp_path):
    cfg = train.Config(steps=25, batch=8, length=16)
    result = train.run(out=tmp_path, seed=3, config=cfg)
    a, b = (result["runs"][impl]["loss"] for impl in ("attnlab", "sdpa"))
    assert len(a) == len(b) == 25
    assert abs(a[0] - b[0]) < 1e-6                                # same weights, same first batch
    ours = result["against_sdpa"]["attnlab"]
    assert ours["max"] < 1e-4 and ours["first_step_above"] is None   # float32 rounding, not a different model
    assert ours["max"] == max(abs(x - y) for x, y in zip(a, b))
    assert min(a[-5:]) < a[0]                                     # it trains
    saved = json.loads((tmp_path / "train.json").read_text())
    assert saved["config"]["steps"] == 25 and (tmp_path / "train.png").stat().st_size > 10_000
    assert "torch SDPA, math backend (control) vs torch SDPA: largest loss difference" in train.table(result)


def test_cli_runs_it_and_rejects_bad_steps(tmp_path, capsys):
    assert cli.main(["experiment", "train", "--quick", "--steps", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "attnlab tiled kernel (autograd bridge)" in out and "wrote train.json, train.png" in out
    assert cli.main(["experiment", "train", "--steps", "0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--steps must be a positive integer, got 0" in err[0]

"""benchmarks/smollm_claims.py (retrieval) and benchmarks/entropy_length.py run end to end at tiny sizes in a fresh
process and write what the docs read: the JSON they pool and the figure they redraw."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(name, *args):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_retrieval_writes_pools_and_redraws(tmp_path):
    out = run("smollm_claims.py", "retrieval", "--facts", "2", "--trials", "1", "--filler", "0", "16",
              "--out", str(tmp_path))
    saved = json.loads((tmp_path / "smollm-retrieval-2-pad0-seed0-0-16.json").read_text())
    assert saved["facts"] == 2 and [p["filler"] for p in saved["points"]] == [0, 16]
    assert saved["points"][1]["distance"] >= 16 and "pooled over the saved runs: 2 fact(s)" in out
    run("smollm_claims.py", "retrieval", "--facts", "2", "--trials", "1", "--filler", "0", "--seed", "1",
        "--out", str(tmp_path))
    out = run("smollm_claims.py", "redraw", "--out", str(tmp_path))
    pooled = out.split("pooled over the saved runs: 2 fact(s)")[1].splitlines()
    assert pooled[2].split()[2] == "2" and pooled[3].split()[2] == "1"      # trials: 2 at filler 0, 1 at 16
    assert (tmp_path / "smollm-retrieval.png").stat().st_size > 1000


def test_entropy_length_writes_json_and_figure(tmp_path):
    out = run("entropy_length.py", "--models", "all-MiniLM-L6-v2", "--out", str(tmp_path))
    d = json.loads((tmp_path / "entropy-length-all-MiniLM-L6-v2.json").read_text())
    assert d["lengths"] == [64, 128, 256, 512] and len(d["nats"][0]) == 6 and "L5 norm / nats" in out
    assert (tmp_path / "entropy-length.png").stat().st_size > 1000

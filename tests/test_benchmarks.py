"""The repository's benchmark scripts run end to end at tiny sizes, as a user runs them (a fresh process, the
environment unchanged): they print their tables and, when asked, the project's targets. No number is asserted
beyond "measured and positive": timings are not tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name, *args):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_attention_script_prints_the_table_and_the_targets_when_asked(tmp_path):
    out = run_script("attention.py", "--sizes", "64", "--contexts", "128,256", "--cases", "dense,decode,decode_cold",
                     "--impls", "tiled,torch", "--targets", "--out", str(tmp_path))
    assert "median ms" in out and "x torch" in out and "OpenBLAS overrides" in out
    targets_text = out[out.index("targets (value <= limit"):]
    lines = {line.split()[0]: line for line in targets_text.splitlines()[1:] if line.startswith("  ")}
    assert "not measured" in lines["dense_4096_tiled_over_torch"]                # n = 4096 was not in this run
    assert "*" in lines["decode_cold_worst_2n_over_n_tiled"]                     # re-measured, interleaved
    report = json.loads((tmp_path / "attention.json").read_text())
    cold, hot = (report["targets"][f"decode{s}_worst_2n_over_n_tiled"] for s in ("_cold", ""))
    assert cold["paired"] and cold["value"] > 0 and cold["table"] > 0
    assert not hot["paired"] and hot["value"] == hot["table"] > 0               # the hot step: the table only
    assert (tmp_path / "attention.png").stat().st_size > 10_000


def test_attention_script_prints_no_targets_unless_asked():
    out = run_script("attention.py", "--sizes", "64", "--cases", "dense", "--impls", "tiled")
    assert "median ms" in out and "targets" not in out


def test_targets_are_judged_from_the_table_and_the_interleaved_pairs():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import targets
    finally:
        sys.path.remove(str(BENCHMARKS))
    from attnlab.bench import Result

    rows = [Result("dense", 4096, "tiled", 0.9), Result("dense", 4096, "torch", 1.0),
            Result("decode", 1024, "tiled", 1.0), Result("decode", 2048, "tiled", 2.5)]
    checks = targets.targets(rows, {"dense_4096_tiled_over_torch": 0.7})
    dense = checks["dense_4096_tiled_over_torch"]
    assert dense == {"value": 0.7, "table": 0.9, "paired": True, "limit": 0.8, "met": True}
    assert checks["decode_worst_2n_over_n_tiled"]["met"] is False                 # 2.5 > 2.3
    assert checks["causal_4096_tiled_over_torch"]["value"] is None
    text = targets.format_targets(checks)
    assert "0.700*" in text and "(table 0.900)" in text and "NOT met" in text and "not measured" in text


def test_ceiling_script_prints_the_floor_next_to_torch():
    """benchmarks/ceiling.py (the floor under a NumPy kernel) runs end to end at a tiny size."""
    out = run_script("ceiling.py", "--sizes", "128", "--heads", "2", "--head-dim", "16", "--repeat", "5")
    rows = [line.split() for line in out.splitlines() if line.split()[:2] in (["dense", "128"], ["causal", "128"])]
    assert [(r[0], r[2]) for r in rows] == [("dense", p) for p in ("torch", "attnlab", "floor", "matmuls")] + \
        [("causal", p) for p in ("torch", "attnlab", "floor")]
    assert all(float(r[3]) > 0 for r in rows) and float(rows[0][5]) == 1.0
    assert "kernel ceiling" in out and "BLAS: " in out


@pytest.mark.parametrize("junk", ["-1", "nan"])
def test_ceiling_script_refuses_a_negative_settle_in_one_line(junk):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "ceiling.py"), "--settle", junk], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--settle must be a non-negative number of seconds" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_ceiling_script_masks_table_puts_each_mask_beside_dense_and_its_floor():
    """benchmarks/ceiling.py --masks (issue 17): every mask kind's row with its ratio to dense and to its floor."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import ceiling
    finally:
        sys.path.remove(str(BENCHMARKS))

    out = run_script("ceiling.py", "--sizes", "256", "--heads", "2", "--head-dim", "16", "--repeat", "5",
                     "--masks", "all", "--no-torch-table", "--settle", "0.001")
    assert "each timed run follows 0.001 s of untimed runs" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[1:2] == ["256"]}
    assert set(rows) == {"dense", *ceiling.MASK_KINDS}
    assert float(rows["dense"][4]) == 1.0 and all(float(r[2]) > 0 and float(r[5]) > 0 for r in rows.values())
    n = 256
    assert ceiling.allowed_pairs(ceiling.mask_of("causal", n), n) == n * (n + 1) // 2
    assert ceiling.allowed_pairs(ceiling.mask_of("window256", n), n) == n * (n + 1) // 2          # 256 keys: all
    assert ceiling.allowed_pairs(ceiling.mask_of("document", n), n) == 8 * 32 * 32

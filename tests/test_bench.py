"""`attnlab bench` (and benchmarks/attention.py, which calls the same code) runs end to end on tiny sizes and writes
its table, JSON and plot. Numbers are not asserted: benchmarks are scripts, timings are not tests."""

import json

import pytest

from attnlab import bench, cli


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    code = cli.main(["bench", "--sizes", "64", "--contexts", "128,256", "--cases", "dense,window,decode,decode_cold",
                     "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "x torch" in text and "targets (value <= limit" in text
    report = json.loads((tmp_path / "attention.json").read_text())
    rows = {(r["case"], r["n"], r["impl"]) for r in report["results"]}
    assert ("dense", 64, "tiled") in rows and ("decode", 256, "torch") in rows
    assert all(r["median_s"] > 0 and len(r["runs"]) == (25 if r["case"].startswith("decode") else 5)
               for r in report["results"])
    assert report["meta"]["blas"] and "openblas_env" in report["meta"]
    assert (tmp_path / "attention.png").stat().st_size > 10_000
    assert report["targets"]["decode_worst_2n_over_n_tiled"]["value"] is not None
    cold = report["targets"]["decode_cold_worst_2n_over_n_tiled"]
    assert cold["value"] is not None and cold["paired"] and cold["table"] is not None   # re-measured interleaved
    assert not report["targets"]["decode_worst_2n_over_n_tiled"]["paired"]


def test_evict_caches_runs_before_each_timed_run():
    from attnlab.measure import evict_caches, time_call

    calls = []
    timing = time_call(lambda: calls.append("fn"), repeat=5, warmup=1, before=lambda: calls.append("before"))
    assert calls == ["fn"] + ["before", "fn"] * 5 and len(timing.runs) == 5
    evict_caches(2**20)
    with pytest.raises(ValueError, match="nbytes must be an integer >= 64"):
        evict_caches(0)


def test_bench_says_what_it_skips(tmp_path, capsys):
    cli.main(["bench", "--sizes", "128", "--cases", "window", "--reference-limit", "0.000001",
              "--torch-mask-limit", "64"])
    text = capsys.readouterr().out
    assert "skipped: needs ~" in text and "skipped: no sliding-window SDPA" in text


def test_bench_rejects_bad_arguments(capsys):
    assert cli.main(["bench", "--repeat", "3"]) == 2
    assert "--repeat must be >= 5" in capsys.readouterr().err
    assert bench.allowed_pairs("window", 1000) == 1000 * 256 - 256 * 255 // 2


def test_ceiling_script_prints_the_floor_next_to_torch(capsys):
    """benchmarks/ceiling.py (the floor under a NumPy kernel) runs end to end at a tiny size."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "ceiling.py"
    spec = importlib.util.spec_from_file_location("ceiling", path)
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    assert ceiling.main(["--sizes", "128", "--heads", "2", "--head-dim", "16", "--repeat", "5"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:2] in
            (["dense", "128"], ["causal", "128"])]
    assert [(r[0], r[2]) for r in rows] == [("dense", p) for p in ("torch", "attnlab", "floor", "matmuls")] + \
        [("causal", p) for p in ("torch", "attnlab", "floor")]
    assert all(float(r[3]) > 0 for r in rows) and float(rows[0][5]) == 1.0


def test_bench_keeps_the_old_naive_limit_flag(capsys):
    cli.main(["bench", "--sizes", "128", "--cases", "window", "--naive-limit", "0.000001", "--torch-mask-limit", "64"])
    assert "skipped: needs ~" in capsys.readouterr().out

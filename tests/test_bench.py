"""`attnlab bench` runs end to end on tiny sizes and writes its table, JSON and plot. Numbers are not asserted:
benchmarks are scripts, timings are not tests. (The project's targets: tests/test_benchmarks.py.)"""

import json

import pytest

from attnlab import bench, cli


def test_bench_writes_table_json_and_plot(tmp_path, capsys):
    code = cli.main(["bench", "--sizes", "64", "--contexts", "128,256", "--cases", "dense,window,decode,decode_cold",
                     "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    assert "median ms" in text and "x torch" in text
    assert "BLAS: " in text and " kernel " in text and "machine: " in text              # machine + BLAS kernel
    assert "targets" not in text                                                          # only when asked
    report = json.loads((tmp_path / "attention.json").read_text())
    assert "targets" not in report
    rows = {(r["case"], r["n"], r["impl"]) for r in report["results"]}
    assert ("dense", 64, "tiled") in rows and ("decode", 256, "torch") in rows
    assert all(r["median_s"] > 0 and len(r["runs"]) == (25 if r["case"].startswith("decode") else 5)
               for r in report["results"])
    assert report["meta"]["blas"] and "openblas_env" in report["meta"]
    assert (tmp_path / "attention.png").stat().st_size > 10_000


def test_bench_says_torch_memory_is_a_lower_bound_and_why(capsys):
    cli.main(["bench", "--sizes", "64", "--cases", "dense", "--impls", "tiled,torch"])
    text = capsys.readouterr().out
    torch_rows = [line.split() for line in text.splitlines() if line.split()[:3] == ["dense", "64", "torch"]]
    assert torch_rows and all(row[5].startswith(">=") or row[5] == "n/a" for row in torch_rows)
    note = text[text.index("peak MiB: "):]
    assert "LOWER BOUND" in note.upper() and "tracemalloc does not see PyTorch" in note
    assert "peak resident set" in note and "reuses" in note


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
    err = capsys.readouterr().err
    assert "repeat" in err and "must be an integer >= 5, got 3" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit, match="2"):
        cli.main(["bench", "--sizes", "0"])
    assert "expected positive integers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cases must be one of"):
        bench.Settings(cases=("dense", "sideways"))
    with pytest.raises(ValueError, match="reference_limit must be a positive finite number"):
        bench.Settings(reference_limit=0)
    for bad, said in (("-1", "must be >= 0, got -1.0"), ("nan", "must be a finite number, got nan")):
        assert cli.main(["bench", "--sizes", "16", "--settle", bad]) == 2
        err = capsys.readouterr().err
        assert "settle (seconds) " + said in err and len(err.strip().splitlines()) == 1
    assert bench.allowed_pairs("window", 1000) == 1000 * 256 - 256 * 255 // 2
    assert bench.allowed_pairs("causal", 4) == 10 and bench.allowed_pairs("decode", 7) == 7


def test_bench_keeps_the_old_naive_limit_flag(capsys):
    cli.main(["bench", "--sizes", "128", "--cases", "window", "--naive-limit", "0.000001", "--torch-mask-limit", "64"])
    assert "skipped: needs ~" in capsys.readouterr().out


def test_the_paths_of_one_size_share_inputs_and_interleave_their_runs(monkeypatch):
    from attnlab import measure

    calls, real = [], measure.time_calls
    monkeypatch.setattr(bench, "time_calls", lambda *fns, **kw: calls.append(len(fns)) or real(*fns, **kw))
    rows = bench.measure("causal", 32, bench.Settings(sizes=(32,), impls=("reference", "tiled")), None)
    assert calls == [2] and [r.impl for r in rows] == ["reference", "tiled"]     # one interleaved timing
    assert all(len(r.runs) == 5 and r.median_s > 0 and r.peak_bytes is not None for r in rows)

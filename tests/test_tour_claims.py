"""The tour's measured numbers support the sentences beside them: each reading is derived from the numbers it
prints, a measurement that disagrees with the model is explained instead of printed beside it."""

import re

import pytest

from attnlab.learn import tour
from attnlab.learn.report import Report, plain_console


def text_of(report):
    return report.console.file.getvalue()


@pytest.mark.parametrize("runs, runs_to, verdict, why", [
    ([0.010] * 5, [0.041] * 5, "agrees: n^2 dominates", ""),
    ([0.010] * 5, [0.020] * 5, "below the model", "about 6.67 ms of each call does not grow like n^2"),
    ([0.010] * 5, [0.060] * 5, "above the model", "2 MiB, more than the CPU's caches"),
    ([0.010] * 5, [0.010, 0.050, 0.012, 0.060, 0.011], "noisy", "the machine's load changed"),
])
def test_doubling_reading_names_why_a_ratio_differs_from_the_model(runs, runs_to, verdict, why):
    r = tour.read_doubling(512, runs, runs_to, 4.0, 2**21)
    assert r.verdict == verdict and why in r.why and (why == "") == (r.why == "")
    assert r.ratio == pytest.approx(sum(sorted(runs_to)[2:3]) / sum(sorted(runs)[2:3]))


def test_cost_section_explains_each_disagreement_instead_of_printing_both(monkeypatch):
    """The old section printed '1.1x (the model says 4x; small n and a busy machine blur it)'."""
    fake = [tour.read_doubling(512, [0.010] * 5, [0.013] * 5, 4.0, 2**21),
            tour.read_doubling(1024, [0.013] * 5, [0.052] * 5, 4.0, 2**23)]
    monkeypatch.setattr(tour, "measure_doubling", lambda sizes: fake)
    report = Report(None, figures=False, console=plain_console())
    report.section("cost", "cost")
    tour.doubling(report, quick=True)
    text = " ".join(text_of(report).split())
    assert "blur" not in text and "the model says" not in text
    assert "about 9.00 ms of each call does not grow like n^2" in text and "below the model" in text
    assert "Doubling n multiplied the time by 4.00 from n = 1024 to 2048 (the model: 4.00)" in text
    assert "CPU time of the calling thread" in text and "load average" in text


def test_cost_section_measures_every_step_it_prints():
    readings = tour.measure_doubling((128, 256, 512))
    assert [(r.n, r.to) for r in readings] == [(128, 256), (256, 512)]
    for r in readings:
        assert r.time_s > 0 and r.ratio == pytest.approx(r.time_to_s / r.time_s)
        assert r.predicted == pytest.approx(4.0, rel=0.05)          # naive FLOPs at 2n over n
        assert (r.verdict.startswith("agrees")) == (r.why == "")


def test_memory_sentence_follows_the_measured_growth():
    sizes = [256, 2048]
    ok = tour.memory_growth(sizes, {"naive": [1.0, 62.0], "tiled": [1.0, 3.9]},
                            {"naive": [1.0, 62.0], "tiled": [1.0, 3.9]})
    assert "grew 62.0x (n^2 grew 64x" in ok and "3.9x, less than n" in ok and "off the measured" not in ok
    off = tour.memory_growth(sizes, {"naive": [1.0, 62.0], "tiled": [1.0, 3.9]},
                             {"naive": [1.0, 62.0], "tiled": [1.0, 4.6]})
    assert "the model's tiled peak is +18% off the measured one: it over-estimates" in off
    bad = tour.memory_growth(sizes, {"naive": [1.0, 20.0], "tiled": [1.0, 12.0]},
                             {"naive": [1.0, 62.0], "tiled": [1.0, 4.0]})
    assert "does not show the n^2 / n split" in bad


def test_position_sentence_claims_a_decline_only_when_the_numbers_decline():
    falls = tour.position_sentence([[0, 6, "0.712", "0.079"], [5, 11, "0.666", "0.076"], [20, 26, "0.642", "0.067"]])
    assert "falling at every step: the link competes with more tokens" in falls
    flat = tour.position_sentence([[0, 6, "0.600", "0.079"], [20, 26, "0.650", "0.080"]])
    assert "does not weaken with distance" in flat and "competes" not in flat


def test_multihead_section_does_not_claim_specialisation_for_random_heads():
    report = Report(None, figures=False, console=plain_console())
    report.section("multihead", "multihead")
    tour.multihead(report, quick=True)
    text = " ".join(text_of(report).split())
    low, high = map(float, re.search(r"normalized entropy (\d\.\d+)-(\d\.\d+)", text).groups())
    table = [float(x) for x in re.findall(r"│\s+\d\s+│\s+(\d\.\d{3})\s+│", text_of(report))]
    assert len(table) == 4 and (low, high) == (min(table), max(table))
    assert "untrained" in text and "comes from training" in text


def _tables(report):
    return {title: (cols, rows) for kind, payload in report.sections[-1].blocks if kind == "table"
            for title, cols, rows in [payload]}


def test_failures_section_counts_sink_heads_by_type_and_names_heads_by_id():
    """The old section counted "sink" in r.flags, always 0 once sink became a head type, and named heads
    "layer 5 head 11"."""
    from attnlab import diagnostics

    report = Report(None, figures=False, console=plain_console())
    report.section("failures", "failures")
    tour.failures(report, quick=True)
    (cols, rows), = [t for title, t in _tables(report).items() if title.startswith("72 heads of MiniLM")]
    assert cols[:3] == ["flag or type", "heads", "which"]
    counts = {row[0]: int(row[1]) for row in rows}
    model = tour._MODEL_CACHE["minilm"]
    parts = model.attention_parts(tour.SENTENCE)
    tokens = list(parts.tokens)
    heads = diagnostics.head_table(parts.weights, sink_indices=(0, -1),
                                   delimiters=diagnostics.delimiter_positions(tokens), ids=tokens)   # as inspect
    sinks = [r for r in heads if r.type == "sink"]
    assert counts["sink"] == len(sinks) > 0
    assert counts["diffuse"] == sum("diffuse" in r.flags for r in heads)
    assert counts["over_concentrated"] == sum("over_concentrated" in r.flags for r in heads)
    which = dict((row[0], row[2]) for row in rows)["sink"]
    assert which.startswith(", ".join(f"L{r.layer}.H{r.head}" for r in sinks[:3]))
    text = text_of(report)
    position, = [t for title, t in _tables(report).items() if title.startswith('weight from "it"')]
    assert re.fullmatch(r"L\d\.H\d+", position[0][2])
    assert not re.search(r"layer \d+ head \d+", text)


def test_failure_table_lists_at_most_a_few_ids():
    from attnlab.diagnostics import HeadStats

    rows = [HeadStats(1, h, 0.9, 5.0, 0.2, 0.1, 2.0, 0.1, 0.1, 0.1, ("diffuse",)) for h in range(9)]
    diffuse, concentrated, sink = tour.failure_table(rows, shown=4)
    assert diffuse[:3] == ["diffuse", 9, "L1.H0, L1.H1, L1.H2, L1.H3, ... (5 more)"]
    assert concentrated[1:3] == sink[1:3] == [0, "-"]

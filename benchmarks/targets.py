"""The project's own speed and memory targets for the attention kernel (issue 3), judged from one benchmark run.

A target is a ratio of two timings, or a peak, with a limit (value <= limit). The table's rows are taken minutes
apart and this shared machine's speed drifts by 5-10% over minutes, so ``paired`` measures each ratio's two calls
again with their runs interleaved (``attnlab.measure.time_calls``); ``targets`` judges on that where there is one
(marked * in ``format_targets``) and shows the table's ratio beside it. The hot decode step is judged on the table
only: interleaving other contexts would push its keys out of the caches it is meant to find them in.
"""

from __future__ import annotations

from attnlab import bench
from attnlab.measure import evict_caches, time_calls

# (target, its two calls): the target is the ratio of their median times
PAIRS = (
    ("dense_4096_tiled_over_torch", [("dense", 4096, "tiled"), ("dense", 4096, "torch")]),
    ("causal_4096_tiled_over_torch", [("causal", 4096, "tiled"), ("causal", 4096, "torch")]),
    ("causal_4096_over_dense_4096_tiled", [("causal", 4096, "tiled"), ("dense", 4096, "tiled")]),
    ("window_32768_over_16384_tiled", [("window", 32768, "tiled"), ("window", 16384, "tiled")]),
)

LIMITS = {
    "dense_4096_tiled_over_torch": 0.8,
    "causal_4096_tiled_over_torch": 0.8,
    "causal_4096_over_dense_4096_tiled": 0.6,
    "window_32768_over_16384_tiled": 2.2,
    "window_32768_over_dense_32768_tiled": 1 / 15,
    "peak_MiB_dense_32768_tiled": 64,
    "decode_worst_2n_over_n_tiled": 2.3,
    "decode_cold_worst_2n_over_n_tiled": 2.3,
}


def paired(settings: bench.Settings, torch=None) -> dict:
    """{target: ratio} for the targets whose two calls the run's cases and sizes include, each pair's runs
    interleaved; and the worst n -> 2n growth of the cold decode step, all its contexts interleaved (not of the
    hot one: see the module's docstring)."""
    values = {}
    for name, calls in PAIRS:
        if all(case in settings.cases and n in settings.sizes and impl in settings.impls for case, n, impl in calls):
            fns = [bench.call(*c, settings, torch).fn for c in calls]
            if None not in fns:
                a, b = time_calls(*fns, repeat=settings.repeat, settle=settings.settle)
                values[name] = a.median_s / b.median_s
    contexts = [n for n in settings.contexts if 2 * n in settings.contexts]
    if "decode_cold" in settings.cases and "tiled" in settings.impls and contexts:
        ns = sorted(set(contexts) | {2 * n for n in contexts})
        times = time_calls(*(bench.call("decode_cold", n, "tiled", settings, torch).fn for n in ns),
                           repeat=bench.DECODE_REPEAT, before=evict_caches, settle=settings.settle)
        median = dict(zip(ns, (t.median_s for t in times)))
        values["decode_cold_worst_2n_over_n_tiled"] = max(median[2 * n] / median[n] for n in contexts)
    return values


def targets(results, pairs=None) -> dict:
    """{target: {value, table, paired, limit, met}} from a run's ``results`` (None where the run did not measure
    what a target needs): ``value`` from the interleaved re-measurement ``pairs`` where there is one, else from
    the table; ``table`` from the table's rows."""
    t = {(r.case, r.n, r.impl): r for r in results if r.median_s is not None}

    def time_of(case, n, impl):
        return t[(case, n, impl)].median_s if (case, n, impl) in t else None

    def ratio(a, b):
        return None if a is None or b is None else a / b

    def worst_growth(case):
        contexts = sorted(n for (c, n, impl) in t if c == case and impl == "tiled")
        growth = [time_of(case, 2 * n, "tiled") / time_of(case, n, "tiled") for n in contexts if 2 * n in contexts]
        return max(growth) if growth else None

    peak = t.get(("dense", 32768, "tiled"))
    table = {
        "dense_4096_tiled_over_torch": ratio(time_of("dense", 4096, "tiled"), time_of("dense", 4096, "torch")),
        "causal_4096_tiled_over_torch": ratio(time_of("causal", 4096, "tiled"), time_of("causal", 4096, "torch")),
        "causal_4096_over_dense_4096_tiled": ratio(time_of("causal", 4096, "tiled"), time_of("dense", 4096, "tiled")),
        "window_32768_over_16384_tiled": ratio(time_of("window", 32768, "tiled"), time_of("window", 16384, "tiled")),
        "window_32768_over_dense_32768_tiled": ratio(time_of("window", 32768, "tiled"),
                                                     time_of("dense", 32768, "tiled")),
        "peak_MiB_dense_32768_tiled": None if peak is None else peak.peak_bytes / 2**20,
        "decode_worst_2n_over_n_tiled": worst_growth("decode"),
        "decode_cold_worst_2n_over_n_tiled": worst_growth("decode_cold"),
    }
    pairs = pairs or {}
    report = {}
    for name, limit in LIMITS.items():
        value = pairs.get(name, table[name])
        report[name] = {"value": value, "table": table[name], "paired": name in pairs, "limit": limit,
                        "met": None if value is None else value <= limit}
    return report


def format_targets(checks) -> str:
    lines = ["targets (value <= limit; value from interleaved runs where marked *, the table's ratio beside it):"]
    for name, c in checks.items():
        verdict = "not measured" if c["value"] is None else ("met" if c["met"] else "NOT met")
        value = "-" if c["value"] is None else f"{c['value']:.3f}" + ("*" if c["paired"] else " ")
        table = "" if not c["paired"] or c["table"] is None else f"  (table {c['table']:.3f})"
        lines.append(f"  {name:38s} {value:>9s}  <= {c['limit']:.3f}  {verdict}{table}")
    return "\n".join(lines)

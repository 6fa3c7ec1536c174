"""The junk sweep over the experiments' ``run`` functions (issue 14): every parameter of each run is given the
sweep's junk (plus a size that fits in an int but not in memory) and must be refused before the experiment's work
starts, with a TypeError/ValueError (MemoryBudgetError included) naming the parameter; only the junk values that are
real settings (seed 0, quick True, a folder name, ...) may get through. The experiments' work is replaced by a
sentinel, so nothing trains or measures: the sweep checks the gate, in well under a second per experiment."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest

import attnlab
from attnlab.learn.experiments import bottleneck, cost_doubling, scaling, scorers, train
from test_junk_sweep import JUNK

SRC = str(Path(attnlab.__file__).resolve().parent)
SWEEP_JUNK = {**JUNK, "2**40": 2**40}


class Reached(Exception):
    """The run got past its checks to the work itself."""


def _reached(*args, **kwargs):
    raise Reached


# experiment -> (module, the function its work starts with, baseline keyword arguments,
#                {parameter: junk labels that are real settings})
RUNS = {
    "bottleneck": (bottleneck, "_run", {"out": None, "seed": 0, "quick": True, "config": None, "progress": False},
                   {"out": {"None", "str"}, "seed": {"0", "2**40"}, "quick": {"True"}, "config": {"None"},
                    "progress": {"True"}}),
    "cost": (cost_doubling, "measure", {"n": 8, "out": "out", "seed": 0, "quick": False, "heads": 1, "head_dim": 4,
                                        "window": 4, "block": 4, "repeat": 1, "echo": print},
             {"out": {"str"}, "seed": {"0", "2**40"}, "quick": {"True"}, "window": {"2**40"}, "block": {"2**40"}}),
    "scaling": (scaling, "measure", {"out": None, "seed": 0, "quick": True, "d_ks": (4, 8), "n_keys": 8},
                {"out": {"None", "str"}, "seed": {"0", "2**40"}, "quick": {"True"}}),
    "scorers": (scorers, "measure", {"out": None, "seed": 0, "quick": True, "bottleneck": None, "ns": (8,),
                                     "ds": (4,)},
                {"out": {"None", "str"}, "seed": {"0", "2**40"}, "quick": {"True"}, "bottleneck": {"None"},
                 "ns": {"None", "empty list"}, "ds": {"None", "empty list"}}),
    "train": (train, "train", {"out": None, "seed": 0, "quick": True, "config": None},
              {"out": {"None", "str"}, "seed": {"0", "2**40"}, "quick": {"True"}, "config": {"None"}}),
}


def _cases():
    for name, (_, _, kwargs, _) in RUNS.items():
        for param in kwargs:
            yield pytest.param(name, param, id=f"{name}-{param}")


@pytest.mark.parametrize("name, param", list(_cases()))
def test_junk_is_refused_before_the_experiment_runs(name, param, monkeypatch, tmp_path):
    module, work, kwargs, settings = RUNS[name]
    monkeypatch.setattr(module, work, _reached)
    monkeypatch.chdir(tmp_path)                            # a folder name given as junk is made here, if anywhere
    problems = []
    for label, junk in SWEEP_JUNK.items():
        try:
            module.run(**{**kwargs, param: junk})
        except Reached:
            if label not in settings.get(param, set()):
                problems.append(f"{param}={label}: accepted, the experiment started")
        except (TypeError, ValueError, FileNotFoundError) as err:
            frame = traceback.extract_tb(err.__traceback__)[-1]
            if not frame.filename.startswith(SRC):
                problems.append(f"{param}={label}: {type(err).__name__} raised inside {Path(frame.filename).name}: "
                                f"{err}")
            elif not re.search(rf"\b{re.escape(param)}\b", str(err)) and \
                    not (label == "2**40" and isinstance(err, attnlab.budget.MemoryBudgetError)):
                problems.append(f"{param}={label}: the message does not name {param}: {err}")
        except Exception as err:                           # noqa: BLE001  (anything else is the defect looked for)
            problems.append(f"{param}={label}: {type(err).__name__}: {err}")
        else:
            problems.append(f"{param}={label}: returned without reaching the experiment's work")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_the_baselines_reach_the_work(monkeypatch, tmp_path):
    """The sweep's baselines are valid: each run gets past its checks (so a refusal above is caused by the junk)."""
    monkeypatch.chdir(tmp_path)
    for name, (module, work, kwargs, _) in RUNS.items():
        monkeypatch.setattr(module, work, _reached)
        with pytest.raises(Reached):
            module.run(**kwargs)


def test_sizes_beyond_memory_are_refused_by_the_budget(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for module, work, kwargs in ((cost_doubling, "measure", {"n": 2**30, "heads": 1, "head_dim": 4}),
                                 (scaling, "measure", {"n_keys": 2**14}),
                                 (scaling, "measure", {"d_ks": [2**36]}),
                                 (scorers, "measure", {"ns": [2**36], "ds": [4]})):
        monkeypatch.setattr(module, work, _reached)
        with pytest.raises(attnlab.budget.MemoryBudgetError, match="over the memory budget"):
            module.run(**kwargs)

"""The one mask-spec grammar (attnlab.masks.parse) against masks written as loops from their definitions."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from attnlab import masks


def loop_mask(kind, args, Lq, Lk):
    """Each kind's definition as a double loop; query i sits at position i + Lk - Lq (bottom-right)."""
    out = np.zeros((Lq, Lk), bool)
    for i in range(Lq):
        p = i + Lk - Lq
        for j in range(Lk):
            if kind == "full":
                ok = True
            elif kind == "causal":
                ok = j <= p
            elif kind == "window":
                left, right = args[0], (args[1] if len(args) > 1 else 0)
                ok = p - left <= j <= p + right
            elif kind == "prefix":
                ok = j < args[0] or j <= p
            elif kind == "dilated":
                ok = (p - j) % args[0] == 0
            elif kind == "global":
                ok = p in args or j in args
            elif kind == "document":
                ids = [d for d, n in enumerate(args) for _ in range(n)]
                ok = ids[j] == ids[p]
            out[i, j] = ok
    return out


@pytest.mark.parametrize("spec, kind, args", [
    ("full", "full", []), ("causal", "causal", []), ("window:2", "window", [2]), ("window:1,2", "window", [1, 2]),
    ("prefix:3", "prefix", [3]), ("dilated:2", "dilated", [2]), ("global:0,4", "global", [0, 4]),
    ("document:3,4", "document", [3, 4]),
])
@pytest.mark.parametrize("Lq, Lk", [(7, 7), (3, 7)])
def test_each_kind_matches_its_definition(spec, kind, args, Lq, Lk):
    if kind == "document" and Lq != Lk:
        Lq = Lk
    np.testing.assert_array_equal(masks.parse(spec).to_array(Lq, Lk), loop_mask(kind, args, Lq, Lk))


def test_window_has_one_meaning_the_function_arguments():
    # window:2 = masks.sliding_window(2): itself and 2 keys back, so rows see 1, 2, 3, 3 keys
    assert masks.parse("window:2").to_array(4, 4).sum(axis=1).tolist() == [1, 2, 3, 3]


def test_algebra_and_precedence():
    a, b, c = (masks.parse(s).to_array(6, 6) for s in ("causal", "window:1", "global:0"))
    np.testing.assert_array_equal(masks.parse("causal & window:1 | global:0").to_array(6, 6), (a & b) | c)
    np.testing.assert_array_equal(masks.parse("causal & (window:1 | global:0)").to_array(6, 6), a & (b | c))
    np.testing.assert_array_equal(masks.parse("~window:1 & causal").to_array(6, 6), ~b & a)


@given(st.sampled_from(["causal", "window:3", "prefix:2", "dilated:3", "global:1", "window:0,2"]),
       st.sampled_from(["&", "|"]), st.sampled_from(["causal", "window:1", "dilated:2", "~global:0"]))
def test_spec_round_trips(left, op, right):
    m = masks.parse(f"{left} {op} {right}")
    np.testing.assert_array_equal(masks.parse(m.spec).to_array(9, 9), m.to_array(9, 9))


@pytest.mark.parametrize("bad, words", [
    ("", "empty"), ("foo", "unknown mask 'foo'"), ("window", "window takes 1 to 2"), ("window:-1", "non-negative"),
    ("causal &", "ends too early"), ("(causal", "missing ')'"), ("causal:x", "causal's argument"),
    ("causal window:2", "unexpected 'window:2'"), ("document:0,3", "document lengths"),
])
def test_bad_specs_say_what_is_wrong(bad, words):
    with pytest.raises(masks.MaskSpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        masks.parse(bad)


def test_non_string_spec_is_a_type_error():
    with pytest.raises(TypeError, match="mask spec must be a string"):
        masks.parse(3)

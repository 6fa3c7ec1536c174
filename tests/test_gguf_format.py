"""attnlab's NumPy GGUF reader (attnlab.models.gguf_format) against llama.cpp's own reader, the ``gguf`` package.

The oracle shares no code with the reader: every metadata value, every tensor's shape and type, and every
dequantized tensor must be equal, on SmolLM2's file (Q4_1, Q8_0, F32) and on small files the ``gguf`` package writes
with every metadata value type and every tensor type attnlab reads (F32, F16, BF16, Q4_0, Q4_1, Q8_0).
"""

import struct

import numpy as np
import pytest

from attnlab.models import gguf_format
from attnlab.models.gguf_format import GGUFError, GGUFFile
from attnlab.models.smollm import smollm2_path

gguf = pytest.importorskip("gguf")            # installed in CI (test extra): never skips there

HEADER_FIELDS = {"GGUF.version": "version", "GGUF.tensor_count": None, "GGUF.kv_count": None}


def plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def assert_same_as_gguf(path):
    ours, theirs = GGUFFile(path), gguf.GGUFReader(str(path))
    keys = [k for k in theirs.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == keys                                    # every key, in file order
    for key in keys:
        expected = theirs.fields[key].contents()
        got = plain(ours.metadata[key])
        assert got == expected and type(got) is type(expected), key
    assert ours.version == theirs.fields["GGUF.version"].contents()
    assert ours.alignment == theirs.alignment and ours.data_offset == theirs.data_offset
    assert list(ours.tensors) == [t.name for t in theirs.tensors]
    for t in theirs.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(int(n) for n in reversed(t.shape.tolist())), t.name
        assert mine.ggml_type == int(t.tensor_type) and mine.nbytes == t.n_bytes, t.name
        assert mine.offset == t.data_offset, t.name
        expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(mine.shape)
        got = ours.dequantize(t.name)
        assert got.dtype == np.float32 and got.shape == mine.shape
        np.testing.assert_array_equal(got, expected, err_msg=t.name)
    return ours


def test_smollm2_file_equals_the_gguf_package():
    ours = assert_same_as_gguf(smollm2_path())
    kinds = {t.type_name for t in ours.tensors.values()}
    assert kinds == {"Q4_1", "Q8_0", "F32"}                               # every type of the file was compared
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 49152 and len(ours.metadata["tokenizer.ggml.merges"]) > 4e4


def write(path, tensors, metadata=(), alignment=None):
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.data_alignment = alignment
        w.add_uint32("general.alignment", alignment)
    for add, key, value in metadata:
        getattr(w, add)(key, value)
    for name, (values, qtype) in tensors.items():
        data = values if qtype in (gguf.GGMLQuantizationType.F32,) else gguf.quants.quantize(values, qtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


METADATA = [("add_uint8", "t.u8", 200), ("add_int8", "t.i8", -100), ("add_uint16", "t.u16", 60000),
            ("add_int16", "t.i16", -30000), ("add_uint32", "t.u32", 4_000_000_000), ("add_int32", "t.i32", -7),
            ("add_float32", "t.f32", 0.1), ("add_uint64", "t.u64", 2**63 + 5), ("add_int64", "t.i64", -(2**40)),
            ("add_float64", "t.f64", 1 / 3), ("add_bool", "t.yes", True), ("add_bool", "t.no", False),
            ("add_string", "t.str", "café ∑ 😀"), ("add_string", "t.empty", ""),
            ("add_array", "t.ints", [1, 2, 3]), ("add_array", "t.floats", [0.5, -1.25]),
            ("add_array", "t.strings", ["a", "", "é", "😀x", "Ġthe", "\u0120 in", "zz"]),
            ("add_array", "t.bools", [True, False, True])]


def test_every_value_and_tensor_type_equals_the_gguf_package(tmp_path):
    rng = np.random.default_rng(0)
    Q = gguf.GGMLQuantizationType
    tensors = {f"w.{q.name}": (rng.standard_normal((3, 64)).astype(np.float32), q)
               for q in (Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q8_0)}
    tensors["bias"] = (rng.standard_normal(64).astype(np.float32), Q.F32)                     # 1-D
    tensors["cube"] = (rng.standard_normal((2, 3, 32)).astype(np.float32), Q.Q8_0)           # 3-D
    ours = assert_same_as_gguf(write(tmp_path / "all.gguf", tensors, METADATA))
    assert ours.tensors["cube"].shape == (2, 3, 32) and ours.tensors["bias"].shape == (64,)
    assert ours.metadata["t.ints"].dtype == np.int32 and ours.metadata["t.bools"].dtype == bool
    again = assert_same_as_gguf(write(tmp_path / "aligned.gguf", tensors, METADATA[:3], alignment=64))
    assert again.alignment == 64 and all(t.offset % 64 == 0 for t in again.tensors.values())


def test_quantized_blocks_decode_by_the_formula():
    """One block of each type written by hand from the block layouts (float64 arithmetic as the oracle)."""
    d, m = np.float16(0.375), np.float16(-1.5)
    q = np.arange(32) % 16                                                    # nibbles
    packed = (q[:16] | (q[16:] << 4)).astype(np.uint8)                        # low nibbles: weights 0..15
    q41 = np.concatenate([np.frombuffer(d.tobytes() + m.tobytes(), np.uint8), packed])
    np.testing.assert_array_equal(gguf_format.dequantize(q41, gguf_format.Q4_1, (32,)),
                                  (float(d) * q + float(m)).astype(np.float32))
    q40 = np.concatenate([np.frombuffer(d.tobytes(), np.uint8), packed])
    np.testing.assert_array_equal(gguf_format.dequantize(q40, gguf_format.Q4_0, (32,)),
                                  (float(d) * (q - 8)).astype(np.float32))
    q8 = np.arange(-16, 16, dtype=np.int8)
    block = np.concatenate([np.frombuffer(d.tobytes(), np.uint8), q8.view(np.uint8)])
    np.testing.assert_array_equal(gguf_format.dequantize(block, gguf_format.Q8_0, (1, 32)),
                                  (float(d) * q8.astype(np.float64)).astype(np.float32)[None])


def _gguf_bytes(kv: bytes, n_kv: int, version=3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, 0, n_kv) + kv


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def test_nested_arrays_as_the_spec_allows(tmp_path):
    inner = [struct.pack("<IQ", gguf_format.INT32, 2) + struct.pack("<ii", 1, -2),
             struct.pack("<IQ", gguf_format.STRING, 1) + _s("x")]
    kv = _s("t.nested") + struct.pack("<IIQ", gguf_format.ARRAY, gguf_format.ARRAY, 2) + b"".join(inner)
    (tmp_path / "n.gguf").write_bytes(_gguf_bytes(kv, 1))
    nested = GGUFFile(tmp_path / "n.gguf").metadata["t.nested"]
    assert nested[0].tolist() == [1, -2] and nested[1] == ["x"]


def test_bad_files_are_clear_errors(tmp_path):
    good = write(tmp_path / "good.gguf", {"w": (np.ones((2, 32), np.float32), gguf.GGMLQuantizationType.Q8_0)},
                 METADATA)
    data = good.read_bytes()
    for cut in (3, 10, 30, 200, len(data) - 40):                  # header, counts, metadata, tensor info, data
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(GGUFError, match=rf"{bad} is not a readable GGUF file: (truncated|it starts|tensor 'w')"):
            GGUFFile(bad)
    (tmp_path / "magic.gguf").write_bytes(b"GGML" + data[4:])
    with pytest.raises(GGUFError, match=r"starts with b'GGML', not b'GGUF'"):
        GGUFFile(tmp_path / "magic.gguf")
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + struct.pack("<I", 1) + data[8:])
    with pytest.raises(GGUFError, match="format version 1; this reader reads versions 2 and 3"):
        GGUFFile(tmp_path / "v1.gguf")
    (tmp_path / "type.gguf").write_bytes(_gguf_bytes(_s("t.x") + struct.pack("<I", 99), 1))
    with pytest.raises(GGUFError, match="unknown metadata value type 99"):
        GGUFFile(tmp_path / "type.gguf")
    (tmp_path / "utf8.gguf").write_bytes(_gguf_bytes(_s("t.x") + struct.pack("<IQ", gguf_format.STRING, 2) + b"\xff\xfe",
                                                     1))
    with pytest.raises(GGUFError, match="is not UTF-8"):
        GGUFFile(tmp_path / "utf8.gguf")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(KeyError, match="has no tensor 'nope'"):
        GGUFFile(good).dequantize("nope")


def test_an_unread_tensor_type_is_named_when_asked_for(tmp_path):
    Q = gguf.GGMLQuantizationType
    path = write(tmp_path / "q5.gguf", {"w": (np.ones((1, 32), np.float32), Q.Q5_0),
                                        "ok": (np.full((1, 32), 127.0, np.float32), Q.Q8_0)})  # d = 1 exactly
    f = GGUFFile(path)                                             # opening works: the other tensors stay readable
    np.testing.assert_array_equal(f.dequantize("ok"), np.full((1, 32), 127.0, np.float32))
    with pytest.raises(GGUFError, match="tensor 'w' is of ggml type 6, which attnlab does not read"):
        f.dequantize("w")

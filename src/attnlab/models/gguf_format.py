"""The GGUF file format read with NumPy: header, metadata key/values, tensor infos, dequantized tensors.

Written from the format's specification (ggml's docs/gguf.md, "GGUF v3"; https://github.com/ggml-org/ggml/blob/
master/docs/gguf.md) and ggml's block layouts; no reader code is taken from llama.cpp's ``gguf`` package, which the
tests use as the independent oracle (every metadata value and every dequantized tensor equal).

Layout (little-endian; versions 2 and 3, whose lengths and counts are 64-bit):

    magic "GGUF" | u32 version | u64 tensor_count | u64 metadata_kv_count
    metadata_kv_count x (string key, u32 value_type, value)
    tensor_count x (string name, u32 n_dims, n_dims x u64 dims (innermost first), u32 ggml_type, u64 offset)
    zero padding to ``general.alignment`` (default 32), then the tensor data; each offset is relative to it.

A string is a u64 byte length then UTF-8 bytes (no NUL); an array is a u32 element type, a u64 count, the elements.

The file is memory-mapped, so opening it reads only the header, the metadata and the tensor infos; a tensor's bytes
are touched when it is dequantized. Long string arrays (a 49,152-token vocabulary, 48,900 merges) are read as one
walk over the length prefixes and one decode of the whole region instead of an object per element, which is where
the ``gguf`` package spends seconds.

Dequantization (ggml's blocks of 32 weights; ``d`` and ``m`` are float16):

    Q8_0: d, 32 x int8 q               w = d * q
    Q4_0: d, 16 bytes of nibbles       w = d * (q - 8)
    Q4_1: d, m, 16 bytes of nibbles    w = d * q + m
    the low nibbles of the 16 bytes are weights 0..15 of the block, the high nibbles weights 16..31.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# metadata value types (gguf_metadata_value_type)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALARS = {UINT8: np.dtype("<u1"), INT8: np.dtype("<i1"), UINT16: np.dtype("<u2"), INT16: np.dtype("<i2"),
           UINT32: np.dtype("<u4"), INT32: np.dtype("<i4"), FLOAT32: np.dtype("<f4"), BOOL: np.dtype("<u1"),
           UINT64: np.dtype("<u8"), INT64: np.dtype("<i8"), FLOAT64: np.dtype("<f8")}

# tensor types (ggml_type) this reader dequantizes: name, weights per block, bytes per block
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30
TYPES = {F32: ("F32", 1, 4), F16: ("F16", 1, 2), Q4_0: ("Q4_0", 32, 18), Q4_1: ("Q4_1", 32, 20),
         Q8_0: ("Q8_0", 32, 34), BF16: ("BF16", 1, 2)}


class GGUFError(ValueError):
    """The file is not a GGUF file this reader can read (bad magic, version, truncated, unknown type)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry: ``shape`` in NumPy order (outermost first: (rows, cols) = GGUF's dims reversed),
    ``ggml_type`` (see TYPES), ``offset`` in bytes from the start of the file, ``nbytes`` of its data."""
    name: str
    shape: tuple
    ggml_type: int
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return TYPES[self.ggml_type][0] if self.ggml_type in TYPES else f"type {self.ggml_type}"

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _Cursor:
    """Sequential little-endian reads from a bytes-like buffer; running past the end is a GGUFError."""

    def __init__(self, buf, pos: int = 0):
        self.buf, self.pos, self.end = buf, pos, len(buf)

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.end:
            raise GGUFError(f"truncated: needs {n} bytes at offset {start}, the file has {self.end}")
        self.pos = start + n
        return start

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack_from("<Q", self.buf, self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        start = self.take(n)
        return _utf8(self.buf[start: start + n], start)

    def scalar(self, kind: int):
        dtype = SCALARS[kind]
        value = np.frombuffer(self.buf, dtype, 1, self.take(dtype.itemsize))[0]
        return bool(value) if kind == BOOL else value.item()

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind in SCALARS:
            return self.scalar(kind)
        if kind == ARRAY:
            return self.array()
        raise GGUFError(f"unknown metadata value type {kind} at offset {self.pos - 4}")

    def array(self):
        """A numeric array as a NumPy array (BOOL as bool), a string array as a list of str, nested arrays as
        lists."""
        kind, count = self.u32(), self.u64()
        if kind in SCALARS:
            dtype = SCALARS[kind]
            a = np.frombuffer(self.buf, dtype, count, self.take(count * dtype.itemsize)).copy()
            return a.astype(bool) if kind == BOOL else a
        if kind == STRING:
            return self.strings(count)
        if kind == ARRAY:
            if count > self.end - self.pos:             # each element needs at least 12 bytes: a bound, not a guess
                raise GGUFError(f"truncated: an array of {count} arrays at offset {self.pos}")
            return [self.array() for _ in range(count)]
        raise GGUFError(f"unknown array element type {kind} at offset {self.pos - 12}")

    def strings(self, count: int) -> list[str]:
        """``count`` strings in a row: walk the u64 length prefixes, then decode the whole region once and cut it
        at the character offsets (one str per string, no per-element byte copies)."""
        if count * 8 > self.end - self.pos:
            raise GGUFError(f"truncated: an array of {count} strings at offset {self.pos} runs past the end")
        buf, pos, end = self.buf, self.pos, self.end
        unpack = struct.Struct("<Q").unpack_from
        starts = [0] * count
        stops = [0] * count
        for i in range(count):
            n = unpack(buf, pos)[0]
            pos += 8
            starts[i] = pos
            pos += n
            stops[i] = pos
            if pos > end:
                raise GGUFError(f"truncated: string {i} of an array at offset {self.pos} runs past the end")
        region_start = self.pos
        self.pos = pos
        region = bytes(buf[region_start:pos])
        # the prefixes are 8 raw bytes that need not be valid UTF-8: blank them, decode once, then slice; byte
        # offsets become character offsets through the count of UTF-8 continuation bytes before each offset
        raw = np.frombuffer(region, np.uint8).copy()
        lo = np.asarray(starts, np.int64) - region_start                         # (count,) byte offsets
        hi = np.asarray(stops, np.int64) - region_start
        prefix = (lo[:, None] - 8 + np.arange(8)).ravel()
        raw[prefix] = 0x20
        text = _utf8(raw.tobytes(), region_start)
        if len(text) == len(raw):                                                # pure ASCII: bytes = chars
            return [text[a:b] for a, b in zip(lo.tolist(), hi.tolist())]
        continuation = np.concatenate([[0], np.cumsum((raw & 0xC0) == 0x80)])   # (bytes + 1,)
        ca, cb = lo - continuation[lo], hi - continuation[hi]
        return [text[a:b] for a, b in zip(ca.tolist(), cb.tolist())]


def _utf8(b, offset: int) -> str:
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError as err:
        raise GGUFError(f"a string at offset {offset} is not UTF-8 ({err.reason})") from None


class GGUFFile:
    """A GGUF file, memory-mapped: ``version``, ``metadata`` (key -> int | float | bool | str | NumPy array |
    list of str), ``tensors`` (name -> TensorInfo, in file order), ``alignment``; ``raw(name)`` is a tensor's bytes
    and ``dequantize(name)`` its float32 array of ``TensorInfo.shape``.

    Anything that is not a readable version 2/3 file is a ``GGUFError`` (a ValueError) naming the path.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self.path.stat().st_size else b""
            self._parse(_Cursor(memoryview(self._map)))
        except GGUFError as err:
            raise GGUFError(f"{self.path} is not a readable GGUF file: {err}") from None

    def _parse(self, cur: _Cursor) -> None:
        magic = bytes(cur.buf[cur.take(4): 4]) if cur.end >= 4 else b""
        if magic != MAGIC:
            raise GGUFError(f"it starts with {magic!r}, not {MAGIC!r}")
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise GGUFError(f"format version {self.version}; this reader reads versions 2 and 3")
        n_tensors, n_kv = cur.u64(), cur.u64()
        if n_kv > cur.end or n_tensors > cur.end:
            raise GGUFError(f"it declares {n_kv} metadata entries and {n_tensors} tensors in {cur.end} bytes")
        self.metadata = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.u32())
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.u32()
            if n_dims > 8:
                raise GGUFError(f"tensor {name!r} has {n_dims} dimensions")
            dims = [cur.u64() for _ in range(n_dims)]
            infos.append((name, tuple(reversed(dims)), cur.u32(), cur.u64()))
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 or alignment % 8:
            raise GGUFError(f"general.alignment must be a positive multiple of 8, got {alignment!r}")
        self.alignment = alignment
        self.data_offset = -(-cur.pos // alignment) * alignment
        self.tensors = {}
        for name, shape, kind, offset in infos:
            size = 1
            for s in shape:
                size *= s
            nbytes = self._nbytes(name, kind, shape, size)
            start = self.data_offset + offset
            if start + nbytes > cur.end:
                raise GGUFError(f"tensor {name!r} ({nbytes} bytes at {start}) runs past the end ({cur.end} bytes)")
            self.tensors[name] = TensorInfo(name, shape, kind, start, nbytes)

    @staticmethod
    def _nbytes(name, kind, shape, size) -> int:
        if kind not in TYPES:
            return 0 if size == 0 else -1                  # unknown type: readable as metadata, not dequantizable
        _, per_block, block_bytes = TYPES[kind]
        if shape and shape[-1] % per_block:
            raise GGUFError(f"tensor {name!r} has rows of {shape[-1]} weights, not a multiple of the "
                            f"{TYPES[kind][0]} block of {per_block}")
        return size // per_block * block_bytes

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored (uint8, a view of the mapped file)."""
        t = self._info(name)
        if t.nbytes < 0:
            raise GGUFError(f"{self.path}: tensor {name!r} is of ggml type {t.ggml_type}, which attnlab does not "
                            f"read (it reads {', '.join(v[0] for v in TYPES.values())})")
        return np.asarray(self._map[t.offset: t.offset + t.nbytes])

    def _info(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise KeyError(f"{self.path} has no tensor {name!r}")
        return self.tensors[name]

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32, shape ``TensorInfo.shape`` (rows, cols)."""
        t = self._info(name)
        return dequantize(self.raw(name), t.ggml_type, t.shape)


def dequantize(raw: np.ndarray, ggml_type: int, shape: tuple) -> np.ndarray:
    """float32 weights of ``shape`` from their stored bytes ``raw`` (uint8) of ``ggml_type`` (F32, F16, BF16,
    Q4_0, Q4_1, Q8_0), vectorised over blocks.

    >>> block = np.array([0, 60, 0, 0] + [0x21] * 16, np.uint8)           # Q4_1: d = 1.0, m = 0.0
    >>> dequantize(block, Q4_1, (32,))[[0, 15, 16, 31]]
    array([1., 1., 2., 2.], dtype=float32)
    """
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if ggml_type == F32:
        return raw.view("<f4").reshape(shape).astype(np.float32)
    if ggml_type == F16:
        return raw.view("<f2").astype(np.float32).reshape(shape)
    if ggml_type == BF16:
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if ggml_type not in TYPES:
        raise GGUFError(f"ggml type {ggml_type} is not one attnlab dequantizes "
                        f"({', '.join(v[0] for v in TYPES.values())})")
    _, per_block, block_bytes = TYPES[ggml_type]
    blocks = raw.reshape(-1, block_bytes)                                       # (n, bytes per block)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)                    # (n, 1)
    out = np.empty((blocks.shape[0], per_block), np.float32)                    # (n, 32)
    if ggml_type == Q8_0:
        np.multiply(blocks[:, 2:].view(np.int8), d, out=out)
        return out.reshape(shape)
    qs = blocks[:, block_bytes - 16:]                                           # (n, 16) nibble pairs
    np.bitwise_and(qs, 0x0F, out=out[:, :16], casting="unsafe")
    np.right_shift(qs, 4, out=out[:, 16:], casting="unsafe")
    if ggml_type == Q4_0:
        out -= 8
        out *= d
    else:                                                                       # Q4_1
        out *= d
        out += blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    return out.reshape(shape)

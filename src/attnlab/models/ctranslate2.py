"""A reader for CTranslate2's ``model.bin``: every variable as a NumPy array, float16/bfloat16 widened to float32.

The layout (little-endian; CTranslate2's ``ModelSpec`` serialisation, format version 6 as shipped here):

    u32 version | str spec name | u32 spec revision | u32 n variables
    n x (str name | u8 rank | rank x u32 dims | u8 dtype | u32 byte count | raw bytes)
    u32 n aliases | n x (str alias | str target)

where ``str`` is a u16 byte count (counting a trailing NUL) followed by the bytes. Scalars (``encoder/num_heads``)
are stored as rank-0 variables. Nothing is executed and nothing but NumPy is needed.

>>> import io, struct
>>> def s(t): b = t.encode() + b"\\0"; return struct.pack("<H", len(b)) + b
>>> blob = (struct.pack("<I", 6) + s("ToySpec") + struct.pack("<II", 1, 1) + s("w") + struct.pack("<B", 1)
...         + struct.pack("<I", 2) + struct.pack("<BI", 4, 4) + np.array([1.5, -2], "<f2").tobytes()
...         + struct.pack("<I", 1) + s("alias") + s("w"))
>>> m = read_model_bin(io.BytesIO(blob))
>>> m.spec, m.variables["w"].tolist(), m.variables["alias"].dtype
('ToySpec', [1.5, -2.0], dtype('float32'))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# CTranslate2's DataType enum, by the code stored in the file
DTYPES = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2", 5: "bfloat16", 6: "<f2"}
WIDEN = {np.dtype("<f2"), np.dtype("<f4")}


@dataclass
class CT2Model:
    """The variables of one ``model.bin`` (name -> array; aliases resolved to the same array) and its header."""
    spec: str
    version: int
    revision: int
    variables: dict[str, np.ndarray] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def __call__(self, name: str) -> np.ndarray:
        """Variable ``name``; a missing one is a ValueError naming the file's spec."""
        if name not in self.variables:
            raise ValueError(f"the {self.spec} model.bin has no variable {name!r}")
        return self.variables[name]

    def scalar(self, name: str) -> int:
        return int(np.asarray(self(name)).reshape(()))


class _Reader:
    def __init__(self, stream):
        self.stream = stream

    def take(self, n: int) -> bytes:
        b = self.stream.read(n)
        if len(b) != n:
            raise ValueError(f"model.bin ends early: wanted {n} more bytes, got {len(b)} (truncated or not a "
                             f"CTranslate2 model)")
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        return self.take(self.u16()).rstrip(b"\0").decode("utf-8")


def _array(raw: bytes, code: int, dims: tuple[int, ...], name: str) -> np.ndarray:
    if code not in DTYPES:
        raise ValueError(f"variable {name!r} has dtype code {code}; this reader knows {sorted(DTYPES)}")
    if DTYPES[code] == "bfloat16":           # the top half of a float32
        bits = np.frombuffer(raw, "<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(dims)
    a = np.frombuffer(raw, DTYPES[code])
    if a.size != int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"variable {name!r}: {len(raw)} bytes do not hold shape {dims} of {a.dtype}")
    a = a.reshape(dims)
    return a.astype(np.float32) if a.dtype in WIDEN else a.astype(a.dtype.newbyteorder("="))


def read_model_bin(source) -> CT2Model:
    """Read a model.bin from a path, a list of paths (parts to concatenate, in order) or a binary stream."""
    if isinstance(source, (list, tuple)):
        import io
        source = io.BytesIO(b"".join(Path(p).read_bytes() for p in source))
    if isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return read_model_bin(f)
    r = _Reader(source)
    version = r.u32()
    if not 1 <= version <= 6:
        raise ValueError(f"model.bin has format version {version}; expected 1..6 (a CTranslate2 model)")
    spec = r.string() if version >= 2 else ""
    revision = r.u32() if version >= 2 else 1
    model = CT2Model(spec, version, revision)
    for _ in range(r.u32()):
        name = r.string()
        dims = tuple(r.u32() for _ in range(r.u8()))
        code = r.u8() if version >= 4 else 0
        raw = r.take(r.u32() * (1 if version >= 4 else 4))
        model.variables[name] = _array(raw, code, dims, name)
    if version >= 3:
        for _ in range(r.u32()):
            alias, target = r.string(), r.string()
            model.variables[alias] = model.variables[target]
    return model

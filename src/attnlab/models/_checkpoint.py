"""Reading a Hugging Face-format model directory: config.json, safetensors weights, tokenizer.json.

Only safetensors files are read, never pickle (``pytorch_model.bin`` can run code when unpickled). Weights come
back as NumPy arrays via ``safetensors.numpy``; the tokenizer is the Rust ``tokenizers`` library reading
tokenizer.json, with its own truncation and padding switched off (attnlab pads with a mask and refuses or
truncates long texts explicitly).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from ..checks import is_int

# safetensors dtype -> bytes per element (the format's own list)
SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                        "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER = 100 * 2**20       # the safetensors library's own limit on a header


def read_json(path: Path, what: str):
    """A JSON file; any failure (unreadable, not UTF-8, malformed, nested absurdly deep) is one ValueError naming
    the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({what}): {err.msg} at line {err.lineno} column {err.colno}") \
            from None
    except (UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({what}): {type(err).__name__}") from None


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model directory")
    config = read_json(path, "a model config")
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, got a {type(config).__name__}")
    return config


def config_int(config: dict, key: str, source, default=None, *, minimum: int = 1) -> int:
    """``config[key]`` (or ``default`` when absent or null) as an int >= ``minimum``; anything else is a ValueError
    naming ``source`` (the config's file) and the key."""
    value = config.get(key)
    value = default if value is None else value
    if not is_int(value) or value < minimum:
        raise ValueError(f"{source}: {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_shapes(source, shape_of: Callable[[str], tuple | None], expected: dict) -> None:
    """Compare the tensors a model will read (name -> shape from its config) with the checkpoint's, before any
    layer is built: a missing tensor or a wrong shape is one ValueError naming ``source``, the tensor, the shape
    expected and the shape found (the first few problems, and how many there are)."""
    problems = []
    for name, want in expected.items():
        got = shape_of(name)
        if got is None:
            problems.append(f"tensor {name!r} is missing (expected shape {tuple(want)})")
        elif tuple(got) != tuple(want):
            problems.append(f"tensor {name!r} has shape {tuple(got)}, expected {tuple(want)}")
    if problems:
        more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ValueError(f"{source}: " + "; ".join(problems[:3]) + more +
                         " (the checkpoint does not match its config)")


def _inside(folder: Path, name: str, index: Path) -> Path:
    """A shard named by the index, refused unless it lies in the model folder (no absolute or ../ paths)."""
    path = (folder / name).resolve() if isinstance(name, str) and name else None
    if path is None or folder.resolve() not in path.parents:
        raise ValueError(f"{index} names the shard {name!r}, which is not a file inside {folder}; refused")
    return path


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        spec = read_json(index, "a safetensors shard index")
        weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} must hold an object with a non-empty \"weight_map\" of tensor -> shard file")
        shards = sorted({_inside(folder, s, index) for s in weight_map.values()})
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names the shard {missing[0].name}, which is not in {folder}")
        return shards
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ValueError(f"{folder} holds only PyTorch pickle weights (pytorch_model.bin); attnlab reads "
                         f"safetensors only. Convert once with transformers: "
                         f"AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    raise FileNotFoundError(f"{folder} has no model.safetensors (or model.safetensors.index.json)")


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """tensor name -> (dtype, shape) from a safetensors file's header, without reading the data; an empty,
    truncated or garbage file is a ValueError naming it (the format: u64 header length, JSON header, data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file: {size} bytes, shorter than its 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"{path} is not a safetensors file (or is truncated): its header claims {n} bytes, "
                             f"the file holds {size - 8} after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file: its header is not a JSON object")
    data = size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(info, dict) and info.get("dtype") in SAFETENSORS_ITEMSIZE and \
            isinstance(info.get("shape"), list) and all(is_int(d) and d >= 0 for d in info["shape"]) and \
            isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2 and \
            all(is_int(o) for o in info["data_offsets"])
        if not ok:
            raise ValueError(f"{path}: the header entry of tensor {name!r} is malformed: {str(info)[:120]}")
        start, stop = info["data_offsets"]
        nbytes = math.prod(info["shape"]) * SAFETENSORS_ITEMSIZE[info["dtype"]]
        if not 0 <= start <= stop <= data or stop - start != nbytes:
            raise ValueError(f"{path}: tensor {name!r} ({info['dtype']} {tuple(info['shape'])}, {nbytes} bytes) "
                             f"lies at bytes {start}..{stop} of {data}: the file is truncated or corrupt")
        out[name] = (info["dtype"], tuple(info["shape"]))
    return out


class Weights:
    """The tensors of a checkpoint by name, with a model-class prefix ("bert.", "transformer.", "model.")
    stripped so that BertModel and BertForMaskedLM checkpoints read the same.

    The headers are read (and checked) at construction; a tensor's data only when it is asked for, so a loader
    can compare every shape with its config (``shape``, ``check_shapes``) before it reads or builds anything."""

    def __init__(self, folder: Path, prefixes: tuple[str, ...], dtype):
        try:
            import safetensors  # noqa: F401
        except ImportError:
            raise ImportError("reading model weights needs safetensors: pip install 'attnlab[models]'") from None
        self.folder, self.dtype = folder, np.dtype(dtype)
        self.where: dict[str, tuple[Path, str, tuple]] = {}      # name -> (file, name in the file, shape)
        for path in _safetensors_files(folder):
            for stored, (_, shape) in safetensors_header(path).items():
                name = stored
                for prefix in prefixes:
                    if name.startswith(prefix):
                        name = name[len(prefix):]
                        break
                self.where[name] = (path, stored, shape)
        self._open: dict[Path, object] = {}

    @property
    def source(self) -> str:
        files = sorted({str(p) for p, _, _ in self.where.values()})
        return files[0] if len(files) == 1 else f"the checkpoint in {self.folder}"

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def shape(self, name: str) -> tuple | None:
        """The tensor's shape from the header (None when the checkpoint has no such tensor)."""
        return self.where[name][2] if name in self.where else None

    def check(self, expected: dict) -> None:
        """``check_shapes`` against this checkpoint."""
        check_shapes(self.source, self.shape, expected)

    def __call__(self, name: str, transpose: bool = False) -> np.ndarray:
        """The tensor ``name`` as a contiguous array of the model dtype (transposed for GPT-2's Conv1D)."""
        if name not in self.where:
            raise ValueError(f"checkpoint in {self.folder} has no tensor {name!r}; is it the model family "
                             f"its config.json says?")
        from safetensors import SafetensorError, safe_open

        path, stored, _ = self.where[name]
        try:
            if path not in self._open:
                self._open[path] = safe_open(str(path), framework="np")
            value = self._open[path].get_tensor(stored)
        except (SafetensorError, OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: cannot read tensor {stored!r}: {err}") from None
        value = value.T if transpose else value
        return np.ascontiguousarray(value, dtype=self.dtype)


class Tokenizer:
    """tokenizer.json through the ``tokenizers`` library; special tokens ([CLS]/[SEP]) added as the model
    family does."""

    def __init__(self, folder: Path):
        try:
            from tokenizers import Tokenizer as _Rust
        except ImportError:
            raise ImportError("tokenizing text needs tokenizers: pip install 'attnlab[models]'") from None
        path = folder / "tokenizer.json"
        try:
            self._tok = _Rust.from_file(str(path))
        except Exception as err:               # the Rust library raises a bare Exception on a malformed file
            raise ValueError(f"{path} is not a valid tokenizer.json: {' '.join(str(err).split())[:200]}") from None
        self._tok.no_truncation()
        self._tok.no_padding()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text).ids

    def tokens(self, ids) -> list[str]:
        return [self._tok.id_to_token(int(i)) or f"<{int(i)}>" for i in ids]

    def decode(self, ids) -> str:
        """The text of token ids as the tokenizer's decoder writes it (special tokens kept)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    @staticmethod
    def load(folder: Path) -> "Tokenizer | None":
        return Tokenizer(folder) if (folder / "tokenizer.json").is_file() else None

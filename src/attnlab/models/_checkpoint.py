"""Reading a Hugging Face-format model directory: config.json, safetensors weights, tokenizer.json.

Only safetensors files are read, never pickle (``pytorch_model.bin`` can run code when unpickled). Weights come
back as NumPy arrays via ``safetensors.numpy``; the tokenizer is the Rust ``tokenizers`` library reading
tokenizer.json, with its own truncation and padding switched off (attnlab pads with a mask and refuses or
truncates long texts explicitly).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face model directory")
    return json.loads(path.read_text(encoding="utf-8"))


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [folder / s for s in shards]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ValueError(f"{folder} holds only PyTorch pickle weights (pytorch_model.bin); attnlab reads "
                         f"safetensors only. Convert once with transformers: "
                         f"AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    raise FileNotFoundError(f"{folder} has no model.safetensors (or model.safetensors.index.json)")


class Weights:
    """The tensors of a checkpoint by name, with a model-class prefix ("bert.", "transformer.", "model.")
    stripped so that BertModel and BertForMaskedLM checkpoints read the same."""

    def __init__(self, folder: Path, prefixes: tuple[str, ...], dtype):
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError("reading model weights needs safetensors: pip install 'attnlab[models]'") from None
        self.folder, self.dtype = folder, np.dtype(dtype)
        self.tensors: dict[str, np.ndarray] = {}
        for path in _safetensors_files(folder):
            for name, value in load_file(str(path)).items():
                for prefix in prefixes:
                    if name.startswith(prefix):
                        name = name[len(prefix):]
                        break
                self.tensors[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __call__(self, name: str, transpose: bool = False) -> np.ndarray:
        """The tensor ``name`` as a contiguous array of the model dtype (transposed for GPT-2's Conv1D)."""
        if name not in self.tensors:
            raise ValueError(f"checkpoint in {self.folder} has no tensor {name!r}; is it the model family "
                             f"its config.json says?")
        value = self.tensors[name].T if transpose else self.tensors[name]
        return np.ascontiguousarray(value, dtype=self.dtype)


class Tokenizer:
    """tokenizer.json through the ``tokenizers`` library; special tokens ([CLS]/[SEP]) added as the model
    family does."""

    def __init__(self, folder: Path):
        try:
            from tokenizers import Tokenizer as _Rust
        except ImportError:
            raise ImportError("tokenizing text needs tokenizers: pip install 'attnlab[models]'") from None
        self._tok = _Rust.from_file(str(folder / "tokenizer.json"))
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

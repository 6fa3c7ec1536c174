"""Cross-attention over audio time: output tokens x encoder positions, the log-mel spectrogram beneath on the same
time axis, so a reader sees each word look at its stretch of sound (Whisper; ``attnlab.models.whisper``)."""

from __future__ import annotations

import numpy as np

from ._figure import WEIGHT_CMAP, as_matrix, new_figure


def cross_attention_figure(weights, tokens, mel, seconds: float, *, words=None, title=None):
    """weights (new tokens, positions) of cross-attention (20 ms per position), tokens their labels, mel (80,
    frames) the spectrogram (10 ms per frame), ``seconds`` of speech to show; ``words`` (attnlab.models.whisper.Word
    list) marks the alignment read off the attention. Returns the Figure."""
    w = as_matrix(weights, "weights")
    mel = as_matrix(mel, "mel")
    if len(tokens) != w.shape[0]:
        raise ValueError(f"tokens has {len(tokens)} labels for {w.shape[0]} rows of weights")
    if not (isinstance(seconds, (int, float)) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    positions = min(w.shape[1], int(np.ceil(seconds / 0.02)))
    frames = min(mel.shape[1], 2 * positions)
    fig = new_figure(max(6.0, min(14.0, 2.0 + 1.6 * seconds)), 1.6 + 0.22 * len(tokens) + 1.8)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[max(1.0, 0.22 * len(tokens)), 1.3])
    end = positions * 0.02
    top.imshow(w[:, :positions], aspect="auto", cmap=WEIGHT_CMAP, interpolation="nearest",
               extent=(0, end, len(tokens) - 0.5, -0.5))
    top.set_yticks(range(len(tokens)), [repr(t)[1:-1] for t in tokens], fontsize=8)
    top.set_ylabel("output token")
    top.set_title(title or "cross-attention: each output token's weights over the audio", loc="left", fontsize=10)
    bottom.imshow(mel[:, :frames], aspect="auto", origin="lower", cmap="magma", extent=(0, frames * 0.01, 0, 80))
    bottom.set_ylabel("mel bin")
    bottom.set_xlabel("time (s)")
    for word in words or ():
        bottom.axvline(word.start, color="white", lw=0.8, alpha=0.7)
        bottom.text(word.start, 82, word.text, fontsize=7, rotation=45, ha="left", va="bottom", clip_on=False)
    fig.attnlab_data = {"weights": w[:, :positions], "mel": mel[:, :frames]}
    return fig

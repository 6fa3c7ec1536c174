"""Audio in, Whisper's input out: a WAV file read with the standard library, resampled to 16 kHz, and the 80-bin
log-mel spectrogram Whisper was trained on (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
Supervision", section 2.2), in NumPy.

The features, as the paper and its released code define them: 16 kHz audio padded or cut to 30 s (480,000
samples); a short-time Fourier transform with a 25 ms periodic Hann window (400 samples), a 10 ms hop (160), frames
centred with reflect padding; the power spectrum on 80 mel filters (Slaney's mel scale and area normalisation,
0-8 kHz); log10 (floored at 1e-10), clipped to 8 below its maximum, then (x + 4) / 4. The last STFT frame is
dropped: 3,000 frames, which the encoder's stride-2 convolution turns into 1,500 positions (20 ms each).
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 80
CHUNK_SECONDS = 30
N_SAMPLES = SAMPLE_RATE * CHUNK_SECONDS          # 480,000
N_FRAMES = N_SAMPLES // HOP                      # 3,000
SECONDS_PER_FRAME = HOP / SAMPLE_RATE            # 0.01 s per spectrogram frame; encoder positions are 2 frames


def read_wav(path) -> np.ndarray:
    """A PCM WAV file (8/16/32-bit, any rate, mono or stereo) as float32 mono samples in [-1, 1] at 16 kHz."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            rate, channels, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as err:
        raise ValueError(f"{path} is not a PCM WAV file: {err}") from None
    kinds = {1: ("u1", 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2147483648.0)}
    if width not in kinds:
        raise ValueError(f"{path}: {8 * width}-bit samples are not supported (8, 16 or 32-bit PCM)")
    dtype, offset, full = kinds[width]
    x = (np.frombuffer(raw, dtype).astype(np.float32) - offset) / full
    x = x.reshape(-1, channels).mean(axis=1)                                 # (samples,) mono
    return resample(x, rate, SAMPLE_RATE)


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """x at ``rate`` Hz resampled to ``target`` Hz (polyphase filtering, scipy.signal.resample_poly)."""
    if rate == target:
        return np.asarray(x, np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, int(rate) // g).astype(np.float32)


def say(text: str, path=None) -> Path:
    """Speak ``text`` with Debian's espeak-ng into a WAV file (offline); returns its path."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text to speak must be a non-empty string")
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="attnlab-say-")) / "speech.wav"
    try:
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise ImportError("speaking text needs espeak-ng: apt-get install espeak-ng (make demo installs it)") from None
    except subprocess.CalledProcessError as err:
        raise ValueError(f"espeak-ng failed: {err.stderr.decode(errors='replace').strip()}") from None
    return Path(path)


def hertz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above (27 mels per factor 6.4)."""
    f = np.asarray(f, np.float64)
    return np.where(f < 1000.0, 3.0 * f / 200.0, 15.0 + 27.0 * np.log(np.maximum(f, 1e-10) / 1000.0) / np.log(6.4))


def mel_to_hertz(m):
    m = np.asarray(m, np.float64)
    return np.where(m < 15.0, 200.0 * m / 3.0, 1000.0 * np.exp(np.log(6.4) * (m - 15.0) / 27.0))


def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular filters (n_fft // 2 + 1, n_mels) on the mel scale from 0 to rate / 2, each scaled to unit area
    (Slaney normalisation: 2 / bandwidth in Hz)."""
    fft_hz = np.linspace(0, rate / 2, n_fft // 2 + 1)                           # (bins,)
    edges = mel_to_hertz(np.linspace(hertz_to_mel(0.0), hertz_to_mel(rate / 2), n_mels + 2))   # (n_mels + 2,)
    widths = np.diff(edges)
    rise = (fft_hz[:, None] - edges[None, :-2]) / widths[None, :-1]              # (bins, n_mels)
    fall = (edges[None, 2:] - fft_hz[:, None]) / widths[None, 1:]
    tri = np.maximum(0.0, np.minimum(rise, fall))
    return tri * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def log_mel(audio: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """Whisper's input features (n_mels, 3000) float32 of 16 kHz mono audio (padded or cut to 30 s)."""
    x = np.asarray(audio, np.float64).ravel()
    x = np.pad(x[:N_SAMPLES], (0, max(0, N_SAMPLES - len(x))))                  # (480000,)
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")                      # centred frames
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)           # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]          # (3001, 400)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2                  # (3001, 201)
    mel = power[:-1] @ mel_filters(n_mels)                                       # (3000, n_mels)
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    return ((log + 4.0) / 4.0).T.astype(np.float32)                              # (n_mels, 3000)

"""The non-attention pieces of attnlab.models (``_blocks``) against PyTorch: the float32 erf GELU."""

import numpy as np
import pytest

from attnlab.models._blocks import ACTIVATIONS

torch = pytest.importorskip("torch")          # installed in CI (test extra): never skips there


def test_float32_gelu_is_torchs_erf_gelu_to_float32_precision():
    gelu = ACTIVATIONS["gelu"]
    x = torch.cat([torch.linspace(-12, 12, 400_001), torch.randn(100_000) * 3,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, 50.0, -50.0, 1e4, -1e4])]).float()
    exact = (x.double() * 0.5 * (1 + torch.erf(x.double() / 2 ** 0.5))).numpy()
    theirs = torch.nn.functional.gelu(x).numpy()
    got = gelu(x.numpy())
    assert got.dtype == np.float32
    # as close to the float64 GELU as torch's own float32 erf GELU is (1.2e-6: float32 rounding at |x| ~ 12)
    assert np.abs(got - exact).max() <= np.abs(theirs - exact).max()
    assert np.abs(got - exact).max() < 1e-6
    np.testing.assert_allclose(got, theirs, rtol=1e-6, atol=2e-6)
    small = np.abs(x.numpy()) < 3                             # where BERT's and Whisper's activations mostly lie
    np.testing.assert_allclose(got[small], exact[small], rtol=1e-5, atol=3e-7)


def test_gelu_keeps_the_dtype_and_float64_stays_exact():
    gelu = ACTIVATIONS["gelu"]
    x = np.linspace(-8, 8, 1001)
    ref = torch.nn.functional.gelu(torch.tensor(x)).numpy()
    np.testing.assert_allclose(gelu(x), ref, rtol=1e-14, atol=1e-15)         # float64: the exact erf
    h = gelu(x.astype(np.float16))
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float64), ref, rtol=2e-3, atol=2e-3)
    assert gelu(np.zeros((2, 0, 3), np.float32)).shape == (2, 0, 3)

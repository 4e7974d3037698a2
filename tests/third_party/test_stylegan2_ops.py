"""The pure-PyTorch ops against independent constructions written from the published semantics (spec §8)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from third_party.stylegan2_ada.ops import (
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    normalize_2nd_moment,
    resolve_fused_modconv,
    setup_filter,
    upsample2d,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy-sized tensors gain nothing from threads; on a loaded machine, spinning threads cost 10-50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def upfirdn2d_reference(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """Literal upfirdn2d in float64 NumPy: zero-insert, pad (x0, x1, y0, y1), true convolution, decimate."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64) * gain ** (f.ndim / 2)
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * up, w * up))
    u[..., ::up, ::up] = x
    px0, px1, py0, py1 = pad
    u = np.pad(u, ((0, 0), (0, 0), (py0, py1), (px0, px1)))
    kh, kw = f.shape
    ho, wo = u.shape[2] - kh + 1, u.shape[3] - kw + 1
    out = np.zeros((n, c, ho, wo))
    flipped = f[::-1, ::-1]  # convolution = correlation with the flipped filter
    for i in range(kh):
        for j in range(kw):
            out += flipped[i, j] * u[..., i:i + ho, j:j + wo]
    return out[..., ::down, ::down]


def full_conv2d(a, b):
    """Full 2-D convolution of two kernels (..., ka, ka) * (kb, kb) -> (..., ka+kb-1, ka+kb-1)."""
    ka, kb = a.shape[-1], b.shape[-1]
    out = torch.zeros(*a.shape[:-2], ka + kb - 1, ka + kb - 1, dtype=a.dtype)
    for i in range(kb):
        for j in range(kb):
            out[..., i:i + ka, j:j + ka] += a * b[i, j]
    return out


def zero_insert(x):
    """(N, C, H, W) -> (N, C, 2H-1, 2W-1) with x at the even positions."""
    n, c, h, w = x.shape
    z = x.new_zeros(n, c, 2 * h - 1, 2 * w - 1)
    z[..., ::2, ::2] = x
    return z


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def test_setup_filter():
    f = setup_filter([1, 3, 3, 1])
    taps = torch.tensor([1.0, 3, 3, 1])
    assert f.shape == (4, 4) and torch.allclose(f, torch.outer(taps, taps) / 64)
    assert float(f.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="4 taps"):
        setup_filter([1, 2, 1])


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 3, 4]])  # the asymmetric filter checks orientation
def test_up_and_downsample_match_upfirdn(taps, gen):
    f = setup_filter(taps)
    x = torch.randn(2, 3, 8, 6, generator=gen, dtype=torch.float64)
    up = upsample2d(x, f.double())
    down = downsample2d(x, f.double())
    assert up.shape == (2, 3, 16, 12) and down.shape == (2, 3, 4, 3)
    ref_up = upfirdn2d_reference(x, f.numpy(), up=2, pad=(2, 1, 2, 1), gain=4)
    np.testing.assert_allclose(up.numpy(), ref_up, atol=1e-12)
    np.testing.assert_allclose(down.numpy(), upfirdn2d_reference(x, f.numpy(), down=2, pad=(1, 1, 1, 1)), atol=1e-12)


def test_resampling_against_scipy_separable(gen):
    signal = pytest.importorskip("scipy.signal")
    taps = np.array([1.0, 3, 3, 1]) / 8
    x = torch.randn(1, 1, 6, 6, generator=gen, dtype=torch.float64)
    rows = np.stack([signal.upfirdn(2 * taps, r, up=2)[1:13] for r in x[0, 0].numpy()])
    ref_up = np.stack([signal.upfirdn(2 * taps, col, up=2)[1:13] for col in rows.T]).T
    np.testing.assert_allclose(upsample2d(x, setup_filter().double())[0, 0].numpy(), ref_up, atol=1e-12)
    rows = np.stack([signal.upfirdn(taps, r, down=2)[1:4] for r in x[0, 0].numpy()])
    ref_down = np.stack([signal.upfirdn(taps, col, down=2)[1:4] for col in rows.T]).T
    np.testing.assert_allclose(downsample2d(x, setup_filter().double())[0, 0].numpy(), ref_down, atol=1e-12)


def test_constant_image_keeps_constant_interior():
    f = setup_filter()
    x = torch.full((1, 2, 8, 8), 0.7)
    assert torch.allclose(upsample2d(x, f)[..., 2:-2, 2:-2], torch.tensor(0.7), atol=1e-6)
    assert torch.allclose(downsample2d(x, f)[..., 1:-1, 1:-1], torch.tensor(0.7), atol=1e-6)


def test_up_conv_matches_zero_insertion_construction(gen):
    """G conv0: 3x3 true convolution on the 2x zero-inserted image + FIR 4f == conv2d with the flipped 6x6 kernel."""
    f = setup_filter().double()
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    ours = conv2d_resample(x, w, f, up=2)
    k = full_conv2d(w, 4 * f)  # (O, I, 6, 6)
    ref = F.conv2d(F.pad(zero_insert(x), [3, 3, 3, 3]), k.flip([2, 3]))
    assert ours.shape == ref.shape == (2, 4, 10, 10)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)


def test_down_conv_matches_folded_kernel(gen):
    """D conv1: FIR f (pad 2) then strided 3x3 correlation == one strided conv with W (x) f, padding 2."""
    f = setup_filter().double()
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, full_conv2d(w, f), stride=2, padding=2)
    torch.testing.assert_close(conv2d_resample(x, w, f, down=2), ref, atol=1e-10, rtol=0)


def test_one_by_one_resampling(gen):
    f = setup_filter().double()
    x = torch.randn(1, 3, 6, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 3, 1, 1, generator=gen, dtype=torch.float64)
    conv = F.conv2d(x, w).numpy()
    np.testing.assert_allclose(conv2d_resample(x, w, f, up=2).numpy(),
                               upfirdn2d_reference(conv, f.numpy(), up=2, pad=(2, 1, 2, 1), gain=4), atol=1e-10)
    down = upfirdn2d_reference(x.numpy(), f.numpy(), down=2, pad=(1, 1, 1, 1))
    np.testing.assert_allclose(conv2d_resample(x, w, f, down=2).numpy(),
                               F.conv2d(torch.from_numpy(down), w).numpy(), atol=1e-10)
    with pytest.raises(ValueError, match="kernel 1 or 3"):
        conv2d_resample(x, torch.randn(5, 3, 5, 5, dtype=torch.float64), f, up=2)


def test_grouped_up_conv_equals_per_sample(gen):
    f = setup_filter()
    x = torch.randn(3, 4, 5, 5, generator=gen)
    w = torch.randn(3 * 6, 4, 3, 3, generator=gen)
    grouped = conv2d_resample(x.reshape(1, 12, 5, 5), w, f, up=2, groups=3).reshape(3, 6, 10, 10)
    single = torch.cat([conv2d_resample(x[n:n + 1], w[6 * n:6 * n + 6], f, up=2) for n in range(3)])
    torch.testing.assert_close(grouped, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modconv_fused_equals_nonfused(up, demodulate, gen):
    f = setup_filter()
    x = torch.randn(3, 8, 8, 8, generator=gen)
    w = torch.randn(6, 8, 3, 3, generator=gen)
    s = torch.randn(3, 8, generator=gen) + 1
    if not demodulate:
        s = s / math.sqrt(8 * 9)  # as in ToRGB: keeps outputs O(1), where an absolute 1e-5 is meaningful
    noise = torch.randn(3, 1, 8 * up, 8 * up, generator=gen) * 0.3
    a = modulated_conv2d(x, w, s, noise=noise, up=up, resample_filter=f, demodulate=demodulate, fused=False)
    b = modulated_conv2d(x, w, s, noise=noise, up=up, resample_filter=f, demodulate=demodulate, fused=True)
    assert a.shape == (3, 6, 8 * up, 8 * up)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_modconv_matches_explicit_per_sample_weights(gen):
    """Modulate, demodulate with eps 1e-8 and convolve, written out per sample in float64."""
    x = torch.randn(2, 5, 6, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64)
    s = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    ours = modulated_conv2d(x, w, s, demodulate=True, fused=False)
    for n in range(2):
        wn = w * s[n].reshape(1, 5, 1, 1)
        wn = wn / (wn.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(ours[n:n + 1], F.conv2d(x[n:n + 1], wn, padding=1), atol=1e-10, rtol=0)


def test_demodulation_gives_unit_scale(gen):
    x = torch.randn(2, 16, 64, 64, generator=gen)
    w = torch.randn(8, 16, 3, 3, generator=gen) * 5
    s = torch.rand(2, 16, generator=gen) * 3
    y = modulated_conv2d(x, w, s, demodulate=True)
    std = y.std(dim=[2, 3])
    assert torch.allclose(std, torch.ones_like(std), atol=0.1)


def test_bias_act():
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0]])
    b = torch.tensor([0.5, -0.5])
    y = bias_act(x, b, act="lrelu", clamp=2.0)
    ref = (F.leaky_relu(x + b, 0.2) * math.sqrt(2)).clamp(-2, 2)
    torch.testing.assert_close(y, ref)
    assert torch.equal(x, torch.tensor([[-1.0, 2.0], [3.0, -4.0]]))  # not modified without inplace
    xg = x.clone().requires_grad_()
    bias_act(xg, b, act="lrelu", inplace=True).sum().backward()  # in-place is skipped when autograd needs it
    assert xg.grad is not None
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act(x, act="gelu")


def test_normalize_2nd_moment_and_fused_rule():
    z = torch.randn(4, 32) * 7
    assert torch.allclose(normalize_2nd_moment(z).square().mean(dim=1), torch.ones(4), atol=1e-5)
    assert resolve_fused_modconv(None, torch.device("cpu")) is False
    assert resolve_fused_modconv(None, torch.device("cuda")) is True
    assert resolve_fused_modconv(True, torch.device("cpu")) is True

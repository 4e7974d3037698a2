"""Image I/O and preprocessing: uint round-trips, atomic writes, error messages, exact inverse geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from gmia.data import preprocess as pp
from gmia.data.preprocess import (Geometry, Preprocess, check_image, from_uint, load_image, resize, restore,
                                  save_image, square, to_channels, to_uint8, to_uint16)
from gmia.errors import ConfigError, InputError


def test_uint_round_trips_are_exact_on_the_grid_and_half_a_step_off_it():
    grid8 = torch.arange(256, dtype=torch.float32) / 255
    grid16 = torch.arange(0, 65536, 7, dtype=torch.float32) / 65535
    assert torch.equal(from_uint(to_uint8(grid8)), grid8)
    assert torch.allclose(from_uint(to_uint16(grid16)), grid16, atol=0, rtol=1e-7)
    x = torch.rand(1000)
    assert (from_uint(to_uint8(x)) - x).abs().max() <= 0.5 / 255 + 1e-7
    assert (from_uint(to_uint16(x)) - x).abs().max() <= 0.5 / 65535 + 1e-7
    assert to_uint8(torch.tensor([-0.2, 1.7])).tolist() == [0, 255]  # clamped


@pytest.mark.parametrize("suffix,bits,c,tol", [(".png", 8, 1, 0), (".png", 16, 1, 0), (".png", 8, 3, 0),
                                               (".tif", 16, 1, 0), (".jpg", 8, 1, 0.08)])
def test_save_then_load_round_trip(tmp_path, suffix, bits, c, tol):
    q = 65535 if bits == 16 else 255
    x = torch.randint(0, q + 1, (c, 9, 13)).float() / q  # values on the grid of the file format
    path = save_image(x, tmp_path / f"a{suffix}", bits=bits)
    y = load_image(path)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert (y - x).abs().mean() <= tol + 1e-7
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a{suffix}"]  # no temporary left behind


def test_sixteen_bit_png_keeps_sixteen_bits(tmp_path):
    x = torch.full((1, 4, 4), 1000 / 65535)
    save_image(x, tmp_path / "a.png", bits=16)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I;16") and np.asarray(im).max() == 1000


def test_save_is_atomic_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_image(torch.zeros(1, 4, 4), tmp_path / "out.png")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_image(torch.ones(1, 4, 4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_rejects_bad_requests(tmp_path):
    with pytest.raises(ConfigError, match="16-bit output is for grayscale"):
        save_image(torch.zeros(3, 4, 4), tmp_path / "a.png", bits=16)
    with pytest.raises(ConfigError, match="unsupported suffix"):
        save_image(torch.zeros(1, 4, 4), tmp_path / "a.gif")
    with pytest.raises(ValueError, match="NaN"):
        save_image(torch.full((1, 4, 4), float("nan")), tmp_path / "a.png")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"not found: .*missing\.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"junk\.png.*Expected a PNG, JPEG, TIFF or DICOM"):
        load_image(tmp_path / "junk.png")
    good = save_image(torch.rand(1, 32, 32), tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(InputError, match=r"cut\.png"):
        load_image(tmp_path / "cut.png")


def test_channel_handling(tmp_path):
    gray = torch.rand(1, 5, 6)
    rgb = to_channels(gray, 3)
    assert rgb.shape == (3, 5, 6) and torch.equal(rgb[0], rgb[2])
    assert torch.allclose(to_channels(rgb, 1), gray, atol=1e-6)
    # RGB → gray matches Pillow's 'L' conversion (ITU-R 601 luma)
    a = np.random.default_rng(0).integers(0, 256, (7, 8, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "c.png")
    ours = load_image(tmp_path / "c.png", channels=1)
    theirs = from_uint(np.asarray(Image.fromarray(a).convert("L")))[None]
    assert (ours - theirs).abs().max() <= 1 / 255 + 1e-6
    # RGBA: alpha is dropped
    Image.fromarray(np.dstack([a, np.zeros((7, 8), np.uint8)])).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "rgba.png").shape == (3, 7, 8)
    with pytest.raises(ValueError, match="2 channels"):
        to_channels(torch.zeros(2, 3, 3), 3)


def test_resize_antialiases_when_shrinking():
    checker = ((torch.arange(64)[:, None] + torch.arange(64)[None]) % 2).float()[None]  # (1, 64, 64)
    small = resize(checker, 16)
    assert small.shape == (1, 16, 16)
    assert (small - 0.5).abs().max() < 0.05  # an aliased resize would give 0s and 1s
    assert resize(checker, (64, 64)) is checker


@pytest.mark.parametrize("h,w", [(30, 50), (50, 30), (21, 21), (7, 12)])
def test_square_then_restore_is_exact(h, w):
    x = torch.rand(1, h, w)
    padded, g = square(x, "pad")
    assert padded.shape == (1, max(h, w), max(h, w))
    assert torch.equal(restore(padded, g), x)
    cropped, g = square(x, "crop")
    assert cropped.shape == (1, min(h, w), min(h, w))
    assert torch.equal(restore(cropped, g, base=x), x)
    lost = restore(cropped, g, fill=0.25)  # without base the cropped-away border is fill
    if h != w:
        assert (lost == 0.25).any() and torch.equal(lost[..., g.top:g.top + min(h, w), g.left:g.left + min(h, w)],
                                                     cropped)


def test_preprocess_and_restore_with_resize():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 60), indexing="ij")
    x = torch.stack([yy, xx, 0.5 * (yy + xx)])  # smooth RGB (3, 40, 60)
    for mode in ("pad", "crop", "stretch"):
        y, g = Preprocess(size=32, channels=3, square=mode)(x)
        assert y.shape == (3, 32, 32)
        back = restore(y, g, base=x)
        assert back.shape == x.shape
        # the resize is the only loss; pixels next to the padding mix with it, so skip a 2-pixel rim
        assert (back - x)[:, 2:-2, 2:-2].abs().max() < 0.02, mode
    y, g = Preprocess(size=32, channels=1)(x)
    assert y.shape == (1, 32, 32) and restore(y, g).shape == (3, 40, 60)  # original channels by default
    assert restore(y, g, channels=1).shape == (1, 40, 60)


def test_preprocess_mask_is_binary_and_aligned():
    m = torch.zeros(1, 20, 30)
    m[:, 5:15, 10:20] = 1
    pre = Preprocess(size=10)
    x, g = pre(torch.rand(1, 20, 30))
    mm = pre.mask(m, g)
    assert mm.shape == (1, 10, 10) and set(mm.unique().tolist()) <= {0.0, 1.0}
    assert mm[0, 4, 5] == 1 and mm[0, 0, 0] == 0


def test_geometry_collates_and_unbatches():
    gs = [Preprocess(size=8).plan(torch.zeros(1, h, w)) for h, w in ((10, 20), (30, 5))]
    batched = default_collate(gs)
    assert isinstance(batched, Geometry) and Geometry.unbatch(batched) == gs


def test_config_and_shape_errors():
    with pytest.raises(ConfigError, match="square must be one of"):
        Preprocess(square="circle")
    with pytest.raises(ConfigError, match="channels must be 1, 3"):
        Preprocess(channels=2)
    with pytest.raises(InputError, match=r"scan\.png: expected an image of shape 1×64×64, got 3×64×64"):
        check_image(torch.zeros(3, 64, 64), channels=1, size=64, source="scan.png")
    assert pp.__all__ and all(hasattr(pp, n) for n in pp.__all__)

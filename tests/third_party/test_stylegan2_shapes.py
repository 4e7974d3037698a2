"""Parameter names, shapes and counts against the official tables (spec §4, §5). Big models are built on the
meta device: no memory, no forward passes."""

import pytest
import torch

from third_party.stylegan2_ada import Discriminator, ESModel, Generator

GMIA_SYNTHESIS = dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


AUTO = dict(channel_base=16384)


def build(cls, *args, **kwargs):
    with torch.device("meta"):
        return cls(*args, **kwargs)


@pytest.fixture(scope="module")
def g256():
    return build(Generator, 512, 0, 512, 256, 3, mapping_kwargs=dict(num_layers=8),
                 synthesis_kwargs=AUTO)


@pytest.fixture(scope="module")
def d256():
    return build(Discriminator, 0, 256, 3, channel_base=16384)


@pytest.fixture(scope="module")
def esmodel():
    return build(ESModel, 512, 0, 512, 256, 1, synthesis_kwargs=GMIA_SYNTHESIS)


def test_generator_256_count_and_keys(g256):
    assert count(g256) == 24_767_458
    assert g256.num_ws == 14
    sd = shapes(g256)
    assert len([k for k in sd if k.startswith("synthesis.")]) == 127
    assert len([k for k in sd if k.startswith("mapping.")]) == 17
    assert len([k for k in sd if k.startswith("synthesis.") and k.endswith("resample_filter")]) == 20
    assert list(sd)[0] == "synthesis.b4.const"  # synthesis registered first, as in the official state dict


def test_generator_256_table(g256):
    sd = shapes(g256)
    assert sd["synthesis.b4.const"] == (512, 4, 4)
    assert sd["synthesis.b4.conv1.weight"] == (512, 512, 3, 3)
    assert sd["synthesis.b4.conv1.noise_strength"] == ()
    assert sd["synthesis.b4.conv1.noise_const"] == (4, 4)
    assert sd["synthesis.b4.torgb.weight"] == (3, 512, 1, 1)
    conv = {8: (512, 512), 16: (512, 512), 32: (512, 512), 64: (256, 512), 128: (128, 256), 256: (64, 128)}
    for r, (cout, cin) in conv.items():
        p = f"synthesis.b{r}."
        assert sd[p + "conv0.weight"] == (cout, cin, 3, 3)
        assert sd[p + "conv1.weight"] == (cout, cout, 3, 3)
        assert sd[p + "conv0.affine.weight"] == (cin, 512)
        assert sd[p + "conv1.affine.weight"] == (cout, 512)
        assert sd[p + "torgb.affine.weight"] == (cout, 512)
        assert sd[p + "torgb.weight"] == (3, cout, 1, 1)
        assert sd[p + "conv0.noise_const"] == (r, r) and sd[p + "conv1.noise_const"] == (r, r)
        assert sd[p + "resample_filter"] == (4, 4) and sd[p + "conv0.resample_filter"] == (4, 4)
        assert p + "skip.weight" not in sd  # skip architecture: no resnet skips in G
    assert sd["mapping.w_avg"] == (512,)
    for i in range(8):
        assert sd[f"mapping.fc{i}.weight"] == (512, 512) and sd[f"mapping.fc{i}.bias"] == (512,)
    assert "mapping.embed.weight" not in sd


def test_generator_256_one_channel():
    g = build(Generator, 512, 0, 512, 256, 1, mapping_kwargs=dict(num_layers=8), synthesis_kwargs=AUTO)
    assert count(g) == 24_762_452


def test_discriminator_256(d256):
    assert count(d256) == 24_001_089
    sd = shapes(d256)
    assert sd["b256.fromrgb.weight"] == (64, 3, 1, 1)
    assert sd["b256.conv0.weight"] == (64, 64, 3, 3) and sd["b256.conv1.weight"] == (128, 64, 3, 3)
    assert sd["b256.skip.weight"] == (128, 64, 1, 1) and "b256.skip.bias" not in sd
    assert sd["b128.conv1.weight"] == (256, 128, 3, 3) and sd["b64.skip.weight"] == (512, 256, 1, 1)
    for r in (32, 16, 8):
        assert sd[f"b{r}.conv0.weight"] == (512, 512, 3, 3) and sd[f"b{r}.skip.weight"] == (512, 512, 1, 1)
        assert f"b{r}.fromrgb.weight" not in sd
    assert sd["b4.conv.weight"] == (512, 513, 3, 3)
    assert sd["b4.fc.weight"] == (512, 8192) and sd["b4.out.weight"] == (1, 512) and sd["b4.out.bias"] == (1,)
    assert len([k for k in sd if k.endswith("resample_filter")]) == 26


def test_64px_auto_config():
    g = build(Generator, 512, 0, 512, 64, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=AUTO)
    d = build(Discriminator, 0, 64, 3, channel_base=16384)
    assert count(g) == 22_243_608 and g.num_ws == 10
    assert count(d) == 23_407_361
    sg, sdd = shapes(g), shapes(d)
    assert sg["synthesis.b64.conv0.weight"] == (256, 512, 3, 3) and sg["synthesis.b64.torgb.weight"] == (3, 256, 1, 1)
    assert sg["synthesis.b64.conv0.affine.weight"] == (512, 512)
    assert sg["synthesis.b64.conv1.affine.weight"] == (256, 512)
    assert {k for k in sg if k.startswith("mapping.")} == {
        "mapping.w_avg", "mapping.fc0.weight", "mapping.fc0.bias", "mapping.fc1.weight", "mapping.fc1.bias"}
    assert sdd["b64.fromrgb.weight"] == (256, 3, 1, 1) and sdd["b64.conv1.weight"] == (512, 256, 3, 3)


def test_conditional_variant():
    g = build(Generator, 512, 4, 512, 64, 3, mapping_kwargs=dict(num_layers=2), synthesis_kwargs=AUTO)
    d = build(Discriminator, 4, 64, 3, channel_base=16384)
    sg, sdd = shapes(g), shapes(d)
    assert sg["mapping.embed.weight"] == (512, 4) and sg["mapping.embed.bias"] == (512,)
    assert sg["mapping.fc0.weight"] == (512, 1024)
    assert sdd["mapping.embed.weight"] == (512, 4)
    assert all(sdd[f"mapping.fc{i}.weight"] == (512, 512) for i in range(8))
    assert "mapping.w_avg" not in sdd
    assert sdd["b4.out.weight"] == (512, 512) and sdd["b4.out.bias"] == (512,)


def test_gmia_esmodel(esmodel):
    assert count(esmodel) == 46_657_044
    assert count(esmodel.synthesis) == 22_661_204 and count(esmodel.encoder) == 23_995_840
    assert esmodel.num_ws == 14 and not hasattr(esmodel, "mapping")
    sd = shapes(esmodel)
    enc = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    assert len(enc) == 62
    assert enc["encoder.b256.fromrgb.weight"] == (64, 1, 1, 1)
    assert enc["encoder.b4.conv.weight"] == (512, 512, 3, 3)
    assert enc["encoder.b4.fc.weight"] == (512, 8192) and enc["encoder.b4.fc.bias"] == (512,)
    assert not any(k.startswith("encoder.b4.out") for k in enc)
    assert sd["synthesis.b256.torgb.weight"] == (1, 64, 1, 1)


@pytest.mark.parametrize("res", [4, 8, 128, 1024])
def test_any_resolution(res):
    g = build(Generator, 512, 0, 512, res, 1, synthesis_kwargs=dict(channel_base=32768))
    d = build(Discriminator, 0, res, 1)
    assert g.num_ws == 2 * (res.bit_length() - 1) - 2  # 2 log2(R) - 2
    assert count(d) > 0


def test_bad_resolution_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        build(Generator, 512, 0, 512, 48, 1)

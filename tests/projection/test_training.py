import json

import pytest
import torch
from PIL import Image

from gmia.errors import ConfigError
from gmia.projection import load_aegan, train_aegan
from gmia.projection.config import aegan_config
from gmia.projection.snapshot import find_snapshot

from .conftest import SigintAfter


def _weights(run_dir):
    """Every tensor of the newest snapshot (G, G_ema, D, Adam states, RNG)."""
    from safetensors.torch import load_file

    return load_file(str(find_snapshot(run_dir)))


def _assert_same(a, b):
    skip = ("rng/torch_cpu",)
    assert set(a) == set(b)
    bad = [k for k in a if k not in skip and not torch.equal(a[k], b[k])]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"


def test_one_tick_writes_the_run_folder(tiny_cfg, tiny_data, perceptual, tmp_path):
    cfg = aegan_config("tiny", kimg=0.008, lambda_perc=1.0, export_discriminator=True)
    result = train_aegan(cfg, tiny_data, tmp_path, perceptual=perceptual, progress=False)
    assert not result.interrupted and result.kimg == pytest.approx(0.008)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["batch"] == 4
    lines = [json.loads(s) for s in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["tick"] == 1 and {"G/mse", "G/tiny", "D/loss", "D/r1", "G/pl_penalty",
                                                         "grid/ssim"} <= set(lines[0])
    grid = sorted(tmp_path.glob("grid-*.png"))
    assert len(grid) == 1 and Image.open(grid[0]).size == (2 * 2 * 16, 2 * 16)  # 4 pairs, 2 x 2
    assert find_snapshot(tmp_path) is not None
    assert "done: 0.008 kimg" in (tmp_path / "log.txt").read_text()
    model = load_aegan(result.checkpoint_dir)
    card = json.loads((result.checkpoint_dir / "aegan.json").read_text())
    assert card["meta"]["kimg"] == pytest.approx(0.008) and "hardware" in card["meta"]
    assert (result.checkpoint_dir / "discriminator.safetensors").is_file()
    assert model.reconstruct(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(ConfigError, match="--resume"):
        train_aegan(cfg, tiny_data, tmp_path, perceptual=perceptual, progress=False)


def test_resume_is_exact(tiny_cfg, tiny_data, perceptual, tmp_path):
    """8 steps straight == 4 steps, stop, resume for 4 more; and == a run stopped by SIGINT after 3 steps."""
    full = tmp_path / "full"
    train_aegan(tiny_cfg, tiny_data, full, perceptual=perceptual, progress=False)
    split = tmp_path / "split"
    half = aegan_config("tiny", aug_hflip=True, aug_rotate=10.0, lambda_perc=1.0, kimg=0.016)
    train_aegan(half, tiny_data, split, perceptual=perceptual, progress=False)
    train_aegan(tiny_cfg, tiny_data, split, resume=True, perceptual=perceptual, progress=False)
    _assert_same(_weights(full), _weights(split))

    stopped = tmp_path / "sigint"
    result = train_aegan(tiny_cfg, tiny_data, stopped, perceptual=SigintAfter(3), progress=False)
    assert result.interrupted and result.checkpoint_dir is None and result.kimg == pytest.approx(0.012)
    train_aegan(tiny_cfg, tiny_data, stopped, resume=True, perceptual=perceptual, progress=False)
    _assert_same(_weights(full), _weights(stopped))

    again = train_aegan(tiny_cfg, tiny_data, full, resume=True, perceptual=perceptual, progress=False)
    assert again.kimg == pytest.approx(tiny_cfg.kimg)  # nothing left to train, and it still
    assert 0 < again.stats["grid/ssim"] <= 1  # reports the grid fidelity in its summary (not nan)
    assert "nan" not in (full / "log.txt").read_text().splitlines()[-1]


def test_resume_refuses_another_setup(tiny_cfg, tiny_data, perceptual, tmp_path):
    train_aegan(aegan_config("tiny", kimg=0.004), tiny_data, tmp_path, perceptual=perceptual, progress=False)
    with pytest.raises(ConfigError, match="batch"):
        train_aegan(aegan_config("tiny", batch=2), tiny_data, tmp_path, resume=True, perceptual=perceptual,
                    progress=False)


def test_init_from_starts_a_fine_tune_from_other_weights(tiny_data, perceptual, tmp_path):
    """A run started from a snapshot or a checkpoint folder begins at those weights (fresh counters); a W
    checkpoint can start a W+ run, which then encodes exactly as the W model; a mismatched one is refused."""
    from gmia.errors import CheckpointError
    from gmia.projection.snapshot import init_weights
    from gmia.projection.training import build_networks

    src = train_aegan(aegan_config("tiny", kimg=0.008), tiny_data, tmp_path / "src", perceptual=perceptual,
                      progress=False)
    snap = find_snapshot(tmp_path / "src")
    # kimg 0: nothing trains, so the export is the source's G_ema unchanged
    ft = train_aegan(aegan_config("tiny", kimg=0.0, init_from=str(snap), lambda_ssim=1.0), tiny_data,
                     tmp_path / "ft", perceptual=perceptual, progress=False)
    a, b = load_aegan(src.checkpoint_dir).state_dict(), load_aegan(ft.checkpoint_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "from " + str(snap) in (tmp_path / "ft" / "log.txt").read_text()

    card = json.loads((ft.checkpoint_dir / "aegan.json").read_text())["meta"]
    assert card["init_from"]["path"] == str(snap) and card["kimg"] == 0.0
    again = train_aegan(aegan_config("tiny", kimg=0.0, init_from=str(src.checkpoint_dir)), tiny_data,
                        tmp_path / "ft2", perceptual=perceptual, progress=False)
    source = json.loads((again.checkpoint_dir / "aegan.json").read_text())["meta"]["init_from"]
    assert source["kimg"] == pytest.approx(0.008) and "command" in source  # the first phase's record travels

    cfg = aegan_config("tiny", latent="w+")
    nets, _ = build_networks(cfg, torch.device("cpu"))
    assert "D fresh" in init_weights(src.checkpoint_dir, nets)
    x = torch.rand(2, 1, 16, 16)
    w = load_aegan(src.checkpoint_dir).encode(x)
    with torch.no_grad():
        assert torch.allclose(nets.G_ema.encode(x), w.unsqueeze(1).expand(-1, nets.G_ema.num_ws, -1), atol=1e-6)

    wider, _ = build_networks(aegan_config("tiny", channel_max=32), torch.device("cpu"))
    with pytest.raises(CheckpointError, match="does not fit"):
        init_weights(snap, wider)
    with pytest.raises(CheckpointError, match="aegan.safetensors"):
        init_weights(tmp_path, wider)


def test_lambda_gan_zero_is_an_autoencoder_step_that_leaves_d_alone(tiny_data):
    from gmia.projection.losses import ReconstructionLoss
    from gmia.projection.runtime import RankContext
    from gmia.projection.training import build_networks, training_step

    cfg = aegan_config("tiny", lambda_gan=0.0, lambda_ssim=1.0)
    nets, _ = build_networks(cfg, torch.device("cpu"))
    d_before = {k: v.clone() for k, v in nets.D.state_dict().items()}
    g_before = {k: v.clone() for k, v in nets.G.state_dict().items()}
    x = torch.stack([tiny_data[i]["image"] for i in range(4)])
    stats = training_step(nets, x, 0, cfg, ReconstructionLoss(1.0, 0.0, None, 1.0), RankContext())
    assert "G/dssim" in stats and not any(k.startswith("D/") for k in stats) and "G/gan" not in stats
    assert all(torch.equal(v, nets.D.state_dict()[k]) for k, v in d_before.items())
    assert any(not torch.equal(v, nets.G.state_dict()[k]) for k, v in g_before.items())


def test_rank_context_gives_a_bare_cuda_device_an_index(monkeypatch):
    from gmia.projection.runtime import RankContext
    # "--device cuda" must mean this rank's GPU: torch.cuda.set_device rejects a device without an index.
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(d))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the device choice goes
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = RankContext.from_env("cuda")
    assert ctx.device == torch.device("cuda", 0)
    assert chosen == [torch.device("cuda", 0)]


def test_a_wider_encoder_starts_fresh_beside_the_source_generator(tiny_data, perceptual, tmp_path):
    """e_channel_* give E its own capacity; with fresh_encoder only G comes from the source, and the export
    rebuilds the wider E from its card. Without fresh_encoder the mismatch is refused with the flag to use."""
    from gmia.errors import CheckpointError
    from gmia.projection.snapshot import init_weights
    from gmia.projection.training import build_networks

    src = train_aegan(aegan_config("tiny", kimg=0.0), tiny_data, tmp_path / "src", perceptual=perceptual,
                      progress=False)
    wide = aegan_config("tiny", kimg=0.0, e_channel_base=512, e_channel_max=32, init_from=str(src.checkpoint_dir), fresh_encoder=True)
    nets, _ = build_networks(wide, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="--fresh-encoder"):
        init_weights(src.checkpoint_dir, nets)
    ft = train_aegan(wide, tiny_data, tmp_path / "ft", perceptual=perceptual, progress=False)
    a, b = load_aegan(src.checkpoint_dir), load_aegan(ft.checkpoint_dir)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("synthesis."))
    first = "encoder.b16.fromrgb.weight"
    assert sb[first].shape[0] == 2 * sa[first].shape[0]  # tiny E: 16 channels at 16 px, the wide one 32
    assert b.encode(torch.rand(2, 1, 16, 16)).shape == (2, b.w_dim)
    with pytest.raises(ConfigError, match="fresh_encoder needs init_from"):
        aegan_config("tiny", fresh_encoder=True)


def test_a_grown_encoder_computes_what_the_narrow_one_did_then_trains_its_new_channels(tiny_data, perceptual,
                                                                                         tmp_path):
    """grow_encoder places the source's narrower E inside the configured wider one: same codes to float precision,
    G and G_ema alike; the new channels are unread at first and start being used after a few steps. Narrowing and
    the flag without a source are refused."""
    from gmia.errors import CheckpointError
    from gmia.projection.snapshot import init_weights
    from gmia.projection.training import build_networks

    src = train_aegan(aegan_config("tiny", kimg=0.008, export_dtype="float32"), tiny_data, tmp_path / "src",
                      perceptual=perceptual, progress=False)
    narrow = load_aegan(src.checkpoint_dir)
    wide = aegan_config("tiny", kimg=0.016, lambda_gan=0.0, e_channel_base=512, e_channel_max=32,
                        init_from=str(src.checkpoint_dir), grow_encoder=True)
    nets, _ = build_networks(wide, torch.device("cpu"))
    assert "(E grown)" in init_weights(src.checkpoint_dir, nets, grow_encoder=True)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        for net in (nets.G, nets.G_ema):
            assert torch.allclose(net.encode(x), narrow.encode(x), atol=1e-5)
    head = "encoder.b4.fc.weight"
    n_old = narrow.state_dict()[head].shape[1]
    assert nets.G.state_dict()[head].shape[1] > n_old and not nets.G.state_dict()[head][:, n_old:].any()

    ft = train_aegan(wide, tiny_data, tmp_path / "ft", perceptual=perceptual, progress=False)
    assert load_aegan(ft.checkpoint_dir).state_dict()[head][:, n_old:].abs().sum() > 0  # new channels now read
    back, _ = build_networks(aegan_config("tiny", init_from=str(ft.checkpoint_dir), grow_encoder=True),
                             torch.device("cpu"))
    with pytest.raises(CheckpointError, match="at least as wide"):
        init_weights(ft.checkpoint_dir, back, grow_encoder=True)
    with pytest.raises(ConfigError, match="grow_encoder needs init_from"):
        aegan_config("tiny", grow_encoder=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        aegan_config("tiny", init_from="x", grow_encoder=True, fresh_encoder=True)


def test_encoder_fine_tune_freezes_g_and_mixes_prior_samples(tiny_data, perceptual, tmp_path):
    """train_generator False trains E only (G and its EMA stay bit-identical); synthetic_fraction replaces the
    tail of each batch by G(w), w from the init checkpoint's latent prior; both refuse what they cannot do."""
    from gmia.projection.prior import LatentPrior
    from gmia.projection.training import build_networks, synthetic_batch

    src = train_aegan(aegan_config("tiny", kimg=0.008), tiny_data, tmp_path / "src", perceptual=perceptual,
                      progress=False)
    x_all = torch.stack([tiny_data[i]["image"] for i in range(len(tiny_data))])
    LatentPrior.fit(load_aegan(src.checkpoint_dir), x_all).save(src.checkpoint_dir)
    cfg = aegan_config("tiny", kimg=0.016, init_from=str(src.checkpoint_dir), lambda_gan=0.0,
                       train_generator=False, synthetic_fraction=0.5)
    ft = train_aegan(cfg, tiny_data, tmp_path / "ft", perceptual=perceptual, progress=False)
    a, b = load_aegan(src.checkpoint_dir).state_dict(), load_aegan(ft.checkpoint_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("synthesis."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    # the card's source record is read when the run starts: overwriting the init folder later changes nothing
    card_text = (src.checkpoint_dir / "aegan.json").read_text()
    assert '"kimg": 0.008' in card_text
    (src.checkpoint_dir / "aegan.json").write_text(card_text.replace('"kimg": 0.008', '"kimg": 99.0'))
    resumed = train_aegan(aegan_config("tiny", kimg=0.024, init_from=str(src.checkpoint_dir), lambda_gan=0.0,
                                       train_generator=False, synthetic_fraction=0.5),
                          tiny_data, tmp_path / "ft", resume=True, perceptual=perceptual, progress=False)
    source = json.loads((resumed.checkpoint_dir / "aegan.json").read_text())["meta"]["init_from"]
    assert source["kimg"] == pytest.approx(0.008)
    kept = LatentPrior.load(tmp_path / "ft")  # the run's own copy: a resume samples from the same prior
    assert torch.equal(kept.mu, LatentPrior.load(src.checkpoint_dir).mu)

    nets, _ = build_networks(cfg, torch.device("cpu"))
    prior = LatentPrior.load(src.checkpoint_dir)
    x = x_all[:4]
    mixed = synthetic_batch(x, nets, cfg, prior)
    assert mixed.shape == x.shape and torch.equal(mixed[:2], x[:2]) and not torch.equal(mixed[2:], x[2:])
    assert mixed.min() >= 0 and mixed.max() <= 1
    assert torch.equal(synthetic_batch(x, nets, aegan_config("tiny"), None), x)  # fraction 0: the real batch

    with pytest.raises(ConfigError, match="lambda_gan 0"):
        aegan_config("tiny", train_generator=False)  # tiny has lambda_gan 1
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        aegan_config("tiny", synthetic_fraction=1.0)
    with pytest.raises(ConfigError, match="latent prior"):
        train_aegan(aegan_config("tiny", synthetic_fraction=0.5), tiny_data, tmp_path / "bad", perceptual=perceptual,
                    progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything was written


@pytest.mark.parametrize("phantom, flag, expected", [(True, None, "train"), (True, "all", None), (True, "val", "val"),
                                                     (False, None, None)])
def test_train_cli_split_defaults_to_train_on_phantoms_and_to_every_image_of_a_plain_folder(tmp_path, phantom, flag,
                                                                                           expected):
    from click.testing import CliRunner

    from gmia.projection.cli import aegan

    data = tmp_path / "data"
    data.mkdir()
    if phantom:
        (data / "phantom.json").write_text("{}")
    args = ["--preset", "tiny", "--data", str(data), "--out", str(tmp_path / "run"), "--dry-run"]
    result = CliRunner().invoke(aegan, args + (["--split", flag] if flag else []))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["split"] == expected


def test_a_perceptual_term_without_weight_is_refused_not_silently_dropped():
    """The 64-px presets switch the term off with lambda_perc 0; naming a perceptual net must come with a weight."""
    with pytest.raises(ConfigError, match="--lambda-perc"):
        aegan_config("phantom-cxr64", perceptual="mfm")
    assert aegan_config("phantom-cxr64", perceptual="mfm", lambda_perc=1.0).lambda_perc == 1.0

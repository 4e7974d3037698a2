"""The phantom recipes are the shipped weights' recipe: every stage resolves to the settings its card records
(networks and decoupler: the config in the card; stage 1: each leg of the aegan card's ``init_from`` chain, its
command's flags and the kimg it ran; the stage-1 report: the refinement the card's numbers used)."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest

from gmia.errors import ConfigError
from gmia.fit import parse_override, recipe
from gmia.fit.stages import KINDS, FitContext

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
MACHINE = ("device", "threads")


def _ctx(preset):
    stages = recipe(preset)
    return FitContext(preset=preset, out=Path("/nonexistent"), data=None, stages={s.name: s for s in stages})


def _card(preset, name):
    return json.loads((CKPT / preset / f"{name}.json").read_text())


def _legs(meta):
    """The aegan card's legs, oldest first: (command, kimg)."""
    legs = []
    while meta:
        legs.append((meta["command"], meta["kimg"]))
        meta = meta.get("init_from")
    return legs[::-1]


def _flags(command):
    tokens = shlex.split(command)
    tokens = tokens[tokens.index("aegan") + 1:]
    out, i = {}, 0
    while i < len(tokens):
        name = tokens[i].removeprefix("--")
        if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[name], i = tokens[i + 1], i + 2
        else:
            out[name], i = True, i + 1
    return out


@pytest.mark.parametrize("preset", ["phantom-cxr64", "phantom-face64"])
def test_networks_and_decoupler_match_the_shipped_cards(preset):
    ctx = _ctx(preset)
    for stage in recipe(preset):
        if stage.kind == "network":
            recorded = _card(preset, stage.options["role"])["meta"]["config"]
            assert KINDS["network"].config(stage, ctx) == {k: v for k, v in recorded.items() if k not in MACHINE}
        elif stage.kind == "decoupler":
            assert KINDS["decoupler"].config(stage, ctx) == _card(preset, "decoupler")["meta"]["config"]


@pytest.mark.parametrize("preset", ["phantom-cxr64", "phantom-face64"])
def test_stage1_legs_match_the_aegan_card_chain(preset):
    ctx = _ctx(preset)
    meta = _card(preset, "aegan")["meta"]
    legs = _legs(meta)
    stages = [s for s in recipe(preset) if s.kind == "aegan"]
    assert len(stages) == len(legs), [s.name for s in stages]
    for stage, (command, kimg) in zip(stages, legs):
        flags = _flags(command)
        init = stage.options.get("init")
        cfg = KINDS["aegan"].aegan_config(stage, ctx, "x" if init else None)
        assert ("init-from" in flags) == (init is not None), stage.name
        assert cfg.lambda_gan == float(flags.get("lambda-gan", cfg.lambda_gan)), stage.name
        assert ("lambda-gan" in flags) == (cfg.lambda_gan == 0.0), stage.name
        assert cfg.lambda_ssim == float(flags.get("lambda-ssim", 0.0)), stage.name
        assert cfg.batch == int(flags.get("batch", 16)), stage.name
        assert cfg.lr == float(flags.get("lr", 0.0025)), stage.name
        assert cfg.train_generator == ("freeze-generator" not in flags), stage.name
        assert cfg.synthetic_fraction == float(flags.get("synthetic-fraction", 0.0)), stage.name
        assert cfg.grow_encoder == ("grow-encoder" in flags), stage.name
        assert cfg.e_channel_max == (int(flags["e-channel-max"]) if "e-channel-max" in flags else None), stage.name
        assert (stage.options.get("data") == "pool") == ("pool" in flags.get("data", "")), stage.name
        steps = math.ceil(round(cfg.kimg * 1000) / cfg.batch)  # training stops at the first step past kimg
        assert steps * cfg.batch / 1000 == pytest.approx(kimg, abs=1e-6), stage.name
    # the last leg's card holds its whole config: everything but the schedule fields matches
    final = KINDS["aegan"].config(stages[-1], ctx)
    for k, v in meta["config"].items():
        if k not in ("kimg", "init_from", "lpips_weights"):  # the export ran with --kimg 0.001 (card: kimg)
            assert final[k] == v, k


@pytest.mark.parametrize("preset", ["phantom-cxr64", "phantom-face64"])
def test_prior_split_and_report_follow_the_exported_leg(preset):
    stages = {s.name: s for s in recipe(preset)}
    exported = [s.name for s in stages.values() if s.kind == "aegan" and s.export]
    assert len(exported) == 1 and stages["prior"].options["of"] == exported[0]
    # the latent split the preset's re-drawn start needs, of the same model and its prior, as shipped (rank 48)
    assert stages["split"].options["of"] == exported[0] and set(stages["split"].needs) == {exported[0], "prior"}
    assert _card(preset, "latent-split")["kwargs"]["rank"] == 48 == KINDS["split"].config(stages["split"], None)["rank"]
    table = _card(preset, "aegan")["meta"]["metrics"]["test_split"]
    rep = stages["report"].options
    assert (rep["refine_steps"], rep["refine_lr"], rep["refine_space"], rep["lambda_ssim"], rep["limit"]) == \
        (table["refine_steps"], table["refine_lr"], table["refine_space"], table["refine_lambda_ssim"],
         table["test_images"])


def test_variant_and_overrides():
    tiny = {s.name: s for s in recipe("gmia-cxr256", "tiny", {"aegan": {"kimg": 2}, "identity": {"epochs": 3}})}
    assert tiny["aegan"].options["kimg"] == 2 and tiny["aegan"].options["batch"] == 4
    assert tiny["identity"].options["epochs"] == 3 and tiny["identity"].options["widths"] == (8, 16, 16)
    assert [s.name for s in recipe("phantom-cxr64", only=["aegan-ft*"])] == [f"aegan-ft{i}" for i in range(1, 5)]
    assert parse_override("aegan*.batch=32") == ("aegan*", "batch", 32)
    assert parse_override("aegan.perceptual=none") == ("aegan", "perceptual", "none")
    with pytest.raises(ConfigError, match="no stage of the gmia-cxr256 recipe matches"):
        recipe("gmia-cxr256", overrides={"nope": {"x": 1}})
    with pytest.raises(ConfigError, match="expected STAGE.FIELD=VALUE"):
        parse_override("kimg=3")


def test_the_second_utility_network_is_trained_where_stage_2_reads_it():
    from gmia.anonymization.config import PRESETS as STAGE2

    for preset in ("phantom-cxr64", "phantom-face64", "gmia-cxr256"):
        roles = [s.options["role"] for s in recipe(preset) if s.kind == "network"]
        published = not preset.startswith("phantom")
        assert ("utility2" in roles) == (published or STAGE2[preset].lambda_ut2 > 0), preset
    assert "utility2" in [s.options["role"] for s in recipe("phantom-cxr64") if s.kind == "network"]

"""The latent prior's card: written where the prior is fitted or saved, checked wherever it is loaded."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gmia.checkpoints import read_card, sha256_file
from gmia.data.phantoms.writer import write
from gmia.errors import CheckpointError
from gmia.projection.prior import PRIOR_FILE, LatentPrior, fit_prior

from tests.conftest import save_tiny_checkpoints, toy_phantom_set

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


def toy_prior(seed=0, dim=6):
    gen = torch.Generator().manual_seed(seed)
    return LatentPrior(torch.randn(dim, generator=gen), torch.randn(dim, dim, generator=gen), (dim,), images=10)


def test_save_writes_a_card_and_load_checks_it(tmp_path):
    prior = toy_prior()
    path = prior.save(tmp_path, meta={"note": "toy"})
    card = read_card(tmp_path, "latent-prior")
    assert card["class"] == "gmia.projection.LatentPrior" and card["sha256"] == sha256_file(path)
    assert card["kwargs"] == {"shape": [6], "images": 10} and card["meta"] == {"note": "toy"}
    back = LatentPrior.load(tmp_path)
    assert back.sha256 == card["sha256"] and back.shape == (6,) and back.images == 10
    torch.testing.assert_close(back.sample([3]), prior.sample([3]))
    (tmp_path / "copy").mkdir()
    back.save(tmp_path / "copy")  # a run's copy of the prior keeps its provenance
    assert read_card(tmp_path / "copy", "latent-prior")["meta"] == {"note": "toy"}


def test_a_replaced_prior_is_refused(tmp_path):
    toy_prior(0).save(tmp_path)
    other = toy_prior(1)
    save_file({"mu": other.mu.float(), "a": other.a.float()}, str(tmp_path / PRIOR_FILE), metadata={"shape": "6"})
    with pytest.raises(CheckpointError, match=r"latent-prior\.safetensors: sha256 .* does not match its card.*"
                                              r"gmia fit-prior --data DIR --checkpoint"):
        LatentPrior.load(tmp_path)


def test_a_prior_without_card_is_refused(tmp_path):
    toy_prior().save(tmp_path)
    (tmp_path / "latent-prior.json").unlink()
    with pytest.raises(CheckpointError, match=r"latent-prior\.safetensors: its card latent-prior\.json is missing.*"
                                              r"gmia fit-prior --data DIR --checkpoint"):
        LatentPrior.load(tmp_path)


def test_a_card_of_something_else_is_refused(tmp_path):
    toy_prior().save(tmp_path)
    card = json.loads((tmp_path / "latent-prior.json").read_text())
    (tmp_path / "latent-prior.json").write_text(json.dumps({**card, "class": "gmia.projection.AEGAN"}))
    with pytest.raises(CheckpointError, match="not of a latent prior"):
        LatentPrior.load(tmp_path)
    (tmp_path / "latent-prior.json").write_text(json.dumps({**card, "kwargs": {"shape": [7], "images": 10}}))
    with pytest.raises(CheckpointError, match="not a gmia latent prior"):
        LatentPrior.load(tmp_path)


def test_fit_prior_records_what_it_was_fitted_to(tmp_path):
    root = save_tiny_checkpoints(tmp_path / "ckpt", roles=("aegan",))
    folder = root / "phantom-cxr64"
    data = write(toy_phantom_set(patients=2, studies=2, size=64, seed=3), tmp_path / "data")
    fit_prior(folder, data, split="train")
    card = read_card(folder, "latent-prior")
    assert card["meta"]["fitted_to"] == {"aegan_sha256": read_card(folder, "aegan")["sha256"]}
    assert card["meta"]["data"] == {"root": str(data), "split": "train", "images": 2} and card["kwargs"]["images"] == 2
    assert LatentPrior.load(folder).sha256 == sha256_file(folder / PRIOR_FILE)
    card["meta"]["fitted_to"]["aegan_sha256"] = "0" * 64  # as if stage 1 had been retrained since
    (folder / "latent-prior.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="fitted to other weights .aegan changed since.*gmia fit-prior"):
        LatentPrior.load(folder)


@pytest.mark.parametrize("preset", ["phantom-cxr64", "phantom-face64"])
def test_shipped_priors_have_cards_that_match(preset, tmp_path):
    folder = SHIPPED / preset
    prior = LatentPrior.load(folder)
    card = read_card(folder, "latent-prior")
    assert prior.shape == (512,) and prior.images == 2800 and prior.sha256 == sha256_file(folder / PRIOR_FILE)
    assert card["meta"]["fitted_to"]["aegan_sha256"] == read_card(folder, "aegan")["sha256"]
    shutil.copy(folder / PRIOR_FILE, tmp_path / PRIOR_FILE)  # the same file without its card: refused
    with pytest.raises(CheckpointError, match="card latent-prior.json is missing"):
        LatentPrior.load(tmp_path)

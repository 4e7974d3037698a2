"""The re-drawn start: the finding subspace, the edit it defines, its checkpoint, and a run that uses it."""

import json

import numpy as np
import pytest
import torch

from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.anonymization.losses import utility_distance
from gmia.anonymization.redraw import LatentSplit, finding_basis, fit_split
from gmia.checkpoints import FORMAT
from gmia.data.datasets import PhantomFolder
from gmia.errors import CheckpointError
from gmia.projection.prior import LatentPrior


def _card(sha: str) -> str:
    """A weights card naming ``sha`` (what a fitted artefact checks its fitted_to against)."""
    return json.dumps({"format": FORMAT, "class": "x", "kwargs": {}, "sha256": sha})


def test_finding_basis_recovers_the_direction_that_carries_a_finding():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 16, generator=g, dtype=torch.float64)
    labels = (z[:, 3] > 0).double().numpy()[:, None]          # the finding lives on axis 3 only
    basis = finding_basis(z, labels, None, rank=1)
    assert basis.shape == (16, 1)
    assert torch.allclose(basis.T @ basis, torch.eye(1, dtype=torch.float64), atol=1e-9)
    assert abs(float(basis[3, 0])) > 0.95                       # aligned with the finding's axis


def _prior(dim=8):
    g = torch.Generator().manual_seed(1)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) + 3 * torch.eye(dim, dtype=torch.float64)
    return LatentPrior(torch.randn(dim, generator=g, dtype=torch.float64), a, (dim,))


def test_redraw_keeps_the_finding_component_and_takes_the_rest_from_the_surrogate():
    prior = _prior()
    keep = torch.eye(8, dtype=torch.float64)[:, :2]             # whitened axes 0 and 1 are "findings"
    split = LatentSplit(keep)
    g = torch.Generator().manual_seed(2)
    w, w_t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    whiten = lambda v: (v.double() - prior.mu) @ prior.whitening().T  # noqa: E731
    z, z_t, z0 = whiten(w), whiten(w_t), whiten(split.redraw(w, w_t, prior, 1.0))
    assert torch.allclose(z0[:, :2], z[:, :2], atol=1e-4)     # findings: the source's
    assert torch.allclose(z0[:, 2:], z_t[:, 2:], atol=1e-4)   # everything else: the surrogate's
    assert torch.allclose(split.redraw(w, w_t, prior, 0.0), w, atol=1e-5)   # strength 0: the source
    half = whiten(split.redraw(w, w_t, prior, 0.5))
    assert torch.allclose(half[:, 2:], (z[:, 2:] + z_t[:, 2:]) / 2, atol=1e-4)


def test_split_checkpoint_round_trip_and_errors(tmp_path):
    split = LatentSplit(torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))[0])
    split.save(tmp_path, {"note": "test"})
    back = LatentSplit.load(tmp_path)
    assert back.rank == 3 and torch.allclose(back.keep, split.keep, atol=1e-6) and back.sha256
    with pytest.raises(CheckpointError, match="gmia fit-split"):
        LatentSplit.load(tmp_path / "nowhere")
    (tmp_path / "latent-split.safetensors").write_bytes(b"broken")
    with pytest.raises(CheckpointError, match="sha256"):
        LatentSplit.load(tmp_path)


def test_a_split_fitted_to_other_weights_is_refused(tmp_path):
    """Stage 1 retrained into the folder: the split of the old generator's codes is stale, not silently used."""
    (tmp_path / "aegan.json").write_text(_card("a" * 64))
    split = LatentSplit(torch.linalg.qr(torch.randn(8, 3, dtype=torch.float64))[0])
    split.save(tmp_path, {"fitted_to": {"aegan_sha256": "a" * 64}})
    assert LatentSplit.load(tmp_path).rank == 3
    (tmp_path / "aegan.json").write_text(_card("b" * 64))
    with pytest.raises(CheckpointError, match="fitted to other weights .aegan changed since.*gmia fit-split"):
        LatentSplit.load(tmp_path)


def test_findings_utility_is_zero_at_the_source_and_grows_with_a_changed_diagnosis():
    r = torch.tensor([[2.0, -3.0, 0.0]])
    assert float(utility_distance(r.clone(), r, "findings")) == pytest.approx(0.0, abs=1e-6)
    near, far = torch.tensor([[1.5, -3.0, 0.0]]), torch.tensor([[-2.0, 3.0, 0.0]])
    assert 0 < float(utility_distance(near, r, "findings")) < float(utility_distance(far, r, "findings"))


def test_a_redrawn_run_records_the_split_and_moves_further_from_the_source(tiny_checkpoints, phantom_dir, tmp_path):
    folder = tiny_checkpoints / "phantom-cxr64"
    fit_split(folder, phantom_dir, split=None, rank=2)
    ds = PhantomFolder(phantom_dir)
    runs = {}
    for name, redraw in (("plain", 0.0), ("redraw", 1.0)):
        cfg = anonymize_config("phantom-cxr64", margin=0.99, max_steps=1, batch_size=4, redraw=redraw,
                               lambda_surrogate=0.0, patience=0)
        anonymize_dataset(cfg, ds, tmp_path / name, checkpoints=tiny_checkpoints, limit=4, progress=False)
        runs[name] = json.loads((tmp_path / name / "run.json").read_text())
    assert runs["redraw"]["config"]["redraw"] == 1.0
    assert "latent_split" in json.dumps(runs["redraw"]) and "latent_split" not in json.dumps(runs["plain"])
    rows = [json.loads(line) for line in (tmp_path / "redraw" / "manifest.jsonl").read_text().splitlines()]
    plain = [json.loads(line) for line in (tmp_path / "plain" / "manifest.jsonl").read_text().splitlines()]
    assert all(r["status"] == "released" for r in rows)
    # the re-drawn start is another identity: its E_id cosine to the source is lower than the reconstruction's
    assert np.mean([r["cos_id_reconstruction"] for r in rows]) < np.mean([r["cos_id_reconstruction"] for r in plain])

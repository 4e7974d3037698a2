"""The out-of-domain guard: inputs the model cannot represent are withheld (reason out_of_domain, with their
scores), in-domain images of new patients are not, --allow-out-of-domain releases them marked, and the guard's
file is checked against its card. Uses the shipped phantom weights and their calibrated guards."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gmia.anonymization import anonymize_config, anonymize_dataset
from gmia.anonymization.domain import GUARD_NAME, DomainGuard
from gmia.data import open as open_data
from gmia.data import phantoms
from gmia.checkpoints import FORMAT
from gmia.errors import CheckpointError

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


def _save(img: np.ndarray, path: Path) -> None:
    """(C, H, W) floats in [0, 1] → 8-bit PNG."""
    a = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)).save(path)


def _mixed_folder(root: Path, preset_domain: str) -> set[str]:
    """New patients of the preset's own domain (in_*.png) beside foreign images (out_*.png); returns the foreign
    file names."""
    root.mkdir(parents=True)
    other = "face" if preset_domain == "cxr" else "cxr"
    own = phantoms.generate(preset_domain, patients=4, studies=1, size=64, seed=4242).images
    for i, img in enumerate(own):
        _save(img, root / f"in_{i}.png")
    rng = np.random.default_rng(0)
    foreign = {"noise": rng.random((3, 64, 64)), "stripes": np.tile((np.arange(64) // 4 % 2)[None, None], (3, 64, 1)),
               "other_domain": phantoms.generate(other, patients=1, studies=1, size=64, seed=5).images[0],
               "inverted": 1.0 - own[0]}
    for name, img in foreign.items():
        _save(np.asarray(img, dtype=np.float64), root / f"out_{name}.png")
    return {f"out_{name}.png" for name in foreign}


def _rows(out: Path) -> dict[str, dict]:
    link = dict(line.split(",") for line in (out / "private" / "linkage.csv").read_text().splitlines()[1:])
    by_pseudonym = {json.loads(r)["pseudonym"]: json.loads(r) for r in (out / "manifest.jsonl").read_text().splitlines()}
    return {source: by_pseudonym[p] for source, p in link.items()}


def _card(sha: str) -> str:
    """A weights card naming ``sha`` (what a fitted artefact checks its fitted_to against)."""
    return json.dumps({"format": FORMAT, "class": "x", "kwargs": {}, "sha256": sha})


@pytest.mark.slow
@pytest.mark.parametrize("preset,domain", [("phantom-cxr64", "cxr"), ("phantom-face64", "face")])
def test_foreign_images_are_withheld_and_new_patients_are_not(tmp_path, preset, domain):
    if not (SHIPPED / preset / f"{GUARD_NAME}.json").is_file():
        pytest.skip(f"shipped {preset} weights not present")
    foreign = _mixed_folder(tmp_path / "in", domain)
    cfg = dataclasses.replace(anonymize_config(preset), max_steps=60)
    out = tmp_path / "out"
    anonymize_dataset(cfg, open_data(tmp_path / "in", size=64, channels=1 if domain == "cxr" else 3), out,
                      checkpoints=SHIPPED, progress=False, write_linkage=True)
    rows = _rows(out)
    for source, row in rows.items():
        assert set(row["domain"]) == {"reconstruction", "features", "combined"}
        if source in foreign:
            assert row["status"] == "withheld" and row["reason"] == "out_of_domain", (source, row)
        else:
            assert row["reason"] != "out_of_domain", (source, row)
    run = json.loads((out / "run.json").read_text())
    assert run["domain_guard"]["allow_out_of_domain"] is False and run["domain_guard"]["sha256"]

    # overridden, loudly: released and marked with what was out of range
    allowed = tmp_path / "allowed"
    subset = open_data(tmp_path / "in", size=64, channels=1 if domain == "cxr" else 3)
    keep = [i for i, k in enumerate(subset.keys()) if k in {"out_noise.png", "in_0.png"}]
    anonymize_dataset(dataclasses.replace(cfg, margin=1.0), subset.select(keep), allowed, checkpoints=SHIPPED,
                      progress=False, write_linkage=True, allow_out_of_domain=True)
    rows = _rows(allowed)
    assert rows["out_noise.png"]["status"] == "released" and "reconstruction" in rows["out_noise.png"]["out_of_domain_allowed"]
    assert "out_of_domain_allowed" not in rows["in_0.png"]


def test_guard_round_trip_and_a_replaced_file_is_refused(tmp_path):
    g = torch.Generator().manual_seed(0)
    guard = DomainGuard({"features": (torch.randn(4, generator=g), torch.eye(4))},
                        {"reconstruction": 0.1, "features": 1.0, "combined": 2.0},
                        {"reconstruction": [0.05, 0.02], "features": [0.5, 0.2]}, meta={"note": "test"})
    guard.save(tmp_path)
    back = DomainGuard.load(tmp_path)
    assert back.thresholds == guard.thresholds and back.scale == guard.scale and back.sha256
    feats = torch.randn(3, 4, generator=g)
    assert torch.allclose(back.distance("features", feats), guard.distance("features", feats), atol=1e-6)
    scores = {"reconstruction": torch.tensor([0.05, 0.2, 0.05]), "features": torch.tensor([0.5, 0.5, 0.5])}
    scores = back._with_combined(scores)
    assert back.accepts(scores).tolist() == [True, False, True]
    assert "reconstruction 0.2000 > 0.1000" in back.describe(scores, 1)
    (tmp_path / f"{GUARD_NAME}.safetensors").write_bytes(b"not the calibrated file")
    with pytest.raises(CheckpointError, match="does not match its card"):
        DomainGuard.load(tmp_path)


def test_a_guard_calibrated_on_other_weights_is_refused(tmp_path):
    """A new E_ut beside an old guard: its feature Gaussians describe another network, so it is refused."""
    for role in ("aegan", "utility"):
        (tmp_path / f"{role}.json").write_text(_card(role[0] * 64))
    guard = DomainGuard({"features": (torch.zeros(4), torch.eye(4))},
                        {"reconstruction": 0.1, "features": 1.0, "combined": 2.0},
                        {"reconstruction": [0.05, 0.02], "features": [0.5, 0.2]},
                        meta={"fitted_to": {"aegan_sha256": "a" * 64, "utility_sha256": "u" * 64}})
    guard.save(tmp_path)
    assert DomainGuard.load(tmp_path).thresholds == guard.thresholds
    (tmp_path / "utility.json").write_text(_card("v" * 64))
    with pytest.raises(CheckpointError, match="fitted to other weights .utility changed since.*gmia fit-domain"):
        DomainGuard.load(tmp_path)

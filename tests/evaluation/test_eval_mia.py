"""Membership inference: by construction, members lie in the generator's range and non-members do not."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from gmia.evaluation.mia import MIAConfig, attack_metrics, membership_inference, mia_scores


class LinearAE(nn.Module):
    """A toy 'generator' whose range is a 4-D affine subspace: G(w) = mean + U w, E(x) = Uᵀ (x − mean)."""

    img_channels, img_resolution = 1, 16

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        u, _ = torch.linalg.qr(torch.randn(256, 4, generator=g))
        self.register_buffer("u", u)
        self.register_buffer("mean", torch.full((256,), 0.5))
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def encode(self, x):
        return (x.flatten(1) - self.mean) @ self.u

    def synthesize(self, w, noise_mode="const", noise_generator=None):
        return (self.mean + w @ self.u.T).reshape(-1, 1, 16, 16)


def test_attacks_separate_members_by_construction():
    torch.manual_seed(0)
    model = LinearAE()
    members = model.synthesize(torch.randn(40, 4) * 0.5)                  # exactly in the range: error 0
    nonmembers = (members[:40] + 0.05 * torch.randn(40, 1, 16, 16)).clamp(0, 1)  # off the range
    cfg = MIAConfig(samples=256, refine_steps=3, batch_size=32, bootstrap=0)
    s_m, s_n = mia_scores(model, [members, nonmembers], torch.cat([members, nonmembers]), cfg)
    for attack in ("encoder_only", "latent_reconstruction", "nearest_generated", "calibrated_complexity"):
        r = attack_metrics(s_m[attack], s_n[attack])
        assert r["auc"] > 0.9, attack
        assert 0 <= r["tpr_at_0_1pct_fpr"] <= r["tpr_at_1pct_fpr"] <= 1 and r["advantage"] > 0.5


def test_attack_metrics_known_values():
    r = attack_metrics([3, 4, 5], [0, 1, 2])                             # perfectly separated
    assert r["auc"] == 1.0 and r["advantage"] == 1.0 and r["tpr_at_0_fpr"] == 1.0
    r = attack_metrics([0, 1, 2], [3, 4, 5])                             # inverted
    assert r["auc"] == 0.0 and r["tpr_at_1pct_fpr"] == 0.0
    assert r["auc_linkability"] == 1.0 and r["advantage_two_sided"] == 1.0 and r["advantage"] < 1.0
    rng = np.random.default_rng(0)
    r = attack_metrics(rng.random(500), rng.random(500), bootstrap=50)
    lo, hi = r["auc_ci95"]
    assert abs(r["auc"] - 0.5) < 0.06 and lo < r["auc"] < hi and 0.03 < hi - lo < 0.15


def test_membership_inference_writes_json(tmp_path, eval_data, eval_checkpoints):
    cfg = MIAConfig(limit=6, samples=16, refine_steps=1, batch_size=8, bootstrap=5)
    r = membership_inference("phantom-cxr64", eval_data, eval_data, tmp_path, checkpoints=eval_checkpoints,
                             cfg=cfg, device="cpu")
    on_disk = json.loads((tmp_path / "mia.json").read_text())
    assert on_disk["inputs"]["n_members"] == 6 and on_disk["inputs"]["n_nonmembers"] == 6
    assert set(on_disk["attacks"]) >= {"nearest_generated", "latent_reconstruction", "encoder_only",
                                       "calibrated_complexity", "calibrated_encoder"}
    for a in on_disk["attacks"].values():
        assert {"auc", "auc_ci95", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr", "advantage"} <= set(a)
    assert "1000 non-members" in r["note"]


def test_overlapping_members_and_nonmembers_are_refused(tmp_path, eval_data, eval_checkpoints):
    from gmia.errors import InputError

    with pytest.raises(InputError, match="share"):
        membership_inference("phantom-cxr64", eval_data, eval_data, tmp_path, checkpoints=eval_checkpoints,
                             nonmembers_split="train", cfg=MIAConfig(limit=2), device="cpu")


def test_fast_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from gmia.evaluation.privacy import fast_auc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)        # many ties
    assert fast_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(fast_auc(np.ones(5), np.arange(5)))

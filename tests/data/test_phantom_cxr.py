"""The chest X-ray phantom: contract (shapes, dtypes, order), determinism, findings, resolution independence."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gmia.data.phantoms import cxr
from gmia.errors import ConfigError

LESIONS = ("lung_opacity", "atelectasis", "pleural_effusion", "nodule")


@pytest.fixture(scope="module")
def small():
    return cxr.generate(patients=3, studies=2, size=64, seed=5)


def test_contract_shapes_dtypes_ranges(small):
    ps = small
    assert cxr.CHANNELS == 1 and len(cxr.IDENTITY_PARAMS) >= 6
    assert ps.images.shape == (6, 1, 64, 64) and ps.images.dtype == np.float32
    assert 0.0 <= ps.images.min() and ps.images.max() <= 1.0
    assert ps.masks.shape == (6, 1, 64, 64) and ps.masks.dtype == np.uint8
    assert set(np.unique(ps.masks)) <= {0, 1}
    assert ps.patient.tolist() == [0, 0, 1, 1, 2, 2] and ps.study.tolist() == [0, 1, 0, 1, 0, 1]
    assert ps.finding_names == cxr.FINDINGS
    assert all(v.dtype == np.uint8 and v.shape == (6,) and set(np.unique(v)) <= {0, 1} for v in ps.findings.values())
    assert tuple(ps.identity) == cxr.IDENTITY_PARAMS
    assert all(v.dtype == np.float32 and v.shape == (6,) for v in ps.identity.values())
    # a chest film: dark background at the image edge, a brighter body around the centre
    assert ps.images[:, 0, 32, 28:36].mean() > ps.images[:, 0, :, :2].mean() + 0.1


def test_deterministic_and_prefix_stable(small):
    again = cxr.generate(patients=3, studies=2, size=64, seed=5)
    assert again.images.tobytes() == small.images.tobytes() and again.masks.tobytes() == small.masks.tobytes()
    more = cxr.generate(patients=5, studies=2, size=64, seed=5)  # a larger set starts with the smaller one
    assert more.images[:6].tobytes() == small.images.tobytes() and more.masks[:6].tobytes() == small.masks.tobytes()
    for name in cxr.FINDINGS:
        assert np.array_equal(more.findings[name][:6], small.findings[name])
    for name in cxr.IDENTITY_PARAMS:
        assert np.array_equal(more.identity[name][:6], small.identity[name])
    other = cxr.generate(patients=3, studies=2, size=64, seed=6)
    assert not np.array_equal(other.images, small.images)


def test_identity_constant_within_patient_and_varies_across():
    ps = cxr.generate(patients=6, studies=3, size=16, seed=1)
    for name in cxr.IDENTITY_PARAMS:
        values = ps.identity[name].reshape(6, 3)
        assert np.all(values == values[:, :1]), name
    varying = [n for n in cxr.IDENTITY_PARAMS if np.ptp(ps.identity[n]) > 0]
    assert len(varying) >= 20  # the 0/1 mark flags may all be 0 in six patients
    # studies of one patient differ (pose, exposure, noise), even in the pixels
    assert not np.allclose(ps.images[0], ps.images[1], atol=0.05)


def test_findings_prevalence_and_independent_of_patient():
    ps = cxr.generate(patients=50, studies=4, size=32, seed=2)
    labels = ps.labels().reshape(50, 4, -1)
    for j, name in enumerate(cxr.FINDINGS):
        rate = labels[..., j].mean()
        assert abs(rate - cxr.PREVALENCE[name]) < 0.1, (name, rate)
        varies = (labels[..., j].min(1) != labels[..., j].max(1)).mean()
        assert varies > 0.2, (name, varies)  # not a patient trait
    has_lesion = ps.labels()[:, [cxr.FINDINGS.index(n) for n in LESIONS]].any(1)
    assert np.all(ps.masks.reshape(200, -1).any(1) == has_lesion)  # mask is set exactly when a lesion is present


def _one_study(seed=3, patient=1, study=0):
    """A patient and a study with every finding switched off."""
    pat = cxr.draw_patient(seed, patient)
    stu = cxr.draw_study(seed, patient, study, pat)
    stu.update({name: 0.0 for name in cxr.FINDINGS})
    return pat, stu


@pytest.mark.parametrize("name", cxr.FINDINGS)
def test_each_finding_is_visible_where_expected(name):
    pat, base = _one_study()
    with_finding = copy.deepcopy(base) | {name: 1.0}
    images, masks = cxr.render([pat], [base, with_finding], np.array([0, 0]), size=64)
    diff = np.abs(images[1, 0] - images[0, 0])
    assert masks[0].sum() == 0
    assert diff.max() > 0.15, f"{name} barely changes the image (max change {diff.max():.3f})"
    if name in LESIONS:
        mask = torch.from_numpy(masks[1:, :].astype(np.float32))
        near = F.max_pool2d(mask, 5, stride=1, padding=2)[0, 0].numpy() > 0  # mask grown by 2 px
        assert masks[1].sum() > 0
        contrast = diff[masks[1, 0] > 0].mean() / (diff[~near].mean() + 1e-6)
        assert contrast > 5, f"{name}: changes its mask only {contrast:.1f}x more than elsewhere"
        if name != "atelectasis":  # atelectasis also pulls up the dome and shifts the mediastinum (volume loss)
            inside = diff[near].sum() / diff.sum()
            assert inside > 0.8, f"{name}: only {inside:.2f} of the change lies in its mask"
    else:
        assert masks[1].sum() == 0  # devices and cardiomegaly are not lesions


def test_cardiomegaly_enlarges_the_heart():
    pat, base = _one_study()
    base.update(rot=0.0, shift_x=0.0, shift_y=0.0, scale=1.0, noise=0.0)
    images, _ = cxr.render([pat], [base, base | {"cardiomegaly": 1.0}], np.array([0, 0]), size=64)
    rows = images[:, 0, 36:44]  # a band through the heart, below the hila: the heart is its bright middle
    bright = (rows > 0.5 * (rows.max() + rows.min())).sum(-1).mean(-1)
    assert bright[1] > bright[0] * 1.15


def test_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="size >= 8"):
        cxr.generate(patients=1, studies=1, size=4)


def test_renders_at_256_like_at_64():
    big = cxr.generate(patients=1, studies=2, size=256, seed=4)
    small = cxr.generate(patients=1, studies=2, size=64, seed=4)
    assert big.images.shape == (2, 1, 256, 256) and big.masks.shape == (2, 1, 256, 256)
    shrunk = F.avg_pool2d(torch.from_numpy(big.images), 4).numpy()  # same geometry, only finer pixels
    assert np.abs(shrunk - small.images).mean() < 0.04
    for name in cxr.FINDINGS:
        assert np.array_equal(big.findings[name], small.findings[name])

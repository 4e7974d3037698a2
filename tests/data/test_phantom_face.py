"""The face phantom: contract, determinism, findings that are visible where they should be, any resolution."""

import numpy as np
import pytest

from gmia.data.phantoms import face
from gmia.data.phantoms.base import study_rng
from gmia.errors import InputError


@pytest.fixture(scope="module")
def small():
    return face.generate(patients=6, studies=3, size=64, seed=3)


def _one_study(seed, patient, study, size=64, **flags):
    """Merged identity+study row of one study with its findings overridden, and its noise."""
    rng = study_rng(seed, patient, study)
    row = {**face.sample_identity(seed, patient), **face.sample_study(rng)}
    row.update(flags)
    return row, face.sample_noise(rng, size)


def test_shapes_dtypes_ranges(small):
    n = 6 * 3
    assert small.domain == "face"
    assert small.images.shape == (n, face.CHANNELS, 64, 64) and small.images.dtype == np.float32
    assert small.masks.shape == (n, 1, 64, 64) and small.masks.dtype == np.uint8
    assert 0.0 <= small.images.min() and small.images.max() <= 1.0
    assert set(np.unique(small.masks)) <= {0, 1}
    assert small.finding_names == face.FINDINGS
    assert all(v.dtype == np.uint8 and v.shape == (n,) for v in small.findings.values())
    np.testing.assert_array_equal(small.patient, np.repeat(np.arange(6), 3))
    np.testing.assert_array_equal(small.study, np.tile(np.arange(3), 6))


def test_deterministic_and_prefix_stable(small):
    again = face.generate(patients=6, studies=3, size=64, seed=3)
    assert again.images.tobytes() == small.images.tobytes()
    assert again.masks.tobytes() == small.masks.tobytes()
    fewer = face.generate(patients=2, studies=3, size=64, seed=3)  # other batch layout, same patients
    assert fewer.images.tobytes() == small.images[:6].tobytes()
    assert fewer.masks.tobytes() == small.masks[:6].tobytes()
    for k in face.IDENTITY_PARAMS:
        np.testing.assert_array_equal(fewer.identity[k], small.identity[k][:6])
    other_seed = face.generate(patients=2, studies=3, size=64, seed=4)
    assert not np.array_equal(other_seed.images, fewer.images)


def test_identity_params_vary_across_patients_constant_within(small):
    assert len(face.IDENTITY_PARAMS) >= 6
    assert tuple(small.identity) == face.IDENTITY_PARAMS
    for name, values in small.identity.items():
        assert values.dtype == np.float32 and values.shape == (18,)
        per_patient = values.reshape(6, 3)
        assert np.all(per_patient == per_patient[:, :1]), name
        if name != "mole_count":  # a discrete 0..3, may repeat across 6 patients
            assert len(np.unique(per_patient[:, 0])) == 6, name


def test_findings_prevalence_and_not_identity():
    ps = face.generate(patients=50, studies=4, size=16, seed=0)
    for name, y in ps.findings.items():
        assert 0.15 <= y.mean() <= 0.45, (name, y.mean())
        per_patient = y.reshape(50, 4)
        assert np.any(per_patient.min(1) != per_patient.max(1)), name


def test_mask_nonempty_iff_lesion(small):
    area = small.masks.reshape(len(small), -1).sum(1)
    lesion = small.findings["periocular_lesion"].astype(bool)
    assert lesion.any() and (~lesion).any()
    assert np.all(area[~lesion] == 0)
    assert np.all(area[lesion] >= 25)  # a radius of ~3 px or more at 64 px


@pytest.mark.parametrize("finding", ["ptosis", "strabismus", "conjunctival_redness"])
def test_eye_findings_change_only_the_eyes(finding):
    off = {f: 0.0 for f in face.FINDINGS}
    row, noise = _one_study(0, 1, 0, **off)
    images, _ = face.render([row, {**row, finding: 1.0}], np.stack([noise, noise]), 64)
    changed = np.abs(images[1] - images[0]).max(0) > 1e-3  # (S, S)
    assert changed.sum() >= 8, f"{finding} is barely visible"
    ys, xs = np.nonzero(changed)
    pix = np.stack([xs, ys], 1) + 0.5
    centres = (face.eye_centres(row) + 1.0) * 32.0  # (2, 2) in pixels
    dist = np.linalg.norm(pix[:, None, :] - centres[None], axis=2).min(1)
    reach = (row["eye_width"] * 1.2 + 0.06) * row["scale"] * 32.0  # the eye's half-width plus its lids
    assert dist.max() <= reach, f"{finding} changed pixels {dist.max():.1f} px from the eyes (limit {reach:.1f})"


def test_lesion_changes_only_its_mask():
    off = {f: 0.0 for f in face.FINDINGS}
    row, noise = _one_study(0, 2, 1, **off)
    images, masks = face.render([row, {**row, "periocular_lesion": 1.0}], np.stack([noise, noise]), 64)
    assert masks[0].sum() == 0 and masks[1].sum() >= 25
    changed = np.abs(images[1] - images[0]).max(0) > 1e-3
    m = masks[1, 0].astype(bool)
    grown = m.copy()  # the soft edge reaches about one pixel past the mask
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(m, (dy, dx), axis=(0, 1))
    assert changed[m].mean() > 0.95
    assert not np.any(changed & ~grown)


def test_renders_at_256():
    ps = face.generate(patients=1, studies=2, size=256, seed=5)
    assert ps.images.shape == (2, 3, 256, 256) and ps.masks.shape == (2, 1, 256, 256)
    small = face.generate(patients=1, studies=2, size=64, seed=5)
    np.testing.assert_array_equal(ps.findings["periocular_lesion"], small.findings["periocular_lesion"])
    for i in range(2):  # same geometry at any size: mask areas scale with the pixel count
        a256, a64 = int(ps.masks[i].sum()), int(small.masks[i].sum())
        assert (a256 == 0) == (a64 == 0)
        if a64:
            assert 0.8 < a256 / (16 * a64) < 1.25
    down = ps.images.reshape(2, 3, 64, 4, 64, 4).mean((3, 5))
    assert np.abs(down - small.images).mean() < 0.03  # only noise and edge sampling differ


def test_bad_arguments_name_the_value():
    with pytest.raises(InputError, match="patients"):
        face.generate(patients=0, studies=1)
    with pytest.raises(InputError, match="size"):
        face.generate(patients=1, studies=1, size=4)

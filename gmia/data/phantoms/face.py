"""The face phantom: synthetic patients photographed for eye disease (the MeMa setting).

Each patient has fixed identity traits (face shape, skin tone, hair, eyes, brows, nose, mouth, moles); each
study adds pose, lighting, expression, background, clothing, sensor noise and four eye findings drawn
independently of identity. Identity lives in the structure, not in the brightness: the study factors move
and recolour the whole picture, so raw-pixel nearest neighbour re-identifies poorly while a learned
embedder can.

    >>> from gmia.data.phantoms.face import generate
    >>> ps = generate(patients=4, studies=3, size=64, seed=0)
    >>> ps.images.shape, ps.masks.shape, ps.finding_names
    ((12, 3, 64, 64), (12, 1, 64, 64), ('ptosis', 'strabismus', 'conjunctival_redness', 'periocular_lesion'))

Coordinates: an image spans [-1, 1] in x (right) and y (down); the face lives in its own *face units*
(head about 1.5 wide, eyes near v = 0), mapped to the image by the study's pose.

Building blocks, for tests and tools that need one study rendered with a finding switched on or off:

    >>> rng = study_rng(0, 1, 0)
    >>> row = {**sample_identity(0, 1), **sample_study(rng)}
    >>> noise = sample_noise(rng, 64)
    >>> images, masks = render([row, {**row, "ptosis": 1.0}], np.stack([noise, noise]), 64)
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import InputError
from ._face_shapes import DEPTH_EYE, draw_faces
from .base import PhantomSet, patient_rng, study_rng

__all__ = ["FINDINGS", "IDENTITY_PARAMS", "CHANNELS", "PREVALENCE", "generate"]

FINDINGS: tuple[str, ...] = ("ptosis", "strabismus", "conjunctival_redness", "periocular_lesion")
CHANNELS = 3
PREVALENCE = 0.3  # each finding, per study, independently

# Identity traits: name -> (low, high) of the uniform draw, in face units unless said otherwise.
_TRAITS: dict[str, tuple[float, float]] = {
    "face_width": (0.62, 0.78),  # half-width of the face oval
    "face_height": (0.80, 0.90),  # crown to eye line
    "jaw_taper": (0.0, 0.45),  # 0 = round jaw, larger = narrower, pointier chin
    "chin_length": (0.98, 1.12),  # eye line to chin, relative to face_height
    "skin_tone": (0.0, 1.0),  # light -> dark along a skin palette
    "skin_warmth": (-1.0, 1.0),  # pink <-> yellow undertone
    "hair_lightness": (0.0, 1.0),  # black -> blond
    "hair_redness": (0.0, 1.0),
    "hairline": (-0.78, -0.42),  # forehead height (v of the hairline at the midline)
    "hair_volume": (0.02, 0.16),  # how far hair stands off the skull
    "hair_length": (-0.3, 1.1),  # v where hair hanging at the sides ends (< 0: short hair)
    "hair_part": (-0.3, 0.3),  # side sweep of the fringe
    "hair_wave": (0.0, 0.035),  # amplitude of a wavy fringe and hem
    "beard": (0.0, 1.0),  # stubble or beard density; none below 0.75
    "eye_spacing": (0.28, 0.36),  # half the distance between eye centres
    "eye_level": (-0.12, 0.0),
    "eye_width": (0.17, 0.22),  # half-width of the eye opening
    "eye_height": (0.085, 0.115),  # upper-lid height at the centre, fully open
    "eye_tilt": (-0.12, 0.16),  # canthal tilt in radians (outer corner up > 0)
    "iris_hue": (0.0, 1.0),  # blue -> green -> hazel -> brown -> dark
    "iris_size": (0.82, 0.98),  # iris radius relative to eye_height
    "brow_thickness": (0.022, 0.05),
    "brow_arch": (0.0, 0.07),
    "brow_gap": (0.14, 0.22),  # brow above the eye line
    "brow_length": (1.0, 1.35),  # relative to eye_width
    "nose_length": (0.22, 0.34),  # eye line to nose tip
    "nose_width": (0.06, 0.10),
    "mouth_gap": (0.14, 0.22),  # nose tip to lip line
    "mouth_width": (0.16, 0.25),
    "lip_thickness": (0.022, 0.045),
    "ear_size": (0.8, 1.2),
}
IDENTITY_PARAMS: tuple[str, ...] = (*_TRAITS, "mole_count")

_SKIN = ((0.97, 0.83, 0.73), (0.88, 0.68, 0.55), (0.72, 0.52, 0.38), (0.52, 0.35, 0.24), (0.33, 0.21, 0.14))
_HAIR = ((0.06, 0.05, 0.05), (0.22, 0.14, 0.09), (0.45, 0.30, 0.17), (0.75, 0.60, 0.38), (0.92, 0.82, 0.60))
_IRIS = ((0.30, 0.50, 0.72), (0.40, 0.52, 0.42), (0.50, 0.40, 0.20), (0.35, 0.20, 0.10), (0.16, 0.10, 0.07))


def _palette(t: float, stops: tuple[tuple[float, float, float], ...]) -> list[float]:
    """Piecewise-linear colour along ``stops`` at t in [0, 1]."""
    pos = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    w = pos - i
    return [a + w * (b - a) for a, b in zip(stops[i], stops[i + 1])]


def _put_rgb(d: dict[str, float], name: str, rgb: list[float]) -> None:
    for c, val in zip("rgb", rgb):
        d[f"{name}_{c}"] = min(max(val, 0.0), 1.0)


def sample_identity(seed: int, patient: int) -> dict[str, float]:
    """One patient's traits: every ``IDENTITY_PARAMS`` scalar plus derived render values (colours, moles).

    Depends only on (seed, patient) through ``patient_rng``.
    """
    rng = patient_rng(seed, patient)
    t = {name: float(rng.uniform(lo, hi)) for name, (lo, hi) in _TRAITS.items()}
    t["mole_count"] = float(rng.choice(4, p=[0.4, 0.3, 0.2, 0.1]))
    t["wave_phase"] = float(rng.uniform(0.0, 1.0))
    t["beard_alpha"] = 0.6 * min(max((t["beard"] - 0.75) / 0.25, 0.0), 1.0)
    for i in range(3):  # mole spots are drawn for all three so a patient's moles never move
        t[f"mole_u{i}"] = float(rng.uniform(-0.5, 0.5))
        t[f"mole_v{i}"] = float(rng.uniform(-0.35, 0.55))
        t[f"mole_r{i}"] = float(rng.uniform(0.028, 0.045))
    warm = 0.035 * t["skin_warmth"]
    skin = _palette(t["skin_tone"], _SKIN)
    _put_rgb(t, "skin", [skin[0] + warm, skin[1] + 0.3 * warm, skin[2] - warm])
    hair, red = _palette(t["hair_lightness"], _HAIR), t["hair_redness"]
    _put_rgb(t, "hair", [hair[0] * (1.0 + 0.5 * red), hair[1] * (1.0 - 0.1 * red), hair[2] * (1.0 - 0.35 * red)])
    _put_rgb(t, "iris", _palette(t["iris_hue"], _IRIS))
    t["tilt_cos"], t["tilt_sin"] = math.cos(t["eye_tilt"]), math.sin(t["eye_tilt"])
    return t


def sample_study(rng: np.random.Generator) -> dict[str, float]:
    """One study's factors and findings from its ``study_rng``. Finding details (side, amount, lesion shape)
    are drawn whether or not the finding is present, so toggling a flag changes nothing else."""
    U = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    f = {name: float(rng.random() < PREVALENCE) for name in FINDINGS}
    rot = math.radians(U(-10.0, 10.0))
    f.update(rot_cos=math.cos(rot), rot_sin=math.sin(rot), shift_x=U(-0.08, 0.08), shift_y=U(-0.08, 0.08),
             scale=U(0.9, 1.06), yaw=U(-0.25, 0.25))
    az, lz = U(0.0, 2.0 * math.pi), U(0.45, 0.95)
    lxy = math.sqrt(1.0 - lz * lz)
    f.update(light_x=lxy * math.cos(az), light_y=lxy * math.sin(az), light_z=lz, ambient=U(0.45, 0.75),
             exposure=U(0.75, 1.15), temperature=U(-1.0, 1.0))
    f["shadow_side"] = -1.0 if f["light_x"] >= 0 else 1.0
    g, ga = U(0.0, 0.25), U(0.0, 2.0 * math.pi)
    f.update(grad_x=g * math.cos(ga), grad_y=g * math.sin(ga))
    bg1 = [U(0.05, 0.95) for _ in range(3)]
    _put_rgb(f, "bg1", bg1)
    _put_rgb(f, "bg2", [c + U(-0.3, 0.3) for c in bg1])
    bs, ba = U(0.5, 1.5), U(0.0, 2.0 * math.pi)
    f.update(bg_dx=bs * math.cos(ba), bg_dy=bs * math.sin(ba))
    _put_rgb(f, "cloth", [U(0.05, 0.9) for _ in range(3)])
    # Expression: symmetric and milder than any finding.
    f.update(smile=U(0.0, 1.0), brow_raise=U(-0.02, 0.05), eye_open=U(0.82, 1.06), gaze_x=U(-0.1, 0.1),
             gaze_y=U(-0.1, 0.1), pupil=U(0.35, 0.5), noise_sigma=U(0.004, 0.025))
    side = lambda: float(rng.choice([-1.0, 1.0]))  # noqa: E731
    f.update(ptosis_side=side(), ptosis_amount=U(0.4, 0.6))
    f.update(strab_side=side(), strab_dir=side(), strab_amount=U(0.6, 0.9))
    f.update(red_side=float(rng.choice([-1.0, 1.0, 0.0], p=[0.3, 0.3, 0.4])), red_amount=U(0.6, 1.0))
    r = U(0.12, 0.18)
    f.update(lesion_side=side(), lesion_dx=U(-0.5, 0.7), lesion_gap=U(0.0, 0.05), lesion_r=r,
             lesion_tone=U(0.3, 0.85))
    for j in (1, 2):  # two smaller discs overlapping the main one make an irregular outline
        ang, dist = U(0.0, 2.0 * math.pi), U(0.4, 0.8) * r
        f.update({f"lesion{j}_du": dist * math.cos(ang), f"lesion{j}_dv": dist * math.sin(ang),
                  f"lesion{j}_r": U(0.5, 0.8) * r})
    return f


def sample_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(3, S, S) float32 standard normal sensor noise, drawn from the study's generator after its factors."""
    return rng.standard_normal((CHANNELS, size, size), dtype=np.float32)


def render(rows: list[dict[str, float]], noise: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render images from merged identity+study dicts (one per image).

    rows:  B dicts, each ``{**sample_identity(...), **sample_study(...)}`` (flags may be edited).
    noise: (B, 3, S, S) float32.
    Returns images (B, 3, S, S) float32 in [0, 1] and lesion masks (B, 1, S, S) uint8.
    """
    q = {k: np.array([r[k] for r in rows], dtype=np.float32).reshape(-1, 1, 1, 1) for k in rows[0]}
    img, mask = draw_faces(q, np.asarray(noise, dtype=np.float32), size)
    return img.astype(np.float32, copy=False), mask.astype(np.uint8)


def eye_centres(row: dict[str, float]) -> np.ndarray:
    """(2, 2) image coordinates in [-1, 1] (x right, y down) of the left and right eye centres."""
    out = []
    for s in (-1.0, 1.0):
        u, v = s * row["eye_spacing"] + row["yaw"] * DEPTH_EYE, row["eye_level"]
        x = row["scale"] * (row["rot_cos"] * u - row["rot_sin"] * v) + row["shift_x"]
        y = row["scale"] * (row["rot_sin"] * u + row["rot_cos"] * v) + row["shift_y"]
        out.append((x, y))
    return np.array(out)


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise InputError(f"face phantom: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def generate(patients: int, studies: int, size: int = 64, seed: int = 0) -> PhantomSet:
    """Generate ``patients * studies`` face photographs, patient-major (patient 0 studies 0..K-1, then 1, ...).

    Returns a PhantomSet with images (N, 3, S, S) float32 RGB in [0, 1], masks (N, 1, S, S) uint8 (the
    periocular lesion; zeros without one), findings in ``FINDINGS`` order (uint8 0/1) and identity
    ``IDENTITY_PARAMS`` (float32, repeated per study). Byte-identical for the same arguments, and the first
    P patients do not depend on how many more are generated.
    """
    patients, studies = _check_int("patients", patients, 1), _check_int("studies", studies, 1)
    size = _check_int("size", size, 8)
    rows, rngs = [], []
    for p in range(patients):
        ident = sample_identity(seed, p)
        for k in range(studies):
            rngs.append(study_rng(seed, p, k))
            rows.append({**ident, **sample_study(rngs[-1])})
    n = len(rows)
    images = np.empty((n, CHANNELS, size, size), dtype=np.float32)
    masks = np.empty((n, 1, size, size), dtype=np.uint8)
    chunk = max(1, (1 << 20) // (size * size))  # ~1M pixels per batch keeps temporaries small
    for i in range(0, n, chunk):
        noise = np.stack([sample_noise(rng, size) for rng in rngs[i : i + chunk]])  # each rng goes on after its factors
        images[i : i + chunk], masks[i : i + chunk] = render(rows[i : i + chunk], noise, size)
    return PhantomSet(
        domain="face",
        images=images,
        masks=masks,
        patient=np.repeat(np.arange(patients, dtype=np.int64), studies),
        study=np.tile(np.arange(studies, dtype=np.int64), patients),
        findings={f: np.array([r[f] for r in rows], dtype=np.uint8) for f in FINDINGS},
        identity={k: np.array([r[k] for r in rows], dtype=np.float32) for k in IDENTITY_PARAMS},
        meta={"generator": "face", "patients": patients, "studies": studies, "size": size, "seed": int(seed)},
    )

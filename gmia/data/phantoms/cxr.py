"""Synthetic PA chest X-ray phantom: fixed patient anatomy, varying studies, multi-label findings with masks.

    >>> from gmia.data.phantoms import cxr
    >>> ps = cxr.generate(patients=10, studies=4, size=64, seed=0)
    >>> ps.images.shape, ps.masks.shape        # ((40, 1, 64, 64), (40, 1, 64, 64))

Three layers of randomness, each from its own generator (``base.patient_rng`` / ``base.study_rng``):

- identity (per patient, ``IDENTITY_PARAMS``): thorax size and soft tissue, lung outlines (Fourier
  coefficients), heart shape and position, mediastinum and aortic knob, spine (width, scoliosis), clavicles,
  ribs (count, spacing, curvature, thickness), diaphragm domes, bone density, breast shadows, a parenchymal
  vessel texture (a fixed random field that moves with the pose), and for ~15% of patients permanent marks
  (sternal wires, surgical clips, an old rib fracture);
- study: pose (rotation, shift, scale), inspiration depth, exposure (contrast, gamma, offset, heel gradient),
  gastric bubble, noise;
- findings (per study, independent of identity): see ``FINDINGS`` and ``PREVALENCE``.

Rendering evaluates analytic shapes (signed distances with ~1 px soft edges) at the pose-warped pixel grid,
so geometry is resolution independent. Images are rendered in fixed-size chunks below torch's parallel grain:
every op runs on one thread and sees the same tensor shapes whatever the number of patients, which keeps the
output bytes independent of batch layout and thread count (and avoids thread contention on busy machines).
``render`` re-renders edited parameter dicts, e.g. one study with and without a finding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import ConfigError
from ._cxr_shapes import (brightest, fourier_ellipse_sd, nearest_int, pixel_centres, pose_grid, rib_coverage,
                          ring_sd, segment_distance, soft, vessel_lookup, vessel_texture, zeros_as)
from .base import PhantomSet, patient_rng, study_rng

__all__ = ["FINDINGS", "PREVALENCE", "IDENTITY_PARAMS", "CHANNELS", "generate", "draw_patient", "draw_study",
           "render"]

FINDINGS: tuple[str, ...] = ("lung_opacity", "atelectasis", "pleural_effusion", "support_devices",
                             "cardiomegaly", "nodule")
PREVALENCE = {"lung_opacity": 0.30, "atelectasis": 0.25, "pleural_effusion": 0.25, "support_devices": 0.30,
              "cardiomegaly": 0.25, "nodule": 0.20}
IDENTITY_PARAMS: tuple[str, ...] = (
    "thorax_width", "lung_height", "lung_taper", "lung_r_a2", "lung_r_b2", "lung_r_a3", "lung_l_a2",
    "lung_l_b2", "lung_l_a3", "heart_width", "heart_height", "heart_x", "heart_y", "heart_tilt", "heart_shape",
    "mediastinum_width", "aortic_knob", "spine_width", "clavicle_angle", "clavicle_height", "rib_count",
    "rib_spacing", "rib_curvature", "rib_thickness", "dome_right", "dome_left", "dome_curvature",
    "bone_density", "vessel_density", "vessel_scale", "soft_tissue", "breast", "spine_curve", "sternal_wires",
    "surgical_clips", "rib_fracture")
CHANNELS = 1

_CAND = 24  # candidate lesion centres per lesion; the first one inside the visible lung is used


# ----------------------------------------------------------------------------------------------- drawing
def draw_patient(seed: int, p: int) -> dict:
    """One patient's identity: the IDENTITY_PARAMS scalars, mark geometry and the (96, 256) vessel texture."""
    rng = patient_rng(seed, p)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    tw, dome = u(0.66, 0.90), u(0.15, 0.40)
    d = {"thorax_width": tw, "lung_height": u(0.85, 1.18), "lung_taper": u(0.05, 0.25)}
    for side in "rl":
        d.update({f"lung_{side}_a2": u(-0.10, 0.10), f"lung_{side}_b2": u(-0.10, 0.10),
                  f"lung_{side}_a3": u(-0.06, 0.06)})
    d.update(heart_width=u(0.38, 0.50), heart_height=u(0.22, 0.34), heart_x=u(0.04, 0.22),
             heart_y=u(-0.20, 0.0), heart_tilt=u(0.10, 0.70), heart_shape=u(-0.12, 0.12),
             mediastinum_width=u(0.07, 0.15), aortic_knob=u(0.0, 0.07), spine_width=u(0.045, 0.085),
             clavicle_angle=u(-0.25, 0.40), clavicle_height=u(-0.80, -0.50), rib_count=float(rng.integers(9, 12)),
             rib_spacing=u(0.095, 0.145), rib_curvature=u(0.5, 1.2), rib_thickness=u(0.013, 0.030),
             dome_right=dome, dome_left=dome + u(-0.04, 0.14), dome_curvature=u(0.5, 1.3),
             bone_density=u(0.6, 1.4), vessel_density=u(0.4, 1.6), vessel_scale=u(36.0, 72.0),
             soft_tissue=u(0.02, 0.25), breast=u(0.4, 1.0) * (rng.random() < 0.5), spine_curve=u(-0.08, 0.08))
    marks = rng.random(3) < (0.06, 0.06, 0.05)  # sternal wires, surgical clips, old rib fracture
    d.update(sternal_wires=float(marks[0]), surgical_clips=float(marks[1]), rib_fracture=float(marks[2]))
    # ring rows (cx, cy, radius, half thickness, amplitude): wire loops along the sternum
    n_wires = int(rng.integers(3, 7))
    wire_y = np.linspace(-0.45, 0.05, n_wires) + rng.uniform(-0.02, 0.02, n_wires)
    rings = np.zeros((6, 5))
    rings[:n_wires] = [(rng.uniform(-0.02, 0.02), y, 0.026, 0.010, 0.5 * marks[0]) for y in wire_y]
    # segment rows (x0, y0, x1, y1, half width, amplitude): a cluster of clips
    centre = rng.uniform((-0.3, -0.45), (0.3, 0.1))
    segs = np.zeros((4, 6))
    for j in range(int(rng.integers(2, 5))):
        c, a = centre + rng.uniform(-0.08, 0.08, 2), rng.uniform(0, math.pi)
        h = 0.025 * np.array([math.cos(a), math.sin(a)])
        segs[j] = (*(c - h), *(c + h), 0.011, 0.55 * marks[1])
    side, rib = rng.choice((-1.0, 1.0)), float(rng.integers(2, int(d["rib_count"]) - 2))
    d["fracture"] = np.array([marks[2], side, rib, u(0.35, 0.6), u(0.02, 0.03)])
    d["mark_rings"], d["mark_segs"] = rings, segs
    d["texture"] = vessel_texture(rng, d["vessel_scale"])
    return d


def draw_study(seed: int, p: int, k: int, patient: dict) -> dict:
    """One study: pose, inspiration, exposure, finding flags and every finding's geometry (always drawn, so
    toggling a flag changes nothing else — ``render`` honours the flags)."""
    rng = study_rng(seed, p, k)
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    s = {"rot": math.radians(u(-8, 8)), "shift_x": u(-0.12, 0.12), "shift_y": u(-0.12, 0.12),
         "scale": u(0.92, 1.08), "inspiration": u(-1, 1), "contrast": u(0.8, 1.2), "brightness": u(0.0, 0.08),
         "gamma": u(0.75, 1.35), "noise": u(0.005, 0.03), "grad_amp": u(0.0, 0.08),
         "grad_angle": u(0, 2 * math.pi), "bubble": u(0.0, 0.09)}
    flags = rng.random(len(FINDINGS)) < [PREVALENCE[f] for f in FINDINGS]
    s.update({f: float(v) for f, v in zip(FINDINGS, flags)})
    side = lambda n=None: rng.choice((-1.0, 1.0), n)  # noqa: E731  (-1: right lung, on the image left)
    # candidate centres are fractions (across the lung, from apex to dome), resolved against the anatomy later
    s.update(op_cand=rng.uniform((0, 0), (1, 1), (2, _CAND, 2)), op_side=side(2),
             op_radius=rng.uniform(0.14, 0.22, 2), op_coef=rng.uniform(-0.12, 0.12, (2, 4)),
             op_amp=rng.uniform(0.32, 0.42, 2),
             op_active=np.array([1.0, float(rng.random() < 0.4)]))
    s.update(at_cand=rng.uniform((0, 0.45), (0.9, 0.95), (_CAND, 2)), at_side=side(), at_len=u(0.16, 0.24),
             at_thick=u(0.04, 0.06), at_angle=u(-0.35, 0.35))
    s.update(ef_side=rng.choice((-1.0, 0.0, 1.0), p=(0.4, 0.2, 0.4)), ef_height=u(0.14, 0.28),
             ef_meniscus=u(0.08, 0.16), cm_factor=u(1.38, 1.55))
    s.update(nd_cand=rng.uniform((0, 0.1), (1, 0.9), (_CAND, 2)), nd_side=side(), nd_radius=u(0.06, 0.085))
    s["dev_segs"], s["dev_rings"] = _draw_devices(rng, patient["thorax_width"])
    s["noise_seed"] = float(rng.integers(0, 2 ** 24))  # < 2^24: exact in float32
    return s


def _draw_devices(rng: np.random.Generator, tw: float) -> tuple[np.ndarray, np.ndarray]:
    """Tubes and lines as polyline segments (13, 6) and ECG leads as rings (4, 5); amplitude 0 = absent."""
    j = lambda n=2: rng.uniform(-0.03, 0.03, n)  # noqa: E731
    segs, rings = np.zeros((13, 6)), np.zeros((4, 5))
    use = rng.random(4) < (0.65, 0.55, 0.35, 0.55)  # endotracheal tube, central line, nasogastric tube, ECG
    use[0] |= not use.any()
    x0, tip = rng.uniform(-0.02, 0.02), rng.uniform(-0.42, -0.22)
    ett = [(x0 + 0.04, -1.1), (x0, -0.7), (x0 + j(1)[0], tip)]
    side = rng.choice((-1.0, 1.0))
    cvc = [np.array(q) * (side, 1) + j() for q in ((0.6, -0.98), (0.36, -0.72), (0.12, -0.56), (0.04, -0.22))]
    ngt = [np.array(q) + j() for q in ((0.0, -1.1), (0.01, -0.3), (0.06, 0.35), (0.3, 0.55))]
    for i, (line, hw, amp, on) in enumerate(((ett, 0.016, 0.45, use[0]), (cvc, 0.011, 0.45, use[1]),
                                             (ngt, 0.013, 0.40, use[2]))):
        for q in range(len(line) - 1):
            segs[3 * i + q] = (*line[q], *line[q + 1], hw, amp * on)
    n_leads = int(rng.integers(2, 5))
    for q in range(4):
        c = np.array((rng.choice((-1.0, 1.0)) * rng.uniform(0.2, 0.85) * tw, rng.uniform(-0.75, 0.5)))
        on = use[3] and q < n_leads
        rings[q] = (*c, 0.026, 0.014, 0.55 * on)
        end = c + np.array((np.sign(c[0]) * 0.5, rng.uniform(0.1, 0.5)))  # wire runs off laterally
        segs[9 + q] = (*c, *end, 0.007, 0.3 * on)
    return segs, rings


# --------------------------------------------------------------------------------------------- rendering
def _anatomy(t: dict) -> dict:
    """Study-effective anatomy, each (B, 1, 1): the patient's baseline moved by inspiration, cardiomegaly and
    the volume loss of atelectasis."""
    tw, insp = t["thorax_width"], t["inspiration"]
    at_r, at_l = t["atelectasis"] * (t["at_side"] < 0), t["atelectasis"] * (t["at_side"] > 0)
    a = {"shift": 0.025 * (at_l - at_r)}  # the mediastinum is pulled toward a collapsing lung
    a["dome_r"] = t["dome_right"] + 0.05 * insp - 0.06 * at_r
    a["dome_l"] = t["dome_left"] + 0.05 * insp - 0.06 * at_l
    a["cy"] = 0.5 * (t["dome_right"] + t["dome_left"])  # lungs are widest at the (baseline) dome level
    a["apex"] = a["cy"] - t["lung_height"]
    lateral, medial = 0.95 * tw, 0.04
    a["rx"] = 0.5 * (lateral - medial)
    a["cx_r"], a["cx_l"] = -0.5 * (lateral + medial), 0.5 * (lateral + medial)
    grow = 1.0 + t["cardiomegaly"] * (t["cm_factor"] - 1.0)
    base = t["heart_width"] * tw
    a["hw"], a["hh"] = base * grow, t["heart_height"] * (1.0 + 0.5 * (grow - 1.0))
    a["hx"] = t["heart_x"] + a["shift"] + 0.5 * (a["hw"] - base)  # an enlarging heart grows to the patient's left
    a["hy"] = a["cy"] + t["heart_y"] + 0.04 * insp
    a["rib_sp"] = t["rib_spacing"] * (1.0 + 0.05 * insp)
    a["rib_curv"] = t["rib_curvature"] * (1.0 - 0.15 * insp)  # deep inspiration: more horizontal ribs
    a["rib_top"] = a["apex"] + 0.02
    return a


def _lung_sd(t: dict, a: dict, x, y, side: str) -> torch.Tensor:
    """Signed distance to one lung ('r' = patient's right, image left): a Fourier ellipse cut by its dome."""
    cx, k = a[f"cx_{side}"], t["dome_curvature"]
    coef = (t[f"lung_{side}_a2"], t[f"lung_{side}_b2"], t[f"lung_{side}_a3"])
    sd = fourier_ellipse_sd(x, y, cx, a["cy"], a["rx"], t["lung_height"], coef, taper=t["lung_taper"])
    below = (y - a[f"dome_{side}"] - k * (x - cx) ** 2) / torch.hypot(2.0 * k * (x - cx), torch.ones(()))
    return torch.maximum(sd, below)


def _heart_sd(t: dict, a: dict, x, y) -> torch.Tensor:
    """Signed distance to the heart: a tilted ellipse with one squareness term, its lower part behind the dome."""
    return fourier_ellipse_sd(x, y, a["hx"], a["hy"], a["hw"], a["hh"], (t["heart_shape"],), angle=t["heart_tilt"])


def _mediastinum_sd(t: dict, a: dict, x, y) -> torch.Tensor:
    """Superior mediastinum: a midline band down to the heart, with the aortic knob bulging to the image right."""
    mw, knob = t["mediastinum_width"], t["aortic_knob"]
    band = torch.maximum((x - a["shift"]).abs() - mw, y - a["hy"])
    knob = torch.hypot(x - a["shift"] - mw - 0.3 * knob, y - a["apex"] - 0.42) - (0.04 + 0.6 * knob)
    return torch.minimum(band, knob)


def _pick(t: dict, a: dict, cand: torch.Tensor, side: torch.Tensor, margin) -> tuple[torch.Tensor, torch.Tensor]:
    """Resolve candidate fractions (B, M, 2) to the first centre at least ``margin`` inside the visible lung of
    ``side`` (or the deepest one if none is); returns x, y each (B, 1, 1). Fractions run across the lung
    (medial → lateral) and from apex to dome."""
    fx, fy = cand[..., 0:1], cand[..., 1:2]  # (B, M, 1)
    dome = torch.where(side < 0, a["dome_r"], a["dome_l"])
    x = side * (0.1 + fx * (0.88 * t["thorax_width"] - 0.1))
    y = a["apex"] + 0.08 + fy * (dome - a["apex"] - 0.08)
    sd = torch.where(side < 0, _lung_sd(t, a, x, y, "r"), _lung_sd(t, a, x, y, "l"))
    sd = torch.maximum(sd, torch.maximum(-_heart_sd(t, a, x, y), -_mediastinum_sd(t, a, x, y)))
    rank = torch.arange(sd.shape[1], dtype=sd.dtype).view(1, -1, 1) - sd.shape[1]  # -M .. -1
    i = torch.argmin(torch.where(sd < -margin, rank, sd), dim=1, keepdim=True)  # first valid, else the deepest
    return x.gather(1, i), y.gather(1, i)


def _col(v: torch.Tensor, i: int) -> torch.Tensor:
    """Column i of a (B, K, ...) parameter as a (B, 1, 1) scalar."""
    return v[:, i].reshape(-1, 1, 1)


def _anatomy_density(t: dict, a: dict, x, y, px, tex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attenuation of the normal anatomy (B, H, W), additive like X-ray path lengths, and each lung's visible
    coverage (not hidden by heart or mediastinum), where lesions may appear."""
    edge = lambda w: px.clamp(min=w)  # noqa: E731  (anatomical blur, never sharper than a pixel)
    tw, shift = t["thorax_width"], a["shift"]
    half_width = tw + t["soft_tissue"] + 0.04 * y - 1.2 * F.relu(-0.62 - y) ** 2  # skin, sloping to the shoulders
    body = soft(x.abs() - half_width, edge(0.03))
    body_depth = (1.0 - (x / half_width) ** 2).clamp(0.0, 1.0)
    body_depth = body_depth * (2.0 - body_depth)  # ~ the path length through a round chest
    heart, med = soft(_heart_sd(t, a, x, y), edge(0.025)), soft(_mediastinum_sd(t, a, x, y), edge(0.025))
    uncovered = (1.0 - heart) * (1.0 - med)
    sd_r, sd_l = _lung_sd(t, a, x, y, "r"), _lung_sd(t, a, x, y, "l")
    lung_r, lung_l = soft(sd_r, edge(0.03)) * uncovered, soft(sd_l, edge(0.03)) * uncovered
    lung = (lung_r + lung_l).clamp(max=1.0)
    depth = (-torch.minimum(sd_r, sd_l) / 0.15).clamp(0.0, 1.0)
    air = lung * (0.5 + 0.5 * depth * (2.0 - depth))  # less air near the lung edges: rounded look
    k = t["dome_curvature"]
    dome = torch.minimum(a["dome_r"] + k * (x - a["cx_r"]) ** 2, a["dome_l"] + k * (x - a["cx_l"]) ** 2)
    abdomen = soft(dome - y, edge(0.03))
    breasts = 0.0  # soft-tissue shadows over the lung bases (identity "breast" = 0 for half the patients)
    for cx, dome_y in ((a["cx_r"], a["dome_r"]), (a["cx_l"], a["dome_l"])):
        r = 0.25 + 0.1 * t["breast"]
        breasts = breasts + soft(torch.hypot((x - 0.9 * cx) / 1.3, y - dome_y + 0.02) - r, 0.08)

    # bones: posterior ribs (with the old fracture), anterior ribs, clavicles, spine with vertebrae
    f = t["fracture"]
    mid = t["spine_curve"] * (1.0 - y * y)  # the spine's centre line: a mild scoliosis
    ribs, phase = rib_coverage(x, y, mid, a["rib_top"], a["rib_sp"], a["rib_curv"], t["rib_count"],
                               t["rib_thickness"], t["spine_width"] + 0.02, tw + 0.02, px,
                               fracture=(_col(f, 0), _col(f, 1), _col(f, 2), _col(f, 3) * tw, _col(f, 4)))
    ribs = ribs * (0.35 + 0.65 * lung)  # rib edges stand out against air, much less against soft tissue
    v_front = (y - a["rib_top"] - 0.25 - 0.35 * (tw - x.abs())) / (1.1 * a["rib_sp"])  # run down to the midline
    front_ribs = soft((v_front - nearest_int(v_front)).abs() * 1.1 * a["rib_sp"] - 0.02, px)
    front_ribs = front_ribs * ((v_front > -0.5) & (v_front < 5.5)) * soft(0.25 * tw - x.abs(), 0.1) * lung
    uc = x.abs() - 0.06  # along the clavicle, from its sternal end
    tc = uc / (0.62 * tw)
    yc = t["clavicle_height"] - torch.tan(t["clavicle_angle"]) * uc - 0.06 * tc * (1.0 - tc)
    clav = soft(torch.maximum((y - yc).abs() - (0.03 - 0.008 * tc), torch.maximum(-uc, tc - 1.0) * 0.1), px)
    disc = (2.0 * torch.remainder(phase, 1.0) - 1.0).abs()  # 1 at vertebral bodies, 0 at disc spaces
    spine = soft((x - mid).abs() - t["spine_width"], edge(0.015)) * (0.8 + 0.2 * disc)

    # airways and vessels
    carina = a["apex"] + 0.38
    m, c, top = shift.view(-1), carina.view(-1), zeros_as(shift.view(-1)) - 1.2
    airway = zeros_as(x)  # trachea and main bronchi
    for seg, width in (((m, top, m, c), 0.032), ((m, c, m - 0.13, c + 0.12), 0.02),
                       ((m, c, m + 0.13, c + 0.14), 0.02)):
        airway = torch.maximum(airway, soft(segment_distance(x, y, torch.stack(seg, -1)) - width, edge(0.015)))
    hilum_y = carina + 0.2
    d_hila = torch.minimum(torch.hypot(x - shift + 0.19, y - hilum_y), torch.hypot(x - shift - 0.19, y - hilum_y))
    vessels = vessel_lookup(tex, x, y, shift - 0.19, shift + 0.19, hilum_y)
    vessels = vessels * (1.1 - d_hila / 0.8).clamp(0.2, 1.0)  # markings fade toward the periphery
    bubble = torch.hypot(x - a["cx_l"] + 0.05, y - a["dome_l"] - t["bubble"] - 0.03) - t["bubble"]

    D = body * (0.26 + 0.24 * body_depth + 0.05 * t["breast"] * breasts + 0.08 * abdomen
                + 0.08 * heart * (1.0 - abdomen) + 0.05 * med)
    D = D - 0.36 * air - 0.10 * airway * body
    D = D + t["bone_density"] * body * (0.10 * ribs + 0.04 * front_ribs + 0.17 * clav + 0.10 * spine)
    D = D + lung * (0.12 * t["vessel_density"] * vessels + 0.08 * soft(d_hila - 0.06, 0.08))
    D = D - 0.08 * soft(bubble, edge(0.02)) * (t["bubble"] > 0.03)  # gastric air under the left dome
    return D, lung_r, lung_l


def _lesions(t: dict, a: dict, x, y, px, lung_r, lung_l) -> tuple[torch.Tensor, torch.Tensor]:
    """Added attenuation of the lesion findings (B, H, W) and their union mask (bool). A pixel is masked when the
    lesion reaches within half a pixel of its centre, so even a sub-pixel nodule marks one pixel."""
    edge = lambda w: px.clamp(min=w)  # noqa: E731
    D, mask, half_px = zeros_as(x), zeros_as(x) > 0, 0.5 * px
    lung_of = lambda side: torch.where(side < 0, lung_r, lung_l)  # noqa: E731
    for j in range(2):  # lung opacity: one or two soft blobs with irregular outlines
        side, r = _col(t["op_side"], j), _col(t["op_radius"], j)
        cx, cy = _pick(t, a, t["op_cand"][:, j], side, 0.5 * r)
        sd = fourier_ellipse_sd(x, y, cx, cy, r, r, tuple(_col(t["op_coef"][:, j], i) for i in range(4)))
        on, inside = t["lung_opacity"] * _col(t["op_active"], j), lung_of(side)
        D = D + on * _col(t["op_amp"], j) * soft(sd, 0.7 * r) * inside
        mask |= (on > 0) & (sd < half_px) & (inside > 0.5)
    side = t["at_side"]  # atelectasis: a dense sharp plate in the lower zone (+ volume loss in _anatomy)
    cx, cy = _pick(t, a, t["at_cand"], side, 0.06)
    sd = fourier_ellipse_sd(x, y, cx, cy, t["at_len"], t["at_thick"], angle=t["at_angle"] * side)
    inside = lung_of(side)
    D = D + t["atelectasis"] * 0.38 * soft(sd, edge(0.012)) * inside
    mask |= (t["atelectasis"] > 0) & (sd < half_px) & (inside > 0.5)
    for side_value, name, inside in ((-1.0, "r", lung_r), (1.0, "l", lung_l)):  # effusion: meniscus at the base
        on = t["pleural_effusion"] * ((t["ef_side"] == side_value) | (t["ef_side"] == 0))
        lateral = (side_value * (x - a[f"cx_{name}"]) / a["rx"]).clamp(0.0, 1.0)
        depth = y - (a[f"dome_{name}"] - t["ef_height"] - t["ef_meniscus"] * lateral * lateral)
        D = D + on * soft(-depth, edge(0.02)) * inside * (0.24 + 0.12 * (depth / 0.12).clamp(0.0, 1.0))
        mask |= (on > 0) & (depth > -half_px) & (inside > 0.5)
    r = t["nd_radius"]  # nodule: a small round dense spot
    cx, cy = _pick(t, a, t["nd_cand"], t["nd_side"], r + 0.03)
    sd = torch.hypot(x - cx, y - cy) - r
    D = D + t["nodule"] * 0.5 * soft(sd, edge(0.012))
    mask |= (t["nodule"] > 0) & (sd < half_px)
    return D, mask


def _lines_and_rings(t: dict, a: dict, x, y, px) -> torch.Tensor:
    """Added attenuation (B, H, W) of support devices (a finding: tubes, lines, ECG leads) and of the permanent
    marks (identity: sternal wires, clips, the callus of an old rib fracture)."""
    devices, f, tw = t["support_devices"].view(-1, 1), t["fracture"], t["thorax_width"]
    segs = torch.cat([t["dev_segs"], t["mark_segs"]], 1)  # (B, G, 6)
    amp = torch.cat([t["dev_segs"][..., 5] * devices, t["mark_segs"][..., 5]], 1)
    rib_u = _col(f, 3) * tw  # the callus sits on its rib's centre line
    callus_y = a["rib_top"] + _col(f, 2) * a["rib_sp"] + a["rib_curv"] * ((rib_u - 0.25) ** 2 - 0.0625)
    callus = torch.cat([_col(f, 1) * rib_u, callus_y, zeros_as(tw), zeros_as(tw) + 0.028,
                        0.12 * t["bone_density"] * _col(f, 0)], 2).view(-1, 1, 5)
    rings = torch.cat([t["dev_rings"], t["mark_rings"], callus], 1)  # (B, R, 5)
    ring_amp = torch.cat([t["dev_rings"][..., 4] * devices, t["mark_rings"][..., 4], callus[..., 4]], 1)
    line_sd = lambda x, y, s: segment_distance(x, y, s[:, :4]) - s[:, 4, None, None]  # noqa: E731
    return brightest(x, y, segs, amp, line_sd, px) + brightest(x, y, rings, ring_amp, ring_sd, px)


def _render_chunk(t: dict, tex: torch.Tensor, noise: torch.Tensor, size: int,
                  rows: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Render image rows [rows[0], rows[1]) of B studies: ``t`` maps names to (B, 1, 1) scalars or (B, ...)
    arrays, ``tex`` is (B, rows, cols), ``noise`` (B, R, S) standard normal. Returns images (B, R, S) in [0, 1]
    and lesion masks (B, R, S) bool."""
    x, y = pose_grid(size, rows, t["rot"], t["shift_x"], t["shift_y"], t["scale"])
    px = (2.0 / size) / t["scale"]  # one output pixel in canonical units
    a = _anatomy(t)
    D, lung_r, lung_l = _anatomy_density(t, a, x, y, px, tex)
    lesions, mask = _lesions(t, a, x, y, px, lung_r, lung_l)
    D = D + lesions + _lines_and_rings(t, a, x, y, px)
    # exposure: offset, contrast, gamma, heel-effect gradient (detector frame), quantum noise
    ramp = (torch.cos(t["grad_angle"]) * pixel_centres(size).view(1, 1, -1)
            + torch.sin(t["grad_angle"]) * pixel_centres(size, *rows).view(1, -1, 1))
    img = t["brightness"] + t["contrast"] * D.clamp(0.0, 1.0) ** t["gamma"] + t["grad_amp"] * ramp
    return (img + t["noise"] * noise).clamp(0.0, 1.0), mask


def _stack(dicts: list[dict], skip=("texture",)) -> dict[str, np.ndarray]:
    return {k: np.asarray([d[k] for d in dicts], dtype=np.float32) for k in dicts[0] if k not in skip}


def render(patients: list[dict], studies: list[dict], patient_index: np.ndarray,
           size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render ``studies`` (study i belongs to ``patients[patient_index[i]]``) from drawn parameters.

    Returns images (N, 1, S, S) float32 in [0, 1] and lesion masks (N, 1, S, S) uint8. Edit a study dict
    (e.g. set a finding flag to 0) and re-render to see exactly what that factor contributes.
    """
    pat, stu = _stack(patients), _stack(studies)
    tex = np.stack([p["texture"] for p in patients])  # (P, rows, cols)
    # blocks under torch's 32768-element grain: ops stay single-threaded (no contention) and in cache
    n, chunk = len(studies), max(1, 32767 // (size * size))
    band = max(1, 32767 // size) if chunk == 1 else size  # big images: a few rows at a time
    images, masks = np.empty((n, 1, size, size), np.float32), np.empty((n, 1, size, size), np.uint8)
    as_t = lambda v: torch.from_numpy(v).view(-1, 1, 1) if v.ndim == 1 else torch.from_numpy(v)  # noqa: E731
    for start in range(0, n, chunk):
        idx = np.minimum(np.arange(start, start + chunk), n - 1)  # pad by repetition: same shapes every chunk
        pidx = np.asarray(patient_index)[idx]
        t = {k: as_t(v[pidx]) for k, v in pat.items()} | {k: as_t(v[idx]) for k, v in stu.items()}
        noise = np.stack([np.random.default_rng(int(s)).standard_normal((size, size), dtype=np.float32)
                          for s in stu["noise_seed"][idx]])
        m = min(chunk, n - start)
        for r0 in range(0, size, band):
            r1 = min(size, r0 + band)
            img, mask = _render_chunk(t, torch.from_numpy(tex[pidx]), torch.from_numpy(noise[:, r0:r1]), size,
                                      (r0, r1))
            images[start:start + m, 0, r0:r1], masks[start:start + m, 0, r0:r1] = img[:m], mask[:m]
    return images, masks


def generate(patients: int, studies: int, size: int = 64, seed: int = 0) -> PhantomSet:
    """Render ``patients`` × ``studies`` chest phantoms, patient-major, deterministic in ``seed``.

    Returns a PhantomSet: images (N, 1, S, S) float32 in [0, 1]; masks (N, 1, S, S) uint8, the union of the
    study's lesion masks (opacity, atelectasis, effusion, nodule); findings in FINDINGS order (uint8 0/1);
    identity: every IDENTITY_PARAMS scalar per image. A patient depends only on (seed, patient index), a study
    only on (seed, patient, study), so a larger set starts with the smaller one.
    """
    if patients < 1 or studies < 1 or size < 8:
        raise ConfigError(f"cxr phantom needs patients >= 1, studies >= 1, size >= 8; "
                          f"got {patients}, {studies}, {size}")
    pats = [draw_patient(seed, p) for p in range(patients)]
    studs = [draw_study(seed, p, k, pats[p]) for p in range(patients) for k in range(studies)]
    pidx = np.repeat(np.arange(patients, dtype=np.int64), studies)
    images, masks = render(pats, studs, pidx, size)
    findings = {name: np.array([s[name] for s in studs], dtype=np.uint8) for name in FINDINGS}
    identity = {name: np.array([pats[p][name] for p in pidx], dtype=np.float32) for name in IDENTITY_PARAMS}
    return PhantomSet("cxr", images, masks, pidx, np.tile(np.arange(studies, dtype=np.int64), patients),
                      findings, identity)

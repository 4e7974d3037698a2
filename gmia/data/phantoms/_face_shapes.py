"""Drawing for the face phantom: soft implicit shapes on a pixel grid, painted back to front.

Every shape is a signed distance (negative inside) in *face units* (the head is about 1.5 units wide), turned
into a coverage in [0, 1] over about one pixel, so the same geometry renders at any size with antialiased
edges. Only +, -, *, /, sqrt, abs, floor, min/max and clip touch pixels. Those are correctly rounded, so a
pixel's value never depends on how the batch was split into chunks (exp/sin may differ by an ulp between SIMD
and scalar code paths); all trigonometry is done per image on Python floats before rendering.

Plain float32 numpy: single-threaded, so no thread pool to configure and no stalls when the CPU is shared.

Array layout: per-image parameters (B, 1, 1, 1); scalar fields (B, 1, S, S); colours (B, 3, 1, 1);
images (B, 3, S, S).
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw_faces", "DEPTH_EYE"]

Array = np.ndarray  # float32 throughout

# Depth of each feature in front of the head's rotation axis: a small yaw shifts near features further.
DEPTH_EYE, _DEPTH_NOSE, _DEPTH_MOUTH, _DEPTH_SKIN = 0.16, 0.26, 0.18, 0.15
_WAVES = 4.5  # waves per face unit along wavy hair edges
_LESION_RED = (0.68, 0.12, 0.16)  # a vascular lesion colour that contrasts with every skin tone
_SCLERA = (0.94, 0.92, 0.89)
_SCLERA_RED = (0.86, 0.30, 0.30)
_LASH = (0.07, 0.05, 0.05)


def _sq(t: Array) -> Array:
    return t * t


def _rgb(q: dict[str, Array], name: str) -> Array:
    """(B, 3, 1, 1) colour from the per-image scalars ``name_r``, ``name_g``, ``name_b``."""
    return np.concatenate([q[f"{name}_r"], q[f"{name}_g"], q[f"{name}_b"]], axis=1)


def _const(rgb: tuple[float, float, float]) -> Array:
    return np.array(rgb, dtype=np.float32).reshape(1, 3, 1, 1)


def wave(z: Array) -> Array:
    """A smooth wave of period 1 in [-1, 1], a polynomial so no transcendental function touches pixels."""
    r = 2.0 * np.abs(z - np.floor(z) - 0.5)  # a triangle wave in [0, 1] ...
    return 2.0 * r * r * (3.0 - 2.0 * r) - 1.0  # ... smoothed into a sine-like wave


def cover(sdf: Array, width: Array | float) -> Array:
    """Coverage of an implicit shape: 1 inside, 0 outside, a smoothstep ramp ``width`` wide across the edge."""
    t = np.clip(0.5 - sdf / width, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def paint(img: Array, alpha: Array, colour: Array) -> Array:
    """Alpha-composite ``colour`` (B, 3, 1|S, 1|S) over ``img`` (B, 3, S, S) with coverage (B, 1, S, S)."""
    return img + alpha * (colour - img)


def circle(u: Array, v: Array, cu: Array | float, cv: Array | float, r: Array | float) -> Array:
    return np.sqrt(_sq(u - cu) + _sq(v - cv)) - r


def ellipse(du: Array, dv: Array, a: Array, b: Array) -> Array:
    """Approximate signed distance to an axis-aligned ellipse (half-axes a, b) of the centred offsets du, dv."""
    k0 = np.sqrt(_sq(du / a) + _sq(dv / b))
    k1 = np.sqrt(_sq(du / (a * a)) + _sq(dv / (b * b)))
    return k0 * (k0 - 1.0) / (k1 + 1e-6)  # f / |grad f|, exact on the boundary


def box(du: Array, dv: Array, hu: Array | float, hv: Array | float) -> Array:
    """Chebyshev-style distance to a centred box of half-sizes hu, hv (sharp corners; fine for coverage)."""
    return np.maximum(np.abs(du) - hu, np.abs(dv) - hv)


def _head(q: dict[str, Array], u: Array, v: Array, pw: Array, img: Array) -> tuple[Array, Array, Array]:
    """Hair (back), neck, clothes, ears and the face oval. Returns the image, face and head coverage."""
    a, bt = q["face_width"], q["face_height"]
    bb = bt * q["chin_length"]
    vol, skin, hair = q["hair_volume"], _rgb(q, "skin"), _rgb(q, "hair")
    # Long hair hangs behind the neck and shoulders: a cap cut at the hair length, plus a curtain below.
    hem = v - q["hair_length"] - q["hair_wave"] * wave(u * _WAVES + q["wave_phase"])
    hair_cap = np.maximum(ellipse(u, v, a + vol, bt + vol), hem)
    curtain = np.maximum(np.abs(u) - (a + vol), np.maximum(hem, -v))
    back = cover(np.minimum(hair_cap, curtain), pw)
    img = paint(img, back, hair * 0.8)
    img = paint(img, cover(box(u, v - 0.95, 0.33 * a, 0.55), pw), skin * 0.78)  # neck, in the jaw's shadow
    img = paint(img, cover(ellipse(u, v - 1.52, 1.1, 0.55), pw), _rgb(q, "cloth"))
    ear_u = a - 0.02
    ears = np.minimum(ellipse(u - ear_u, v - 0.06, 0.075 * q["ear_size"], 0.15 * q["ear_size"]),
                         ellipse(u + ear_u, v - 0.06, 0.075 * q["ear_size"], 0.15 * q["ear_size"]))
    ear_c = cover(ears, pw)
    img = paint(img, ear_c, skin * 0.86)
    # Face oval: an ellipse on top, a tapered jaw below (the half-width shrinks towards the chin).
    low = np.clip(v / bb, 0.0, 1.0)
    aw = a * (1.0 - q["jaw_taper"] * low * low)
    bh = np.where(v < 0, bt, bb)
    face_sdf = (np.sqrt(_sq(u / aw) + _sq(v / bh)) - 1.0) * np.minimum(aw, bh)
    face = cover(face_sdf, pw)
    img = paint(img, face, skin)
    head = np.maximum(np.maximum(face, back), ear_c)
    return img, face, head


def _skin_marks(q: dict[str, Array], u: Array, v: Array, pw: Array, img: Array, face: Array) -> Array:
    """Cheek blush, moles, beard, nose and mouth: everything painted on the skin below the hairline."""
    skin, yaw, el = _rgb(q, "skin"), q["yaw"], q["eye_level"]
    su = u - yaw * _DEPTH_SKIN
    blush = cover(np.minimum(ellipse(su - q["eye_spacing"], v - el - 0.3, 0.13, 0.08),
                                ellipse(su + q["eye_spacing"], v - el - 0.3, 0.13, 0.08)), 0.15)
    img = paint(img, blush * face * (0.12 + 0.2 * q["smile"]), skin * _const((1.0, 0.72, 0.72)))
    for i in range(3):  # moles: fixed spots per patient, the first ``mole_count`` of three are shown
        on = (q["mole_count"] > i).astype(np.float32)
        mole = cover(circle(su, v, q[f"mole_u{i}"], q[f"mole_v{i}"], q[f"mole_r{i}"]), pw)
        img = paint(img, mole * face * on * 0.9, skin * 0.38)
    # Beard (some patients): moustache and chin below the nose, cheek lines from the sideburns to the
    # mouth corners.
    tip = el + q["nose_length"]
    mw, mv = q["mouth_width"], tip + q["mouth_gap"]
    au = np.abs(u - yaw * _DEPTH_MOUTH)
    side = np.clip((au - mw) / (q["face_width"] - mw), 0.0, 1.0)
    top = np.where(au < mw, tip + 0.045, mv + side * (el + 0.12 - mv))
    img = paint(img, cover(top - v, 0.06) * face * q["beard_alpha"], _rgb(q, "hair") * 0.85)
    # Nose: a shadow along the bridge on the side away from the light, wings, nostrils and a lit tip.
    nu = u - yaw * _DEPTH_NOSE
    bridge = box(nu - q["shadow_side"] * 0.075, v - (el + tip) * 0.5 - 0.03, 0.02, (tip - el) * 0.5 - 0.03)
    img = paint(img, cover(bridge, 0.06) * 0.35, skin * 0.7)
    nw = q["nose_width"]
    wings = np.minimum(ellipse(nu - nw, v - tip + 0.01, 0.05, 0.04), ellipse(nu + nw, v - tip + 0.01, 0.05, 0.04))
    img = paint(img, cover(wings, 0.04) * 0.4, skin * 0.78)
    nostrils = np.minimum(ellipse(nu - 0.55 * nw, v - tip - 0.015, 0.032, 0.017),
                             ellipse(nu + 0.55 * nw, v - tip - 0.015, 0.032, 0.017))
    img = paint(img, cover(nostrils, pw) * 0.85, skin * 0.3)
    img = paint(img, cover(circle(nu, v, 0.0, tip - 0.04, 0.035), 0.05) * 0.3,
                np.minimum(skin * 1.15, 1.0))
    # Mouth: lips between two arcs around a lip line whose corners rise with the smile.
    mw = mw * (1.0 + 0.12 * q["smile"])
    mu = u - yaw * _DEPTH_MOUTH
    t = np.clip(mu / mw, -1.0, 1.0)
    arc = np.sqrt(1.0 - t * t)
    line = mv - q["smile"] * 0.07 * t * t
    up, lo = 0.8 * q["lip_thickness"] * arc, 1.15 * q["lip_thickness"] * arc
    lips = np.maximum(np.abs(v - line - 0.5 * (lo - up)) - 0.5 * (lo + up), np.abs(mu) - mw)
    img = paint(img, cover(lips, pw), skin * _const((0.8, 0.5, 0.5)))
    gap = np.maximum(np.abs(v - line) - (0.008 + 0.018 * q["smile"]) * arc, np.abs(mu) - 0.97 * mw)
    img = paint(img, cover(gap, pw) * 0.85, _const((0.22, 0.07, 0.07)))
    return img


def _hair_front(q: dict[str, Array], u: Array, v: Array, pw: Array, img: Array) -> tuple[Array, Array]:
    """The hair over the forehead: inside the hair cap, above a hairline that drops at the temples."""
    a, vol = q["face_width"], q["hair_volume"]
    hu = u - q["yaw"] * 0.05
    line = q["hairline"] + 0.75 * hu * hu + q["hair_part"] * hu + q["hair_wave"] * wave(hu * _WAVES + q["wave_phase"])
    fringe = cover(np.maximum(ellipse(hu, v, a + vol, q["face_height"] + vol), v - line), pw)
    return paint(img, fringe, _rgb(q, "hair")), fringe


def _lesion(q: dict[str, Array], u: Array, v: Array, pw: Array) -> Array:
    """Coverage (B, 1, S, S) of the periocular lesion: three overlapping discs below one eye."""
    side = q["lesion_side"]
    r = q["lesion_r"]
    cu = side * (q["eye_spacing"] + q["lesion_dx"] * q["eye_width"]) + q["yaw"] * _DEPTH_SKIN
    cv = q["eye_level"] + 0.85 * q["eye_height"] + q["lesion_gap"] + r
    sdf = circle(u, v, cu, cv, r)
    for j in (1, 2):
        sdf = np.minimum(sdf, circle(u, v, cu + q[f"lesion{j}_du"], cv + q[f"lesion{j}_dv"], q[f"lesion{j}_r"]))
    return cover(sdf, pw)


def _brows(q: dict[str, Array], u: Array, v: Array, pw: Array, img: Array) -> tuple[Array, Array]:
    """Two arched brows that taper outwards; the brow raise (expression) lifts both."""
    occ = np.zeros_like(u)
    bl = q["brow_length"] * q["eye_width"]
    for s in (-1.0, 1.0):
        xo = s * (u - q["yaw"] * DEPTH_EYE) - q["eye_spacing"] - 0.02  # outward-positive, brow centred
        t = np.clip(xo / bl, -1.0, 1.0)
        mid = q["eye_level"] - q["brow_gap"] - q["brow_raise"] - q["brow_arch"] * (1.0 - t * t)
        th = q["brow_thickness"] * (1.0 - 0.45 * np.maximum(t, 0.0))
        c = cover(np.maximum(np.abs(v - mid) - th, np.abs(xo) - bl), pw)
        occ = np.maximum(occ, c)
    return paint(img, occ * 0.92, _rgb(q, "hair") * 0.6), occ


def _eyes(q: dict[str, Array], u: Array, v: Array, pw: Array, img: Array) -> tuple[Array, Array]:
    """Both eyes with lids, sclera, iris, pupil and highlight, plus the three eye findings.

    Expression opens or narrows *both* eyes a little; ptosis lowers *one* upper lid over the upper iris;
    strabismus turns one iris in or out; redness tints the sclera of one or both eyes.
    """
    skin, ew0, eh = _rgb(q, "skin"), q["eye_width"], q["eye_height"]
    ri = q["iris_size"] * eh
    occ = np.zeros_like(u)
    for s in (-1.0, 1.0):
        # Local eye frame: x points outwards (mirrored per side), rotated by the canthal tilt.
        xo = s * (u - s * q["eye_spacing"] - q["yaw"] * DEPTH_EYE)
        yo = v - q["eye_level"]
        xr = xo * q["tilt_cos"] - yo * q["tilt_sin"]
        yr = xo * q["tilt_sin"] + yo * q["tilt_cos"]
        ew = ew0 * (1.0 - 0.4 * q["yaw"] * s)  # the far eye is foreshortened
        t = np.clip(xr / ew, -1.0, 1.0)
        arc = 1.0 - t * t
        hu_open = eh * q["eye_open"]
        droop = q["ptosis"] * (q["ptosis_side"] == s).astype(np.float32)
        hu = hu_open + droop * (ri * (1.0 - 2.0 * q["ptosis_amount"]) - hu_open)
        hl = 0.8 * eh * (1.0 - 0.3 * q["smile"])
        upper, lower = -hu * arc, hl * arc
        # Vertical distance to each lid, divided by the lid's slope factor so edges stay ~1 px wide.
        nu = np.sqrt(1.0 + _sq(2.0 * hu * xr / (ew * ew)))
        nl = np.sqrt(1.0 + _sq(2.0 * hl * xr / (ew * ew)))
        opening = cover(np.maximum(np.maximum((upper - yr) / nu, (yr - lower) / nl), np.abs(xr) - ew), pw)
        crease_v = -(hu_open + 0.05) * arc
        lid = np.maximum(np.maximum(crease_v - yr, yr - upper), np.abs(xr) - ew)
        img = paint(img, cover(lid, pw) * 0.45, skin * 0.8)
        crease = np.maximum(np.abs(yr - crease_v) - 0.007, np.abs(xr) - 0.85 * ew)
        img = paint(img, cover(crease, pw) * 0.45, skin * 0.6)
        red_here = q["conjunctival_redness"] * ((q["red_side"] == s) | (q["red_side"] == 0)).astype(np.float32)
        sclera = _const(_SCLERA) + red_here * q["red_amount"] * (_const(_SCLERA_RED) - _const(_SCLERA))
        img = paint(img, opening, sclera * (1.0 - 0.22 * t * t))  # corners sit in shadow
        # Iris: common gaze (expression) plus, on the squinting eye, a large in/out deviation.
        squint = q["strabismus"] * (q["strab_side"] == s).astype(np.float32)
        ix = s * q["gaze_x"] * ew + squint * q["strab_dir"] * q["strab_amount"] * (ew - 0.5 * ri)
        iy = q["gaze_y"] * eh
        d = np.sqrt(_sq(xr - ix) + _sq(yr - iy))
        limbus = 1.0 - 0.45 * np.clip((d / ri - 0.6) / 0.4, 0.0, 1.0)
        img = paint(img, cover(d - ri, pw) * opening, _rgb(q, "iris") * limbus)
        img = paint(img, cover(d - q["pupil"] * ri, pw) * opening, _const((0.03, 0.02, 0.02)))
        hx, hy = ix + 0.4 * ri * s * q["light_x"], iy + 0.4 * ri * q["light_y"]
        glint = cover(np.sqrt(_sq(xr - hx) + _sq(yr - hy)) - 0.22 * ri, pw) * opening
        img = paint(img, glint * 0.85, _const((1.0, 1.0, 1.0)))
        lash_w = 0.013 + 0.01 * np.maximum(t, 0.0)
        lash = cover(np.maximum(np.abs(yr - upper) / nu - lash_w, np.abs(xr) - 1.05 * ew), pw)
        img = paint(img, lash * 0.92, _const(_LASH))
        low_line = cover(np.maximum(np.abs(yr - lower) / nl - 0.006, np.abs(xr) - ew), pw)
        img = paint(img, low_line * 0.4, _const(_LASH))
        occ = np.maximum(occ, np.maximum(opening, lash))
    return img, occ


def _light(q: dict[str, Array], x: Array, y: Array, u: Array, v: Array, img: Array, head: Array) -> Array:
    """Lambert shading of the head as an ellipsoid, then exposure, colour temperature and a light gradient."""
    nx = u / (q["face_width"] + q["hair_volume"])
    ny = v / (q["face_height"] + q["hair_volume"])
    nz = np.sqrt(np.maximum(1.0 - nx * nx - ny * ny, 0.0))
    lambert = np.maximum(nx * q["light_x"] + ny * q["light_y"] + nz * q["light_z"], 0.0)
    amb = q["ambient"]
    shade = 1.0 + head * (amb + (1.0 - amb) * lambert - 1.0)
    temp = q["temperature"] * 0.12
    tint = np.concatenate([1.0 + temp, np.ones_like(temp), 1.0 - temp], axis=1)  # (B, 3, 1, 1) warm <-> cool
    gradient = 1.0 + q["grad_x"] * x + q["grad_y"] * y
    return img * shade * (q["exposure"] * tint) * gradient


def draw_faces(q: dict[str, Array], noise: Array, size: int) -> tuple[Array, Array]:
    """Render B faces from their merged identity + study parameters.

    q:     name -> (B, 1, 1, 1) float32, the identity traits and study factors of each image.
    noise: (B, 3, S, S) float32 standard normal noise (scaled here by ``noise_sigma``).
    Returns images (B, 3, S, S) float32 in [0, 1] and the lesion mask (B, 1, S, S) bool.
    """
    lin = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0  # pixel centres in [-1, 1]
    x, y = lin.reshape(1, 1, 1, size), lin.reshape(1, 1, size, 1)
    # Image -> face coordinates: image = scale * R(rot) * face + shift, inverted.
    dx, dy = x - q["shift_x"], y - q["shift_y"]
    u = (q["rot_cos"] * dx + q["rot_sin"] * dy) / q["scale"]  # (B, 1, S, S)
    v = (q["rot_cos"] * dy - q["rot_sin"] * dx) / q["scale"]
    pw = (2.0 / size) / q["scale"]  # one pixel in face units

    bg1, bg2 = _rgb(q, "bg1"), _rgb(q, "bg2")
    img = bg1 + (bg2 - bg1) * np.clip(0.5 + 0.5 * (x * q["bg_dx"] + y * q["bg_dy"]), 0.0, 1.0)
    img, face, head = _head(q, u, v, pw, img)
    img = _skin_marks(q, u, v, pw, img, face)
    img, fringe = _hair_front(q, u, v, pw, img)
    lesion = _lesion(q, u, v, pw) * q["periocular_lesion"] * face * (1.0 - fringe)
    lesion_col = _rgb(q, "skin") * 0.35 * (1.0 - q["lesion_tone"]) + _const(_LESION_RED) * q["lesion_tone"]
    img = paint(img, lesion * 0.95, lesion_col)
    img, brow = _brows(q, u, v, pw, img)
    img, eyes = _eyes(q, u, v, pw, img)
    img = _light(q, x, y, u, v, img, np.maximum(head, fringe))
    img = np.clip(img + noise * q["noise_sigma"], 0.0, 1.0)
    visible = lesion * (1.0 - brow) * (1.0 - eyes)  # what is left of the lesion after brows and eyes
    return img, visible > 0.5

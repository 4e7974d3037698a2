"""Resolution-independent shape primitives for the chest X-ray phantom (batched torch, plus one numpy texture).

Conventions used throughout:

- Coordinates are normalized: x grows to the image right, y grows *down*, both span [-1, 1] over the image,
  so the image is 2 units wide whatever its pixel size.
- Per-image parameters are float32 tensors of shape (B, 1, 1) that broadcast against coordinate grids (B, H, W).
- A signed distance ``sd`` is negative inside a shape. ``soft`` turns it into a coverage in [0, 1] whose edge is
  ``width`` wide; passing at least one pixel as the width antialiases, so the same code renders 64 and 256 px.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["nearest_int", "zeros_as", "soft", "pixel_centres", "pose_grid", "fourier_ellipse_sd", "segment_distance",
           "ring_sd", "brightest", "rib_coverage", "vessel_texture", "vessel_lookup"]


def nearest_int(v: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer. Written with ``remainder`` because the CPU kernels of torch.round, floor
    and sqrt spawn threads for tensors above 2048 elements (slow on a busy machine); binary ops do not."""
    w = v + 0.5
    return w - torch.remainder(w, 1.0)


def zeros_as(x: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like x, via a multiply: torch's CPU fill kernel spawns threads even for small tensors."""
    return x * 0.0


def soft(sd: torch.Tensor, width: torch.Tensor | float) -> torch.Tensor:
    """Coverage of the region ``sd < 0``: a smoothstep ramp over [-width/2, width/2]."""
    t = (0.5 - sd / width).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def pixel_centres(size: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Normalized coordinates of pixel centres start..stop-1 of a size-pixel axis, (stop - start,)."""
    i = torch.arange(start, size if stop is None else stop, dtype=torch.float32)
    return (i + 0.5) * (2.0 / size) - 1.0


def pose_grid(size: int, rows: tuple[int, int], rot: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
              scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Patient-frame ("canonical") coordinates of the pixel centres in image rows [rows[0], rows[1]), each
    (B, R, S).

    The pose maps canonical points to the image as ``p_img = scale * R(rot) @ p + (tx, ty)``; rendering
    evaluates every shape at the inverse image of the pixel grid, so the warp is exact (no resampling blur).
    """
    dx = (pixel_centres(size).view(1, 1, -1) - tx) / scale
    dy = (pixel_centres(size, *rows).view(1, -1, 1) - ty) / scale
    c, s = torch.cos(rot), torch.sin(rot)
    return c * dx + s * dy, c * dy - s * dx


def fourier_ellipse_sd(x: torch.Tensor, y: torch.Tensor, cx, cy, rx, ry, coef=(), taper=None,
                       angle=None) -> torch.Tensor:
    """Approximate signed distance to an ellipse whose radius is modulated by low Fourier terms.

    Boundary in the ellipse's polar angle θ: ``r(θ) = 1 + a2 cos2θ + b2 sin2θ + a3 cos3θ + b3 sin3θ`` with
    ``coef = (a2, b2, a3, b3)`` (any prefix; each a tensor broadcastable to x). ``taper`` makes the local
    half-width ``rx * (1 + taper * v)`` (v = (y - cy) / ry), i.e. narrow on top and wide at the bottom like a
    lung. ``angle`` rotates the ellipse (radians, clockwise on screen since y points down).
    """
    dx, dy = x - cx, y - cy
    if angle is not None:
        c, s = torch.cos(angle), torch.sin(angle)
        dx, dy = c * dx + s * dy, c * dy - s * dx
    v = dy / ry
    wx = rx if taper is None else rx * (1.0 + taper * v).clamp(min=0.3)
    u = dx / wx
    rho = torch.hypot(u, v).clamp(min=1e-9)
    c, s = u / rho, v / rho
    # cos kθ / sin kθ from the unit vector: no atan2, no trig per pixel
    harmonics = (c * c - s * s, 2.0 * c * s, c * (4.0 * c * c - 3.0), s * (3.0 - 4.0 * s * s))
    r = 1.0
    for k, h in zip(coef, harmonics):
        r = r + k * h
    # rho is in "radii"; the boundary's distance from the centre along this direction converts it to units
    return (rho - r) * torch.hypot(wx * c, ry * s)


def segment_distance(x: torch.Tensor, y: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Distance from every pixel to one segment per image. x, y: (B, H, W); seg: (B, 4) as (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = (seg[:, i, None, None] for i in range(4))  # each (B, 1, 1)
    ex, ey = x1 - x0, y1 - y0
    t = (((x - x0) * ex + (y - y0) * ey) / (ex * ex + ey * ey + 1e-12)).clamp(0.0, 1.0)
    return torch.hypot(x - x0 - t * ex, y - y0 - t * ey)


def ring_sd(x: torch.Tensor, y: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    """Signed distance to one annulus per image. x, y: (B, H, W); ring: (B, 4) as (cx, cy, radius, half
    thickness). A filled disc of radius r is the ring (cx, cy, 0, r)."""
    d = torch.hypot(x - ring[:, 0, None, None], y - ring[:, 1, None, None])
    return (d - ring[:, 2, None, None]).abs() - ring[:, 3, None, None]


def brightest(x: torch.Tensor, y: torch.Tensor, prims: torch.Tensor, amp: torch.Tensor, sd_fn,
              px) -> torch.Tensor:
    """Max over primitives of amplitude × coverage: prims (B, G, K), amp (B, G), ``sd_fn(x, y, prims[:, g])``
    a signed distance → (B, H, W). Each image's primitives in use are moved to the front, so the loop stops
    after the busiest image's count (most slots are empty)."""
    order = torch.from_numpy(np.argsort((amp <= 0).numpy(), axis=1, kind="stable"))
    prims, amp = prims.gather(1, order[..., None].expand_as(prims)), amp.gather(1, order)
    out = zeros_as(x)
    for g in range(int((amp > 0).sum(1).max())):
        out = torch.maximum(out, soft(sd_fn(x, y, prims[:, g]), px) * amp[:, g, None, None])
    return out


def rib_coverage(x, y, mid, top, spacing, curvature, count, thick, u_min, u_max, px,
                 fracture=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior ribs of both sides as one periodic field (no loop over ribs).

    With ``u = |x - mid|`` the distance from the spine's centre line ``mid``, rib n's centre line is
    ``y = top + n * spacing + curvature * ((u - 0.25)^2 - 0.25^2)``: it rises a little from the spine, then
    droops laterally. Ribs exist for u in [u_min, u_max] and n in [0, count).
    ``fracture`` = (active, side, rib, u_f, kink): a gap at u_f in that rib, distal fragment shifted by ``kink``.
    Returns (coverage (B, H, W), rib phase v (B, H, W): fractional rib index, also used for vertebrae).
    """
    u = (x - mid).abs()
    v = (y - top - curvature * ((u - 0.25) ** 2 - 0.0625)) / spacing
    gap = 0.0
    if fracture is not None:
        active, side, rib, u_f, kink = fracture
        on_rib = active * (torch.sign(x - mid) == side) * (nearest_int(v) == rib)
        v = v - on_rib * (u > u_f) * (kink / spacing)
        gap = on_rib * soft((u - u_f).abs() - 0.018, px)
    n = nearest_int(v)
    dist = (v - n).abs() * spacing
    inside = ((n >= 0) & (n < count)).float()
    along = soft(u_min - u, px) * soft(u - u_max, 2.0 * px)
    return soft(dist - thick, px) * inside * along * (1.0 - gap), v


def vessel_texture(rng: np.random.Generator, cycles: float = 56.0, rows: int = 96, cols: int = 256) -> np.ndarray:
    """A patient's fixed vessel markings, (rows, cols) in [0, 1], in polar coordinates around the hila.

    Columns are the angle around a hilum (left half: right lung, right half: left lung), rows the distance from
    it (``vessel_lookup`` reads it). The field is ridged anisotropic noise: the zero crossings of a random field
    that varies fast across angles and slowly along the radius form lines that run outward and branch, like
    vessels; a line spans a fixed angle, and the renderer fades it with distance. ``cycles`` (across both
    lungs' 4π of angle) sets how closely vessels are packed.
    """
    fu = np.fft.fftfreq(cols) * cols  # cycles across the texture's width (two lungs, 2π each)
    fv = np.fft.fftfreq(rows) * rows
    spectrum = np.fft.fft2(rng.standard_normal((rows, cols)))
    band = np.exp(-(((np.abs(fu[None, :]) - cycles) / (0.35 * cycles)) ** 2) - (fv[:, None] / 1.5) ** 2)
    field = np.real(np.fft.ifft2(spectrum * band))
    field /= field.std() + 1e-12
    return np.exp(-((field / 0.3) ** 2)).astype(np.float32)


def vessel_lookup(tex: torch.Tensor, x: torch.Tensor, y: torch.Tensor, hx_r, hx_l, hy,
                  reach: float = 0.9) -> torch.Tensor:
    """Sample ``vessel_texture`` (B, rows, cols) bilinearly at canonical points x, y (B, H, W) → (B, H, W).

    The texture is read at the angle around the nearer hilum (mirrored for the left lung, so both read
    outward the same way) and the distance from it. Plain indexing instead of ``grid_sample``, whose CPU
    kernel always spawns threads.
    """
    rows, cols = tex.shape[1:]
    right = x < 0.5 * (hx_r + hx_l)
    side = torch.where(right, -1.0, 1.0)
    dx, dy = side * (x - torch.where(right, hx_r, hx_l)), y - hy
    u = 0.5 * (torch.atan2(dy, dx) / (2 * math.pi) + 0.5) + 0.25 * (side + 1.0)  # right lung: [0, 0.5]
    v = torch.hypot(dx, dy) / reach
    fu = (u * cols - 0.5).clamp(0.0, cols - 1.0)
    fv = (v * rows - 0.5).clamp(0.0, rows - 1.0)
    wu, wv = torch.remainder(fu, 1.0), torch.remainder(fv, 1.0)
    u0, v0 = (fu - wu).long().numpy(), (fv - wv).long().numpy()
    u1, v1 = np.minimum(u0 + 1, cols - 1), np.minimum(v0 + 1, rows - 1)
    t, b = tex.numpy(), np.arange(tex.shape[0]).reshape(-1, 1, 1)  # numpy gather: single-threaded
    corner = lambda vi, ui: torch.from_numpy(t[b, vi, ui])  # noqa: E731
    top = corner(v0, u0) * (1.0 - wu) + corner(v0, u1) * wu
    bottom = corner(v1, u0) * (1.0 - wu) + corner(v1, u1) * wu
    return top * (1.0 - wv) + bottom * wv

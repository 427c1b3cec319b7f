"""Images of the HTML report and the DICOM key images: candidate tiles and the axial overview montage.

Composed with numpy + Pillow (a few ms per tile); windows are the same for every tile: magnitude and SWI
1-99.5th percentile inside the brain mask, chi +-0.5 ppm, local field +-0.05 ppm (white = paramagnetic /
positive field).  Tiles are world-aligned reformats (axial, coronal, sagittal through the candidate centre,
scanner RAS) of a ``fov_mm`` field of view, radiological convention (patient right on the viewer's left,
anterior up in axial, superior up otherwise, anterior left in sagittal); every panel carries its side
letters (R/L, A/P, S/I) on all four edges.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cmbdetect.physics.geometry import voxel_sizes, world_to_voxel
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.outputs.candidates import Candidate

#: Marker colour of each class (RGB).
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "microbleed": (255, 70, 70), "possible_microbleed": (255, 150, 40), "calcification": (80, 210, 255),
    "vein": (120, 140, 255), "other": (230, 200, 60)}
#: World directions (RAS) of (rows downwards, columns rightwards) of each displayed plane.
PLANES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "axial": ((0, -1, 0), (-1, 0, 0)), "coronal": ((0, 0, -1), (-1, 0, 0)),
    "sagittal": ((0, 0, -1), (0, -1, 0))}
#: Patient direction at the (top, bottom, left, right) edges of each plane.
EDGE_LETTERS: dict[str, tuple[str, str, str, str]] = {"axial": ("A", "P", "R", "L"),
                                                      "coronal": ("S", "I", "R", "L"),
                                                      "sagittal": ("S", "I", "A", "P")}
_LETTER_COLOUR = (120, 200, 255)


@dataclass(frozen=True)
class DisplayWindows:
    """Grey-level windows (low, high) shared by all tiles, in each map's units."""

    magnitude: tuple[float, float]
    swi: tuple[float, float]
    chi_ppm: tuple[float, float]
    field_ppm: tuple[float, float]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _percentiles(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    values = image[mask] if mask.any() else image.ravel()
    values = values[np.isfinite(values)]
    if values.size > 500_000:
        values = values[:: values.size // 500_000]
    lo, hi = (np.percentile(values, (1.0, 99.5)) if values.size else (0.0, 1.0))
    return float(lo), float(hi if hi > lo else lo + 1.0)


def display_windows(maps: PhysicsMaps, *, chi_window_ppm: float = 0.5,
                    field_window_ppm: float = 0.05) -> DisplayWindows:
    """The windows of a report: robust percentiles for magnitude/SWI, symmetric fixed χ and field."""
    return DisplayWindows(_percentiles(maps.magnitude, maps.mask), _percentiles(maps.swi, maps.mask),
                          (-chi_window_ppm, chi_window_ppm), (-field_window_ppm, field_window_ppm))


def _grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    out = np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0
    return np.where(np.isfinite(values), out, 0.0).astype(np.uint8)


def draw_side_letters(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
                      letters: tuple[str, str, str, str], font) -> None:
    """Patient-direction letters (top, bottom, left, right) inside the edges of the panel ``box``
    (x0, y0, x1, y1), outlined in black so they read on any grey."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    kw = {"fill": _LETTER_COLOUR, "font": font, "stroke_width": 1, "stroke_fill": (0, 0, 0)}
    top, bottom, left, right = letters
    size = {t: draw.textbbox((0, 0), t, font=font, stroke_width=1)[2:] for t in letters}  # bitmap fonts: no anchors
    draw.text((cx - size[top][0] / 2, y0 + 1), top, **kw)
    draw.text((cx - size[bottom][0] / 2, y1 - size[bottom][1] - 1), bottom, **kw)
    draw.text((x0 + 2, cy - size[left][1] / 2), left, **kw)
    draw.text((x1 - size[right][0] - 2, cy - size[right][1] / 2), right, **kw)


def slice_number(candidate: Candidate) -> int | None:
    """1-based slice (image) number of the candidate centre along the third voxel axis of the input grid
    (the acquired slice direction of a 2D-ordered series); None when the voxel index is unknown."""
    return int(round(candidate.k)) + 1 if math.isfinite(candidate.k) else None


def _sample_plane(volume: np.ndarray, affine: np.ndarray, centre_ras: np.ndarray, plane: str, *,
                  fov_mm: float, n: int) -> np.ndarray:
    """``n`` x ``n`` world-aligned reformat of ``volume`` (linear interpolation, NaN outside)."""
    rows, cols = (np.asarray(d, float) for d in PLANES[plane])
    offsets = (np.arange(n) - (n - 1) / 2.0) * (fov_mm / n)
    pts = centre_ras + offsets[:, None, None] * rows + offsets[None, :, None] * cols
    vox = world_to_voxel(affine, pts.reshape(-1, 3)).T
    return ndimage.map_coordinates(volume, vox, order=1, mode="constant", cval=np.nan).reshape(n, n)


def render_candidate_tile(maps: PhysicsMaps, candidate: Candidate, *, windows: DisplayWindows,
                          fov_mm: float = 20.0, context_mm: float = 60.0, panel_px: int = 96) -> np.ndarray:
    """RGB uint8 tile of one candidate: rows axial/coronal/sagittal; columns magnitude, SWI, χ, local
    field (``fov_mm`` field of view) and a ``context_mm`` context view (axial: the minimum-intensity
    projection, where veins show as tubes; coronal/sagittal: SWI); a header line with the call and a
    5 mm scale bar.  Yellow ticks point at the centre and leave the lesion itself uncovered."""
    columns = (("magnitude", maps.magnitude, maps.magnitude, windows.magnitude, fov_mm),
               ("SWI", maps.swi, maps.swi, windows.swi, fov_mm),
               (f"chi ±{windows.chi_ppm[1]:g} ppm", maps.chi_ppm, maps.chi_ppm, windows.chi_ppm, fov_mm),
               (f"field ±{windows.field_ppm[1]:g} ppm", maps.local_field_ppm, maps.local_field_ppm,
                windows.field_ppm, fov_mm),
               (f"minIP/SWI {context_mm:g} mm", maps.mip, maps.swi, windows.swi, context_mm))
    label_w, head_h, title_h, gap = 58, 20, 14, 2
    width = label_w + len(columns) * (panel_px + gap)
    height = head_h + title_h + len(PLANES) * (panel_px + gap)
    tile = Image.new("RGB", (width, height), (12, 12, 16))
    draw = ImageDraw.Draw(tile)
    small, big = _font(11), _font(13)
    chi = "n/a" if math.isnan(candidate.susceptibility_ppm) else f"{candidate.susceptibility_ppm:+.2f} ppm"
    if candidate.chi_measured == 0:
        chi = "not measured (rim)"
    p_mb = "n/a" if math.isnan(candidate.p_microbleed) else f"{candidate.p_microbleed:.2f}"
    slice_no = slice_number(candidate)
    draw.text((4, 3), f"#{candidate.id} {candidate.label.replace('_', ' ')}  P(microbleed) {p_mb}  chi {chi}  "
                      f"{candidate.diameter_mm:.1f} mm  slice {slice_no if slice_no else 'n/a'}",
              fill=LABEL_COLOURS.get(candidate.label, (255, 255, 255)), font=big)
    diameter = candidate.diameter_mm if math.isfinite(candidate.diameter_mm) else 3.0
    mid = (panel_px - 1) / 2.0
    for col, (title, *_) in enumerate(columns):
        draw.text((label_w + col * (panel_px + gap) + 2, head_h), title, fill=(200, 200, 200), font=small)
    for row, plane in enumerate(PLANES):
        y0 = head_h + title_h + row * (panel_px + gap)
        draw.text((4, y0 + panel_px // 2 - 6), plane, fill=(200, 200, 200), font=small)
        for col, (_, axial_volume, volume, window, fov) in enumerate(columns):
            x0 = label_w + col * (panel_px + gap)
            source = axial_volume if plane == "axial" else volume
            plane_img = _sample_plane(source, maps.affine, candidate.ras, plane, fov_mm=fov, n=panel_px)
            tile.paste(Image.fromarray(_grey(plane_img, window), "L").convert("RGB"), (x0, y0))
            draw_side_letters(draw, (x0, y0, x0 + panel_px, y0 + panel_px), EDGE_LETTERS[plane], small)
            px_mm = panel_px / fov
            inner = max(2.5, 0.75 * diameter) * px_mm
            outer = inner + max(2.0, 2.5 * px_mm)
            cx, cy = x0 + mid, y0 + mid
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                draw.line([(cx + dx * inner, cy + dy * inner), (cx + dx * outer, cy + dy * outer)],
                          fill=(255, 220, 0), width=1)
        if row == 0:  # 5 mm scale bar in the first panel's top-left corner (the edges carry the side letters)
            px_mm = panel_px / fov_mm
            draw.line([(label_w + 3, y0 + 4), (label_w + 3 + 5 * px_mm, y0 + 4)], fill=(255, 255, 255), width=2)
            draw.text((label_w + 3, y0 + 7), "5 mm", fill=(255, 255, 255), font=small, stroke_width=1,
                      stroke_fill=(0, 0, 0))
    return np.asarray(tile)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an RGB (or grey) uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _axial_view(affine: np.ndarray) -> tuple[int, int, int, bool, bool]:
    """Voxel axes (through-plane, row, column) of the axial montage and whether to flip rows/columns
    so that anterior is up and patient right is on the left."""
    a = np.asarray(affine, float)[:3, :3]
    normal = int(np.argmax(np.abs(a[2])))
    rest = [ax for ax in range(3) if ax != normal]
    col = max(rest, key=lambda ax: abs(a[0, ax]))
    row = rest[0] if col == rest[1] else rest[1]
    return normal, row, col, a[1, row] > 0, a[0, col] > 0


def render_overview(maps: PhysicsMaps, candidates: list[Candidate], *, panel_px: int = 200,
                    max_panels: int = 20) -> np.ndarray:
    """RGB montage of axial minimum-intensity-projection slices (``maps.mip``) across the brain, each
    candidate numbered on the slice nearest its centre."""
    normal, row_ax, col_ax, flip_r, flip_c = _axial_view(maps.affine)
    vox = voxel_sizes(maps.affine)
    occupied = np.nonzero(maps.mask.any(axis=tuple(ax for ax in range(3) if ax != normal)))[0]
    lo, hi = (occupied[0], occupied[-1]) if occupied.size else (0, maps.shape[normal] - 1)
    step = max(1, int(round(8.0 / vox[normal])), int(math.ceil((hi - lo + 1) / max_panels)))
    slices = list(range(lo + step // 2, hi + 1, step)) or [lo]
    window = _percentiles(maps.mip, maps.mask)
    centres = {c.id: world_to_voxel(maps.affine, c.ras) for c in candidates}  # RAS is always present
    scale = panel_px / max(maps.shape[row_ax] * vox[row_ax], maps.shape[col_ax] * vox[col_ax])
    h, w = int(maps.shape[row_ax] * vox[row_ax] * scale), int(maps.shape[col_ax] * vox[col_ax] * scale)
    ncols = min(5, len(slices))
    nrows = math.ceil(len(slices) / ncols)
    canvas = Image.new("RGB", (ncols * (w + 4), nrows * (h + 4)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    for n, s in enumerate(slices):
        img = np.take(maps.mip, s, axis=normal)  # remaining axes in increasing order
        img = img if row_ax < col_ax else img.T
        img = img[::-1] if flip_r else img
        img = img[:, ::-1] if flip_c else img
        x0, y0 = (n % ncols) * (w + 4), (n // ncols) * (h + 4)
        canvas.paste(Image.fromarray(_grey(img, window), "L").resize((w, h)).convert("RGB"), (x0, y0))
        draw.text((x0 + 3, y0 + 2), f"slice {s + 1}", fill=(160, 160, 160), font=font)
        draw_side_letters(draw, (x0, y0, x0 + w, y0 + h), EDGE_LETTERS["axial"], font)
        for c in candidates:
            ijk = centres[c.id]
            if not np.all(np.isfinite(ijk)) or abs(ijk[normal] - s) > step / 2.0:
                continue
            r = ijk[row_ax] * vox[row_ax] * scale
            q = ijk[col_ax] * vox[col_ax] * scale
            r, q = (h - 1 - r if flip_r else r), (w - 1 - q if flip_c else q)
            colour = LABEL_COLOURS.get(c.label, (255, 255, 255))
            rad = max(8.0, (c.diameter_mm if math.isfinite(c.diameter_mm) else 3.0) * scale + 5.0)
            draw.ellipse([x0 + q - rad, y0 + r - rad, x0 + q + rad, y0 + r + rad], outline=colour, width=1)
            draw.text((x0 + q + rad, y0 + r - rad - 10), str(c.id), fill=colour, font=font)
    return np.asarray(canvas)

"""Self-contained HTML report for a reader: overview, one image tile per candidate, table, provenance.

Everything is inline (PNG as base64 ``data:`` URIs, CSS in a ``<style>`` block, no scripts, no external
links), so the file can be mailed or archived alone.  Images are composed with numpy + Pillow (fast:
a few ms per tile); windows are the same for every tile: magnitude and SWI 1-99.5th percentile inside
the brain mask, χ ±0.5 ppm, local field ±0.05 ppm (white = paramagnetic / positive field).

Tiles are world-aligned reformats (axial, coronal, sagittal through the candidate centre, scanner RAS)
of a ``fov_mm`` field of view, radiological convention (patient right on the viewer's left, anterior
up in axial, superior up otherwise, anterior left in sagittal).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from cmbdetect.physics.geometry import voxel_sizes, world_to_voxel
from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.atomic import write_text
from cmbdetect.pipeline.candidates import Candidate, reportable
from cmbdetect.pipeline.regions import REGIONS, brain_geometry

#: Marker colour of each class (RGB).
LABEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "microbleed": (255, 70, 70), "calcification": (80, 210, 255), "vein": (120, 140, 255),
    "other": (230, 200, 60)}
#: World directions (RAS) of (rows downwards, columns rightwards) of each displayed plane.
PLANES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "axial": ((0, -1, 0), (-1, 0, 0)), "coronal": ((0, 0, -1), (-1, 0, 0)),
    "sagittal": ((0, 0, -1), (0, -1, 0))}
#: Patient direction at the (top, left) edge of each plane.
_EDGE_LETTERS: dict[str, tuple[str, str]] = {"axial": ("A", "R"), "coronal": ("S", "R"),
                                             "sagittal": ("S", "A")}


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
    draw.text((4, 3), f"#{candidate.id} {candidate.label} p={candidate.probability:.2f}  chi {chi}  "
                      f"{candidate.diameter_mm:.1f} mm  {candidate.region}  review {candidate.review_priority}",
              fill=LABEL_COLOURS.get(candidate.label, (255, 255, 255)), font=big)
    diameter = candidate.diameter_mm if math.isfinite(candidate.diameter_mm) else 3.0
    mid = (panel_px - 1) / 2.0
    for col, (title, *_) in enumerate(columns):
        draw.text((label_w + col * (panel_px + gap) + 2, head_h), title, fill=(200, 200, 200), font=small)
    for row, plane in enumerate(PLANES):
        y0 = head_h + title_h + row * (panel_px + gap)
        draw.text((4, y0 + panel_px // 2 - 6), plane, fill=(200, 200, 200), font=small)
        top, left = _EDGE_LETTERS[plane]
        draw.text((label_w - 10, y0 + panel_px // 2 - 6), left, fill=(120, 200, 255), font=small,
                  stroke_width=1, stroke_fill=(0, 0, 0))
        for col, (_, axial_volume, volume, window, fov) in enumerate(columns):
            x0 = label_w + col * (panel_px + gap)
            source = axial_volume if plane == "axial" else volume
            plane_img = _sample_plane(source, maps.affine, candidate.ras, plane, fov_mm=fov, n=panel_px)
            tile.paste(Image.fromarray(_grey(plane_img, window), "L").convert("RGB"), (x0, y0))
            if col == 0:
                draw.text((x0 + panel_px // 2 - 3, y0), top, fill=(120, 200, 255), font=small,
                          stroke_width=1, stroke_fill=(0, 0, 0))
            px_mm = panel_px / fov
            inner = max(2.5, 0.75 * diameter) * px_mm
            outer = inner + max(2.0, 2.5 * px_mm)
            cx, cy = x0 + mid, y0 + mid
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                draw.line([(cx + dx * inner, cy + dy * inner), (cx + dx * outer, cy + dy * outer)],
                          fill=(255, 220, 0), width=1)
        if row == 0:  # 5 mm scale bar in the first panel
            px_mm = panel_px / fov_mm
            draw.line([(label_w + 4, y0 + panel_px - 5), (label_w + 4 + 5 * px_mm, y0 + panel_px - 5)],
                      fill=(255, 255, 255), width=2)
            draw.text((label_w + 6 + 5 * px_mm, y0 + panel_px - 12), "5 mm", fill=(255, 255, 255), font=small)
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
        draw.text((x0 + 3, y0 + 2), f"slice {s}", fill=(160, 160, 160), font=font)
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


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee}td.t{text-align:left;max-width:60em;overflow-wrap:anywhere}
.warn{background:#fff4d6;border-left:4px solid #e0a000;padding:.3em .8em}
.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;background:#111;padding:4px;color:#ddd}
figcaption{font-size:.8em;padding-top:3px}.note{color:#666;font-size:.85em}
"""


def _img(rgb: np.ndarray, alt: str, attrs: str = "") -> str:
    data = base64.b64encode(png_bytes(rgb)).decode("ascii")
    return f'<img {attrs}alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _kv_table(items: dict) -> str:
    rows = "".join(f'<tr><td class="t">{html.escape(str(k))}</td><td class="t">'
                   f'{html.escape(v if isinstance(v, str) else json.dumps(v, default=str))}</td></tr>'
                   for k, v in items.items())
    return f"<table>{rows}</table>" if rows else '<p class="note">none recorded</p>'


def _candidate_table(candidates: list[Candidate]) -> str:
    cols = [("id", "id", 0), ("label", "label", 0), ("probability", "p", 3), ("susceptibility_ppm", "χ ppm", 3),
            ("diameter_mm", "Ø mm", 1), ("volume_mm3", "vol mm³", 1), ("region", "region", 0),
            ("review_priority", "review", 0), ("x", "x RAS", 1), ("y", "y RAS", 1), ("z", "z RAS", 1),
            ("score", "score", 3), ("uncertainty", "uncert.", 3)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in cols)
    body = "".join("<tr>" + "".join(f'<td{" class=t" if d == 0 else ""}>{_fmt(getattr(c, a), d)}</td>'
                                    for a, _, d in cols) + "</tr>" for c in candidates)
    return f"<table><tr>{head}</tr>{body}</table>"


def calls_withheld_banner(maps: PhysicsMaps) -> str:
    """HTML banner "No microbleed calls: <reasons>" when the maps' acquisition fitness or chi quality check
    withheld the microbleed calls (``maps.meta["calls_withheld"]``, see ``physics.chain``), else ``""``."""
    reason = (maps.meta or {}).get("calls_withheld")
    if not reason:
        return ""
    return (f'<p class="warn" data-calls-withheld="1"><b>No microbleed calls</b>: {html.escape(str(reason))}. '
            "The maps are shown for reading; no candidate is labelled microbleed.</p>")


def write_report(path, *, maps: PhysicsMaps, candidates: list[Candidate], settings: dict,
                 warnings: list[str], model_info: dict, max_gallery: int = 100, fov_mm: float = 20.0,
                 title: str = "cmbdetect report") -> Path:
    """Write the HTML report to ``path`` atomically; returns the path.

    ``settings``: processing options shown as given; ``warnings``: lines shown prominently;
    ``model_info``: at least ``name``, ``version``, ``sha256``.  The overview and the gallery show the
    :func:`~cmbdetect.pipeline.candidates.reportable` candidates (the gallery at most ``max_gallery``, in
    table order), each gallery ``<img>`` carrying ``data-candidate="<id>"``; the table lists all of them.
    """
    windows = display_windows(maps)
    counts = {label: sum(c.label == label for c in candidates) for label in LABEL_COLOURS}
    summary = ", ".join(f"{n} {label}" for label, n in counts.items() if n) or "no candidates"
    by_region = {r: sum(c.label == "microbleed" and c.region == r for c in candidates) for r in REGIONS}
    mars = ", ".join(f"{r} {n}" for r, n in by_region.items() if n) or "none"
    if any(c.region == "unknown" for c in candidates):
        geometry = brain_geometry(maps.mask, maps.affine)
        mars += (f" (region unknown: {geometry.reason})" if not geometry.usable else
                 " (unknown = centre outside the brain mask or in the low part of a slab cut at both ends)")
    shown_all = reportable(candidates)  # stage-2 rejects ("other") stay in the table only
    shown = shown_all[:max_gallery]  # candidates come ordered: microbleeds first, by probability
    tiles = []
    for c in shown:
        tile = render_candidate_tile(maps, c, windows=windows, fov_mm=fov_mm)
        attrs = f'data-candidate="{c.id}" '
        tiles.append(f'<figure>{_img(tile, f"candidate {c.id}", attrs)}'
                     f"<figcaption>#{c.id} {html.escape(c.label)} p={c.probability:.2f}, "
                     f"{html.escape(c.region)}, review priority {c.review_priority}</figcaption></figure>")
    rejected = len(candidates) - len(shown_all)
    cap_note = (f'<p class="note">Gallery and overview show the {len(shown)} candidates not rejected by the '
                f"false-positive classifier (microbleeds first){'' if len(shown) == len(shown_all) else f', limited to {len(shown)} of {len(shown_all)}'}; "
                f"{rejected} candidates labelled 'other' are in the table and candidates.tsv only.</p>"
                if len(shown) < len(candidates) else "")
    warn = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings) or '<p class="note">none</p>'
    legend = " ".join(f'<span style="color:rgb{col}">●</span> {label}' for label, col in LABEL_COLOURS.items())
    model = {k: model_info.get(k, "n/a") for k in ("name", "version", "sha256")}
    model.update({k: v for k, v in model_info.items() if k not in model})
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><h1>{html.escape(title)}</h1>
{calls_withheld_banner(maps)}
<p><b>{len(candidates)} candidates</b>: {html.escape(summary)}. Microbleed candidates by MARS region
(geometric heuristic, no atlas): {html.escape(mars)}.</p><p>Research software: every candidate needs a
reader's confirmation; absence of a candidate does not exclude a microbleed.</p>
<h2>Warnings</h2>{warn}
<h2>Overview (minimum-intensity projection of SWI, axial slabs)</h2>
<p class="note">{legend}. Numbers are candidate ids; patient right on the viewer's left.</p>
{_img(render_overview(maps, shown_all), "overview")}
<h2>Candidates</h2>{_candidate_table(candidates) if candidates else '<p>No candidates were found.</p>'}
<h2>Gallery</h2>
<p class="note">Rows axial, coronal, sagittal (radiological); columns magnitude, SWI, χ (white =
paramagnetic), local field ({fov_mm:g} mm field of view), then a 60 mm context view (axial: minimum-intensity
projection, where veins run as tubes; coronal/sagittal: SWI); yellow ticks point at the candidate centre.</p>
{cap_note}<div class="gallery">{''.join(tiles)}</div>
<h2>Model</h2>{_kv_table(model)}
<h2>Settings</h2>{_kv_table(settings)}
</body></html>
"""
    return write_text(doc, Path(path))

"""Self-contained HTML report, laid out the way a neuroradiologist reads it.

Top to bottom: who (patient name / ID, study date, series, acquisition; subject and input files for NIfTI /
BIDS), any warning that withholds microbleed calls (acquisition fitness), the summary in MARS and BOMBS terms
with linked ids, the reader's list as a table (each id links to its tile), a short legend (probability,
uncertainty, review order, the list's floor), the gallery (one tile per listed candidate, with accept /
reject / relabel controls and a contrast control, :mod:`pipeline.report_review`), the axial overview, then
settings and model as tables (the full records as JSON in collapsed provenance blocks).

Everything is inline (PNG as base64 ``data:`` URIs, CSS and one short script in the page, no network, no
external links), so the file can be mailed or archived alone.  Images: :mod:`pipeline.report_images`.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import numpy as np

from cmbdetect.physics.maps import PhysicsMaps
from cmbdetect.pipeline.io.atomic import write_text
from cmbdetect.pipeline.outputs.candidates import (MIMIC_LIST_FLOOR_P_MICROBLEED, REVIEW_ORDER_RULE, Candidate,
                                           reader_candidates)
from cmbdetect.pipeline.outputs.regions import brain_geometry
from cmbdetect.pipeline.outputs.report_images import (LABEL_COLOURS, DisplayWindows, display_windows,  # noqa: F401
                                              png_bytes, render_candidate_tile, render_overview, slice_number)
from cmbdetect.pipeline.outputs.report_review import (CSS as REVIEW_CSS, decision_controls, figure_attrs, script_html,
                                              toolbar_html)
from cmbdetect.pipeline.outputs.report_summary import bombs_table, headline, mars_table

_CSS = """
body{font-family:system-ui,sans-serif;margin:0 1.5em 1.5em;background:#fafafa;color:#222}
h1{font-size:1.35em;margin:.5em 0 .2em}h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee}td.t,th.t{text-align:left;max-width:60em;overflow-wrap:anywhere}td.n0{color:#aaa}
.ident{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:2px 14px;background:#e8eef6;
 border:1px solid #9ab;padding:.5em .9em;font-size:.95em}.ident b{font-size:1.05em}.ident span{color:#456}
.warn{background:#fff4d6;border-left:4px solid #e0a000;padding:.3em .8em}
.stop{background:#fde2e2;border-left:6px solid #c00;padding:.4em .9em;font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;background:#111;padding:4px;color:#ddd;width:min-content}
figcaption{font-size:.85em;padding-top:3px}.note{color:#555;font-size:.85em}.ids a{font-size:.9em}
table.sum td{text-align:left}dl.legend{font-size:.88em;display:grid;grid-template-columns:max-content 1fr;
 gap:2px 12px}dl.legend dt{font-weight:bold}dl.legend dd{margin:0}a{color:#0645ad}
"""


def _img(rgb: np.ndarray, alt: str, attrs: str = "") -> str:
    data = base64.b64encode(png_bytes(rgb)).decode("ascii")
    return f'<img {attrs}alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _flat(items: dict, prefix: str = "", depth: int = 2) -> dict[str, str]:
    """Nested ``items`` as ``{"a.b": text}`` rows (``depth`` levels; deeper or long values shortened)."""
    out: dict[str, str] = {}
    for k, v in items.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth > 1 and v:
            out.update(_flat(v, f"{key}.", depth - 1))
            continue
        text = v if isinstance(v, str) else json.dumps(v, default=str)
        out[key] = text if len(text) <= 160 else text[:157] + "..."
    return out


def _kv_table(items: dict, *, depth: int = 2) -> str:
    rows = "".join(f'<tr><th class="t">{html.escape(k)}</th><td class="t">{html.escape(v)}</td></tr>'
                   for k, v in _flat(items, depth=depth).items())
    return f"<table>{rows}</table>" if rows else '<p class="note">none recorded</p>'


def _json_block(title: str, obj) -> str:
    text = html.escape(json.dumps(obj, indent=1, default=str))
    return f'<details><summary class="note">{html.escape(title)} (JSON)</summary><pre class="note">{text}</pre></details>'


def _identity_html(identity: dict[str, str], title: str) -> str:
    cells = "".join(f"<span>{html.escape(k)}</span><b>{html.escape(str(v))}</b>" for k, v in identity.items())
    return f'<h1>{html.escape(title)}</h1><div class="ident" id="identity">{cells}</div>'


def calls_withheld_banner(maps: PhysicsMaps) -> str:
    """Red banner "No microbleed calls: <reasons>" when the acquisition fitness or the chi quality check withheld
    the microbleed calls (``maps.meta["calls_withheld"]``, with the reasons of ``maps.meta["fitness"]``, see
    ``physics.fitness``), else ``""``."""
    meta = maps.meta if isinstance(maps.meta, dict) else {}
    fitness = meta.get("fitness") if isinstance(meta.get("fitness"), dict) else {}
    reason = meta.get("calls_withheld")
    if not reason and fitness.get("ok", True) is not False:
        return ""
    reasons = [str(reason)] if reason else []
    reasons += [str(r) for r in fitness.get("reasons", []) if str(r) not in reasons]
    text = "; ".join(reasons) or "the acquisition is outside the validated range"
    return (f'<p class="stop" id="fitness" data-calls-withheld="1">No microbleed calls: {html.escape(text)}. '
            "No candidate is labelled microbleed or possible microbleed; the maps are shown for reading.</p>")


def _candidate_table(candidates: list[Candidate], gallery_ids: set[int]) -> str:
    cols = [("review_order", "review", 0), ("id", "id", 0), ("label", "label", 0), ("p_microbleed", "P(mb)", 2),
            ("probability", "P(label)", 2), ("diameter_mm", "Ø mm", 1), ("susceptibility_ppm", "χ ppm", 2),
            ("region", "region", 0), ("lobe", "lobe", 0), ("side", "side", 0), ("slice", "slice", 0),
            ("uncertainty", "uncert.", 2)]
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t, _ in cols)
    body = []
    for c in candidates:
        cells = []
        for attr, _, digits in cols:
            value = slice_number(c) if attr == "slice" else getattr(c, attr)
            text = _fmt("n/a" if value is None else value, digits)
            if attr == "id" and c.id in gallery_ids:
                text = f'<a href="#cand-{c.id}">#{c.id}</a>'
            if attr == "label":
                colour = LABEL_COLOURS.get(c.label, (0, 0, 0))
                text = f'<span style="color:rgb{tuple(int(v * 0.75) for v in colour)}">■</span> {text}'
            cells.append(f'<td{" class=t" if digits == 0 and attr not in ("review_order", "slice") else ""}>{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="candidates"><tr>{head}</tr>{"".join(body)}</table>'


def _legend(thresholds: dict, vein_floor: float, fov_mm: float) -> str:
    call = thresholds.get("microbleed_call", 0.5)
    border = thresholds.get("microbleed_borderline", 0.2)
    items = {
        "P(mb)": f"calibrated probability that the candidate is a microbleed (0-1). Label microbleed at P(mb) "
                 f">= {call:g}, possible microbleed (borderline) at >= {border:g}; otherwise the most probable of "
                 f"calcification, vein and other (P(label) is that class's probability).",
        "review": f"review order: {REVIEW_ORDER_RULE}.",
        "listed": f"the list holds every microbleed, possible microbleed and calcification; veins and 'other' "
                  f"only when P(mb) >= {vein_floor:g}. Every stage-1 candidate is in candidates_all.tsv.",
        "uncert.": "how unsure the model is (0-1, normalised entropy of its committee's class probabilities): "
                   "high = the model is torn between classes, so your decision teaches it most. It is not a "
                   "probability of disease.",
        "χ ppm": "mean susceptibility: > 0 paramagnetic (blood products), < 0 diamagnetic (calcification).",
        "region / lobe / side": "MARS group, lobe and side estimated from the brain mask's geometry (no atlas): "
                                "check them on the images.",
        "slice": "1-based slice (image) number of the centre along the acquired slice axis of the input.",
        "tiles": f"rows axial, coronal, sagittal (radiological: patient right on the viewer's left; letters on "
                 f"every edge); columns magnitude, SWI, χ (white = paramagnetic), local field ({fov_mm:g} mm), then "
                 "a 60 mm context (axial minimum-intensity projection: veins run as tubes); yellow ticks point at "
                 "the centre.",
        "decisions": "accept = the label is right; reject = not a lesion; relabel = the class you choose. "
                     "'Save decisions' downloads a TSV for 'cmbdetect review import'.",
    }
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items.items())
    return f'<dl class="legend" id="legend">{body}</dl>'


def _tile(maps: PhysicsMaps, c: Candidate, windows: DisplayWindows, fov_mm: float) -> str:
    tile = render_candidate_tile(maps, c, windows=windows, fov_mm=fov_mm)
    chi = "n/a" if math.isnan(c.susceptibility_ppm) else f"{c.susceptibility_ppm:+.2f} ppm"
    p_mb = "n/a" if math.isnan(c.p_microbleed) else f"{c.p_microbleed:.2f}"
    where = " ".join(v for v in (c.region, c.lobe, c.side if c.side != "unknown" else "") if v)
    caption = (f"<b>#{c.id} {html.escape(c.label.replace('_', ' '))}</b> · P(microbleed) {p_mb} · "
               f"Ø {_fmt(c.diameter_mm, 1)} mm · χ {chi} · slice {slice_number(c) or 'n/a'} · "
               f"{html.escape(where)} · review {c.review_order or 'n/a'} · uncert. {_fmt(c.uncertainty, 2)}")
    img = _img(tile, f"candidate {c.id}", f'data-candidate="{c.id}" ')
    return (f"<figure {figure_attrs(c)}>{img}"
            f"<figcaption>{caption}</figcaption>{decision_controls(c)}</figure>")


def write_report(path, *, maps: PhysicsMaps, candidates: list[Candidate], settings: dict,
                 warnings: list[str], model_info: dict, identity: dict[str, str] | None = None,
                 n_all: int | None = None, max_gallery: int = 100, fov_mm: float = 20.0,
                 vein_floor: float = MIMIC_LIST_FLOOR_P_MICROBLEED,
                 title: str = "cmbdetect report: cerebral microbleed candidates") -> Path:
    """Write the HTML report to ``path`` atomically; returns the path.

    ``candidates``: the run's candidates (the reader's list, or every candidate: only the reader's list,
    :func:`~cmbdetect.pipeline.outputs.candidates.reader_candidates`, is shown); ``n_all`` the number of stage-1
    candidates behind them (``candidates_all.tsv``); ``identity``: ordered header lines
    (:func:`pipeline.report_identity.report_identity`); ``settings``: processing options; ``warnings``: lines
    shown prominently; ``model_info``: at least ``name``, ``version``, ``sha256`` (``metadata.thresholds``
    gives the label thresholds of the legend).  ``maps.meta["calls_withheld"]`` / ``["fitness"]`` (if any) become
    the banner that says why microbleed calls were withheld (:func:`calls_withheld_banner`).  The gallery shows at most ``max_gallery`` tiles, in review
    order, each ``<figure id="cand-<id>">`` holding an ``<img data-candidate="<id>">``.
    """
    listed = reader_candidates(candidates, vein_floor=vein_floor)
    n_all = len(candidates) if n_all is None and len(candidates) > len(listed) else n_all
    windows = display_windows(maps)
    shown = listed[:max_gallery]
    gallery_ids = {c.id for c in shown}
    identity = dict(identity or {"Subject": "(not given)"})
    meta = model_info.get("metadata") if isinstance(model_info.get("metadata"), dict) else {}
    thresholds = meta.get("thresholds") or {}
    region_note = ""
    if any(c.region == "unknown" for c in listed):
        geometry = brain_geometry(maps.mask, maps.affine)
        region_note = (f"Region unknown: {geometry.reason}." if not geometry.usable else
                       "Region unknown = centre outside the brain mask or in the low part of a slab cut at both ends.")
    cap = (f'<p class="note">Gallery limited to the first {len(shown)} of {len(listed)} listed candidates '
           f"(review order); the others are in the table and candidates.tsv.</p>" if len(shown) < len(listed) else "")
    warn = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings)
    legend = " ".join(f'<span style="color:rgb{col}">●</span> {label.replace("_", " ")}'
                      for label, col in LABEL_COLOURS.items())
    model = {k: model_info.get(k, "n/a") for k in ("name", "version", "sha256")}
    model.update({"thresholds": thresholds, **{k: v for k, v in meta.items() if not isinstance(v, (dict, list))}})
    table = (_candidate_table(listed, gallery_ids) if listed else
             "<p>No candidate to review: no microbleed, possible microbleed or calcification was found.</p>")
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}{REVIEW_CSS}</style></head>
<body>{_identity_html(identity, title)}
{calls_withheld_banner(maps)}{warn}
<p class="note">Go to: <a href="#summary">summary</a> · <a href="#candidates">candidates</a> ·
<a href="#legend">legend</a> · <a href="#gallery">gallery</a> · <a href="#overview">overview</a> ·
<a href="#settings">settings and model</a></p>
<h2 id="summary">Summary</h2>
<p><b>{html.escape(headline(listed, n_all=n_all))}</b>. Research software: every candidate needs a reader's
confirmation; absence of a candidate does not exclude a microbleed.</p>
<p class="note">Definite = label microbleed, possible = possible (borderline) microbleed; locations are
geometric estimates (no atlas). {html.escape(region_note)} Numbers link to the tiles.</p>
{mars_table(listed)}<p></p>{bombs_table(listed)}
<h2>Candidates to review ({len(listed)})</h2>{table}
<h2>Legend</h2>{_legend(thresholds, vein_floor, fov_mm)}
<h2 id="gallery">Gallery</h2>{toolbar_html(len(shown))}{cap}
<div class="gallery">{''.join(_tile(maps, c, windows, fov_mm) for c in shown)}</div>
<h2 id="overview">Overview (minimum-intensity projection of SWI, axial slabs)</h2>
<p class="note">{legend}. Numbers are candidate ids; patient right on the viewer's left.</p>
<div class="overview">{_img(render_overview(maps, listed), "overview")}</div>
<h2 id="settings">Settings</h2>{_kv_table(settings)}
<h2>Model</h2>{_kv_table(model)}
{_json_block("provenance: model", model_info)}{_json_block("provenance: settings", settings)}
{script_html()}
</body></html>
"""
    return write_text(doc, Path(path))

"""The report's summary in the terms a neuroradiologist rates in: MARS locations and BOMBS certainty / size.

* MARS (Microbleed Anatomical Rating Scale, Gregoire et al. 2009): lobar (by lobe), deep and infratentorial,
  each by side, definite and possible microbleeds counted apart.  Here "definite" is the label microbleed
  (calibrated probability at or above the model's call threshold) and "possible" the label
  possible_microbleed (borderline); regions, lobes and sides are the geometric estimates of
  :mod:`pipeline.regions` and :mod:`pipeline.lobes` (no atlas).
* BOMBS (Brain Observer MicroBleed Scale, Cordonnier et al. 2009): certain / uncertain microbleeds, by size
  < 5 mm and 5-10 mm (diameter on the susceptibility-weighted image); larger ones are not microbleeds by
  definition and are listed apart for the reader to check (a macro-haemorrhage, a vein, a cavernoma).

Every count is followed by the ids of its candidates, each a link to the candidate's gallery tile.
"""
from __future__ import annotations

import html
import math

from cmbdetect.pipeline.outputs.candidates import Candidate
from cmbdetect.pipeline.outputs.lobes import LOBES

#: Labels counted by MARS and BOMBS, with the certainty each stands for.
CERTAINTY: dict[str, str] = {"microbleed": "definite", "possible_microbleed": "possible"}
#: Sides, in radiological reading order (patient right first).
SIDE_ORDER: tuple[str, ...] = ("right", "left", "midline")
#: BOMBS size classes (upper bound exclusive, mm).
SIZE_CLASSES: tuple[tuple[str, float, float], ...] = (("< 5 mm", 0.0, 5.0), ("5-10 mm", 5.0, 10.0 + 1e-9),
                                                      ("> 10 mm (not a microbleed by size)", 10.0 + 1e-9, math.inf))


def mars_rows(candidates: list[Candidate]) -> list[tuple[str, dict[tuple[str, str], list[int]]]]:
    """``[(row name, {(side, certainty): [ids]})]``: lobar by lobe, then deep, infratentorial and (if any)
    region unknown; only microbleed / possible_microbleed candidates count."""
    names = [f"lobar: {lobe}" for lobe in LOBES] + ["deep", "infratentorial", "region unknown"]
    cells: dict[str, dict[tuple[str, str], list[int]]] = {n: {} for n in names}
    for c in candidates:
        if c.label not in CERTAINTY:
            continue
        if c.region == "lobar":
            row = f"lobar: {c.lobe}" if c.lobe in LOBES else "region unknown"
        elif c.region in ("deep", "infratentorial"):
            row = c.region
        else:
            row = "region unknown"
        side = c.side if c.side in SIDE_ORDER else "midline"
        cells[row].setdefault((side, CERTAINTY[c.label]), []).append(c.id)
    return [(n, cells[n]) for n in names if n != "region unknown" or cells[n]]


def bombs_rows(candidates: list[Candidate]) -> list[tuple[str, dict[str, list[int]]]]:
    """``[(certainty, {size class or "size unknown": [ids]})]`` for certain and uncertain microbleeds."""
    out = []
    for label, certainty in CERTAINTY.items():
        cells: dict[str, list[int]] = {}
        for c in candidates:
            if c.label != label:
                continue
            name = "size unknown"
            if math.isfinite(c.diameter_mm):
                name = next(n for n, lo, hi in SIZE_CLASSES if lo <= c.diameter_mm < hi)
            cells.setdefault(name, []).append(c.id)
        out.append(("certain" if certainty == "definite" else "uncertain", cells))
    return out


def _cell(ids: list[int]) -> str:
    if not ids:
        return '<td class="n0">0</td>'
    links = " ".join(f'<a href="#cand-{i}">#{i}</a>' for i in ids)
    return f'<td><b>{len(ids)}</b> <span class="ids">{links}</span></td>'


def mars_table(candidates: list[Candidate]) -> str:
    """HTML table of :func:`mars_rows` (side x definite/possible columns, a total per row)."""
    head = "".join(f"<th>{s} {c}</th>" for s in SIDE_ORDER for c in ("definite", "possible"))
    body = []
    for name, cells in mars_rows(candidates):
        total = sum(len(v) for v in cells.values())
        body.append(f'<tr><th class="t">{html.escape(name)}</th>'
                    + "".join(_cell(cells.get((s, c), [])) for s in SIDE_ORDER for c in ("definite", "possible"))
                    + f"<td><b>{total}</b></td></tr>")
    return f'<table class="sum"><tr><th>MARS</th>{head}<th>total</th></tr>{"".join(body)}</table>'


def bombs_table(candidates: list[Candidate]) -> str:
    """HTML table of :func:`bombs_rows` (certain / uncertain x size class)."""
    sizes = [n for n, _, _ in SIZE_CLASSES]
    rows = bombs_rows(candidates)
    if any("size unknown" in cells for _, cells in rows):
        sizes.append("size unknown")
    head = "".join(f"<th>{html.escape(s)}</th>" for s in sizes)
    body = "".join(f'<tr><th class="t">{name}</th>' + "".join(_cell(cells.get(s, [])) for s in sizes)
                   + f"<td><b>{sum(len(v) for v in cells.values())}</b></td></tr>" for name, cells in rows)
    return f'<table class="sum"><tr><th>BOMBS</th>{head}<th>total</th></tr>{body}</table>'


def headline(candidates: list[Candidate], *, n_all: int | None) -> str:
    """One sentence: how many definite / possible microbleeds, calcifications and listed mimics."""
    count = {lab: sum(c.label == lab for c in candidates)
             for lab in ("microbleed", "possible_microbleed", "calcification")}
    mimics = len(candidates) - sum(count.values())
    text = (f"{count['microbleed']} microbleed{'s' * (count['microbleed'] != 1)}, "
            f"{count['possible_microbleed']} possible (borderline), {count['calcification']} "
            f"calcification{'s' * (count['calcification'] != 1)}, {mimics} mimic{'s' * (mimics != 1)} "
            f"(veins / other) to check")
    if n_all is not None:
        text += f"; {len(candidates)} listed for review of {n_all} stage-1 candidates (all in candidates_all.tsv)"
    return text

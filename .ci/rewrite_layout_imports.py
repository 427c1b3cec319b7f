"""Rewrite references to the old flat ``pipeline/`` modules (issue 22) to the sub-packages ``pipeline/io``,
``pipeline/outputs``, ``pipeline/simulate``, ``pipeline/cli``: dotted names, ``from cmbdetect.pipeline import X``
and ``pipeline/X.py`` paths.  Idempotent.  For merging branches that still add or import modules at the old
paths (e.g. ``pipeline/simulate/mimics.py`` -> ``pipeline/simulate/mimics.py``)::

    python .ci/rewrite_layout_imports.py $(git ls-files '*.py' '*.md')  # not pyproject.toml: fix its lists by hand
"""
# old module name under pipeline/ -> new dotted path under pipeline/
MAP = {
 "acquisition": "io.acquisition", "atomic": "io.atomic", "bids": "io.bids", "io_bids": "io.bids_dataset",
 "io_dicom": "io.dicom", "io_nifti": "io.nifti", "dicom_vendors": "io.dicom_vendors",
 "input_forms": "io.input_forms", "truth": "io.truth", "maps_io": "io.maps", "output_folder": "io.output_folder",
 "provenance": "io.provenance",
 "candidates": "outputs.candidates", "bids_derivatives": "outputs.bids_derivatives", "dicom_sources": "outputs.dicom_sources",
 "export_dicom": "outputs.dicom", "export_keyimages": "outputs.dicom_keyimages", "export_seg": "outputs.dicom_seg",
 "export_sr": "outputs.dicom_sr", "export_slicer": "outputs.slicer", "lobes": "outputs.lobes", "regions": "outputs.regions",
 "report": "outputs.report", "report_identity": "outputs.report_identity", "report_images": "outputs.report_images",
 "report_review": "outputs.report_review", "report_summary": "outputs.report_summary", "review": "outputs.review",
 "simulate": "simulate.subject", "simulate_anatomy": "simulate.anatomy", "simulate_bids": "simulate.bids",
 "simulate_dicom": "simulate.dicom", "simulate_geometry": "simulate.geometry", "simulate_insert": "simulate.insert",
 "simulate_lesions": "simulate.lesions", "simulate_signal": "simulate.signal",
 "simulate_veins_tortuous": "simulate.veins_tortuous", "simulate_vessels": "simulate.vessels", "preview": "simulate.preview",
 # files other helpers are adding at old paths (for the coordinator's rewrite)
 "simulate_mimics": "simulate.mimics",
 "cli": "cli.main", "cli_bids": "cli.bids", "cli_common": "cli.common", "cli_demo": "cli.demo",
 "cli_evaluate": "cli.evaluate", "cli_qsm": "cli.qsm", "cli_rank": "cli.rank", "cli_review": "cli.review",
 "cli_run": "cli.run", "cli_simulate": "cli.simulate", "cli_train": "cli.train",
}
import re
def new_name(old):
    if old in MAP: return MAP[old]
    m = re.fullmatch(r"simulate_(veins_\w+)", old)
    if m: return "simulate." + m.group(1)
    return None
_names = sorted(MAP, key=len, reverse=True)
_leaves = sorted({v.split(".")[1] for v in MAP.values()} | {"veins_\\w+"}, key=len, reverse=True)
DOT = re.compile(r"cmbdetect\.pipeline\.(" + "|".join(_names) + r"|simulate_veins_\w+)(?![\w])(?!\.(?:" + "|".join(_leaves) + r")\b)(?! import (?:" + "|".join(_leaves) + r")\b)")
PATH = re.compile(r"(?<![\w/])pipeline/(" + "|".join(_names) + r"|simulate_veins_\w+)\.py\b")
FROM = re.compile(r"from cmbdetect\.pipeline import (" + "|".join(_names) + r"|simulate_veins_\w+)\b(?!\.)")


def _from(m):
    pkg, leaf = new_name(m.group(1)).split(".")
    return f"from cmbdetect.pipeline.{pkg} import {leaf}" + ("" if leaf == m.group(1) else f" as {m.group(1)}")


def rewrite(text):
    text = DOT.sub(lambda m: "cmbdetect.pipeline." + new_name(m.group(1)), text)
    text = FROM.sub(_from, text)
    text = re.sub(r'f"cmbdetect\.pipeline\.cli(?:_|\.main\.)\{name\}"', 'f"cmbdetect.pipeline.cli.{name}"', text)
    text = PATH.sub(lambda m: "pipeline/" + new_name(m.group(1)).replace(".", "/") + ".py", text)
    return text
if __name__ == "__main__":
    import sys, pathlib
    for p in sys.argv[1:]:
        p = pathlib.Path(p); t = p.read_text(); n = rewrite(t)
        if n != t: p.write_text(n); print("rewrote", p)

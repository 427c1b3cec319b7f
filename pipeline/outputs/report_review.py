"""The report's reading controls: accept / reject / relabel per tile, saved as a decisions TSV, and a contrast
control for the images.

All in the page (a short inline script, no network, no external file): the decisions are kept in the page and
*Save decisions* downloads them as a TSV in the format of :mod:`pipeline.review` (a ``Blob`` download), which
``cmbdetect review import`` turns into training labels.  The contrast and brightness sliders act on every
image (a CSS filter), on top of the shared display windows the images were rendered with.
"""
from __future__ import annotations

import html

from cmbdetect.models.detection import CLASSES, stage2_class
from cmbdetect.pipeline.outputs.candidates import Candidate
from cmbdetect.pipeline.outputs.review import DECISION_COLUMNS

#: Name the browser offers for the saved decisions.
DECISIONS_FILE = "decisions.tsv"

CSS = """
.toolbar{position:sticky;top:0;z-index:5;background:#263238;color:#eee;padding:.4em .8em;display:flex;
 gap:1.2em;align-items:center;flex-wrap:wrap;font-size:.9em}.toolbar input[type=text]{width:10em}
.toolbar button{font-weight:bold;padding:.2em .9em}
.dec{font-size:.85em;padding:3px 0}.dec label{margin-right:.7em;cursor:pointer}
figure[data-decision=accept]{outline:3px solid #3c3}figure[data-decision=reject]{outline:3px solid #d33}
figure[data-decision=relabel]{outline:3px solid #39f}
.gallery img,.overview img{filter:contrast(var(--con,1)) brightness(var(--bri,1))}
"""


def toolbar_html(n: int) -> str:
    """The sticky bar above the gallery: reader name, progress, save button, contrast / brightness."""
    return (f'<div class="toolbar" id="toolbar"><span>Reader <input type="text" id="reader" '
            f'placeholder="your name"></span><span id="progress">0 of {n} decided</span>'
            f'<button type="button" id="save">Save decisions ({DECISIONS_FILE})</button>'
            '<span>contrast <input type="range" id="con" min="0.5" max="3" step="0.05" value="1"></span>'
            '<span>brightness <input type="range" id="bri" min="0.5" max="2" step="0.05" value="1"></span>'
            '<button type="button" id="resetwin">reset</button></div>')


def decision_controls(c: Candidate) -> str:
    """Radio buttons accept / reject / relabel (with the class to relabel to) of one candidate's tile."""
    own = stage2_class(c.label) if c.label in (*CLASSES, "possible_microbleed") else c.label
    options = "".join(f'<option value="{k}">{k}</option>' for k in CLASSES if k != own)
    return (f'<div class="dec"><label><input type="radio" name="d{c.id}" value="accept"> accept</label>'
            f'<label><input type="radio" name="d{c.id}" value="reject"> reject</label>'
            f'<label><input type="radio" name="d{c.id}" value="relabel"> relabel as</label>'
            f'<select name="l{c.id}" aria-label="relabel candidate {c.id} as">{options}</select></div>')


def figure_attrs(c: Candidate) -> str:
    """Attributes of a tile's ``<figure>``: anchor id and what a decision row needs."""
    return (f'id="cand-{c.id}" data-id="{c.id}" data-label="{html.escape(c.label)}" '
            f'data-x="{c.x:.3f}" data-y="{c.y:.3f}" data-z="{c.z:.3f}"')


#: The page's script: decisions per tile -> TSV Blob download; contrast sliders.  ``window.cmbDecisionsTSV()``
#: returns the TSV text (what the button saves).
SCRIPT = """
(function(){
  var header = %(header)s, file = %(file)s, decisions = {};
  var figs = Array.prototype.slice.call(document.querySelectorAll('figure[data-id]'));
  function clean(s){ return String(s).replace(/[\\t\\r\\n]+/g, ' ').trim(); }
  function update(){
    var n = Object.keys(decisions).length, p = document.getElementById('progress');
    if (p) p.textContent = n + ' of ' + figs.length + ' decided';
  }
  function record(f){
    var r = f.querySelector('input[type=radio]:checked');
    if (!r) return;
    var label = f.getAttribute('data-label');
    if (r.value === 'relabel') label = f.querySelector('select').value;
    decisions[f.getAttribute('data-id')] = {id: f.getAttribute('data-id'), decision: r.value, label: label,
      x: f.getAttribute('data-x'), y: f.getAttribute('data-y'), z: f.getAttribute('data-z'),
      time: new Date().toISOString()};
    f.setAttribute('data-decision', r.value);
    unsaved = true;
    update();
  }
  var unsaved = false;
  window.addEventListener('beforeunload', function(e){ if (unsaved) { e.preventDefault(); e.returnValue = ''; } });
  figs.forEach(function(f){
    Array.prototype.forEach.call(f.querySelectorAll('input[type=radio]'), function(r){
      r.addEventListener('change', function(){ record(f); });
    });
    var s = f.querySelector('select');
    if (s) s.addEventListener('change', function(){
      f.querySelector('input[value=relabel]').checked = true; record(f);
    });
  });
  window.cmbDecisionsTSV = function(){
    var reader = clean((document.getElementById('reader') || {value: ''}).value), rows = [header.join('\\t')];
    Object.keys(decisions).map(Number).sort(function(a, b){ return a - b; }).forEach(function(id){
      var d = decisions[id];
      rows.push([d.id, d.decision, d.label, d.x, d.y, d.z, reader, d.time].join('\\t'));
    });
    return rows.join('\\n') + '\\n';
  };
  var save = document.getElementById('save');
  if (save) save.addEventListener('click', function(){
    var blob = new Blob([window.cmbDecisionsTSV()], {type: 'text/tab-separated-values'});
    var a = document.createElement('a');
    a.href = URL.createObjectURL(blob); a.download = file;
    document.body.appendChild(a); a.click(); a.remove();
    unsaved = false;
  });
  function slider(id, prop){
    var e = document.getElementById(id);
    if (e) e.addEventListener('input', function(){ document.documentElement.style.setProperty(prop, e.value); });
    return e;
  }
  var con = slider('con', '--con'), bri = slider('bri', '--bri'), reset = document.getElementById('resetwin');
  if (reset) reset.addEventListener('click', function(){
    [con, bri].forEach(function(e){ if (e) { e.value = 1; e.dispatchEvent(new Event('input')); } });
  });
})();
"""


def script_html() -> str:
    """The inline ``<script>`` element of the page."""
    import json

    return "<script>" + SCRIPT % {"header": json.dumps(list(DECISION_COLUMNS)),
                                  "file": json.dumps(DECISIONS_FILE)} + "</script>"

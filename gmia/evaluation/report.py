"""``gmia report DIR``: one self-contained HTML page of an evaluation (no external files, scripts or fonts).

    write_report("outputs/eval")          # → outputs/eval/report.html

Reads DIR/metrics.json (from ``gmia evaluate``), DIR/examples.png and DIR/roc.png, and — when present —
DIR/mia.json (``gmia mia``) and a sweep's curve.csv/curve.png (in DIR, or the folder given as ``sweep``), plus
the anonymized run's manifest.jsonl and run.json (path recorded in metrics.json). Images are embedded as base64
data URIs, so the single file can be mailed or archived. Sections: summary against the acceptance bars,
privacy, control, utility, fidelity, record-level privacy, membership inference, the privacy–utility curve,
examples, withheld images and why, and the run configuration.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write

__all__ = ["write_report", "SECTIONS", "ACCEPTANCE"]

SECTIONS = ("Summary", "Threat model", "Privacy", "Control", "Utility", "Fidelity", "Record-level privacy", "Membership inference",
            "Privacy-utility curve", "Examples", "Withheld images", "Run configuration")

# The project's quality bars (phantom presets): (label, path in metrics.json, op, bar)
ACCEPTANCE = (
    ("attacker re-identifies originals (other study)", ("control", "attacker_on_originals", "auc_same_patient_other_study"), ">=", 0.95),
    # the privacy must be the method's, not a blurry generator's
    ("attacker re-identifies reconstructions (other study)", ("control", "attacker", "auc_same_patient_other_study"), ">=", 0.95),
    ("attacker on anonymized, own source", ("privacy", "attacker", "auc_own_source"), "<=", 0.65),
    # stricter than the AUC bar above: an AUC far below 0.5 links too (reverse the ranking), so bound max(AUC, 1 - AUC)
    ("attacker linkability max(AUC, 1 - AUC), own source", ("privacy", "attacker", "auc_own_source_linkability"),
     "<=", 0.60),
    # the attacker who knows the method (THREAT_MODEL): the strongest of two families x seeds, retrained on anonymized
    # training patients. Some linkage is the price of utility: where the floor (what the kept findings alone link,
    # privacy.floor) is above a bar, the bar is floor + 0.05 (FLOORED)
    ("adaptive attacker, same patient other study", ("privacy", "adaptive_attacker", "auc_same_patient_other_study"),
     "<=", 0.60),
    ("adaptive attacker, own source", ("privacy", "adaptive_attacker", "auc_own_source"), "<=", 0.65),
    ("adaptive attacker, own source: upper end of the 95% interval", ("privacy", "adaptive_attacker",
                                                                      "auc_own_source_ci95", 1), "<=", 0.70),
    ("utility macro AUROC on anonymized", ("utility", "macro_auroc"), ">=", 0.90),
    ("train-on-anonymized gap (AUROC points / 100)", ("utility", "train_on_anonymized", "gap"), "<=", 0.05),
    # a classifier the optimizer never saw (ResNet-18, classifier.py): what is left of the findings for anyone else
    ("independent classifier: AUROC anonymized / originals", ("utility", "independent_classifier", "ratio"), ">=",
     0.97),
    ("independent classifier: lowest finding, AUROC anonymized / originals", ("utility", "independent_classifier",
                                                                             "lowest_finding_ratio"), ">=", 0.90),
    ("independent classifier: trained on anonymized vs originals, gap", ("utility", "independent_classifier",
                                                                       "train_on_anonymized", "gap"), "<=", 0.03),
    # the lesion map: a segmenter the optimizer never saw (segmenter.py), and E_ut's own head, which it pleased
    ("independent segmenter: lesion Dice anonymized / originals (face presets)", ("utility", "independent_segmenter",
                                                                                "ratio"), ">=", 0.85),
    ("E_ut's segmentation: lesion Dice anonymized / originals (face presets)", ("utility", "lesion_dice", "ratio"),
     ">=", 0.85),
)

# bar -> the floor it yields to: (path of the floor's AUC, what is added to it)
FLOORED = {
    "adaptive attacker, same patient other study": (("privacy", "floor", "auc_same_patient_other_study"), 0.05),
    "adaptive attacker, own source": (("privacy", "floor", "auc_own_source"), 0.05),
    "adaptive attacker, own source: upper end of the 95% interval": (("privacy", "floor", "auc_own_source"), 0.10),
}

# Who the numbers protect against (stated in the report, so that a reader knows what a "pass" means).
THREAT_MODEL = """<p>The attacker knows the method. They hold the released set, the weights it was made with (shipped
or the data holder's), <code>gmia</code> itself, and labelled images of many patients: enough to anonymize some
of them and train re-identifiers on the result. Their goals, most important first:</p><ol>
<li><b>same patient</b>: given another image (another study) of a patient, find that patient's images in the
release;</li><li><b>own source</b>: given the very image that was anonymized, find its released version;</li>
<li><b>membership</b>: decide whether a patient is in the release at all.</li></ol>
<p>The <i>adaptive attacker</i> plays this attacker: re-identifiers of two families (the attacker's VGG-style
network, fine-tuned, and a ResNet-18 from scratch), several seeds each, trained on anonymized images of training
patients and their originals; the strongest run is reported. An AUC far below 0.5 links as well as one far above
(reverse the ranking), hence the two-sided linkability max(AUC, 1 &minus; AUC). Intervals resample patients.
The independent attacker, which never saw an anonymized image, and E_id, the network the optimizer pushed on, are
shown for comparison; neither is the threat.</p>"""

_CSS = """body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:left}
th{background:#f3f3f3}.pass{color:#080;font-weight:bold}.fail{color:#b00;font-weight:bold}.na{color:#888}
pre{background:#f7f7f7;padding:.5em;font-size:12px;overflow-x:auto}img{max-width:100%}h2{border-bottom:1px solid #ddd}"""


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class='na'>({html.escape(alt)}: not available)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (float, int)) or x is None for x in v):
        return "[" + ", ".join("n/a" if x is None else f"{x:.4f}" for x in v) + "]"
    if v is None:
        return "n/a"
    return html.escape(str(v) if not isinstance(v, (dict, list)) else json.dumps(v))


def _flatten(d, prefix="") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, v))
    return rows


def _table(d: dict | None) -> str:
    if not d:
        return "<p class='na'>not available</p>"
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in _flatten(d))
    return f"<table><tr><th>metric</th><th>value</th></tr>{body}</table>"


def _get(d, path):
    for k in path:
        if isinstance(k, int):
            d = d[k] if isinstance(d, list) and len(d) > k else None
        else:
            d = d.get(k) if isinstance(d, dict) else None
    return d


def _summary(m: dict) -> str:
    rows = []
    for label, path, op, bar in ACCEPTANCE:
        v = _get(m, path)
        shown = f"{op} {bar}"
        floor_path, plus = FLOORED.get(label, (None, 0.0))
        floor = _get(m, floor_path) if floor_path else None
        if isinstance(floor, (int, float)) and floor + plus > bar:
            bar = floor + plus
            shown = f"{op} {bar:.3f} (floor {floor:.3f} + {plus:g}; stated bar {shown})"
        if not isinstance(v, (int, float)):
            verdict = "<span class='na'>not measured</span>"
        else:
            ok = v >= bar if op == ">=" else v <= bar
            verdict = f"<span class='{'pass' if ok else 'fail'}'>{'pass' if ok else 'FAIL'}</span>"
        rows.append(f"<tr><td>{html.escape(label)}</td><td>{_fmt(v)}</td><td>{html.escape(shown)}</td>"
                    f"<td>{verdict}</td></tr>")
    return ("<table><tr><th>check</th><th>value</th><th>bar</th><th>verdict</th></tr>" + "".join(rows) + "</table>"
            "<p>The project's quality bars (phantom presets, default privacy level, test patients). Where the findings "
            "alone link above a privacy bar (the floor: a release that keeps each diagnosis keeps that cue), the bar "
            "is the floor + 0.05.</p>")


def _withheld(anon_dir: Path | None) -> str:
    path = anon_dir / "manifest.jsonl" if anon_dir else None
    if path is None or not path.is_file():
        return "<p class='na'>manifest of the anonymized run not found</p>"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bad = [r for r in rows if r.get("status") != "released"]
    if not bad:
        return f"<p>All {len(rows)} records were released.</p>"
    body = "".join(f"<tr><td>{html.escape(r.get('pseudonym', ''))}</td><td>{html.escape(r.get('status', ''))}</td>"
                   f"<td>{_fmt(r.get('cos_id_saved', r.get('cos_id_optimized')))}</td>"
                   f"<td>{html.escape(str(r.get('reason') or r.get('error') or ''))}</td></tr>" for r in bad)
    return (f"<p>{len(bad)} of {len(rows)} records were not released.</p><table><tr><th>pseudonym</th><th>status</th>"
            f"<th>cos_id</th><th>why</th></tr>{body}</table>")


def _curve(folder: Path | None) -> str:
    if folder is None or not (folder / "curve.csv").is_file():
        return "<p class='na'>no sweep found (run <code>gmia sweep</code> and pass its folder)</p>"
    with open(folder / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    verdict = ""
    if (folder / "curve.json").is_file():
        mono = json.loads((folder / "curve.json").read_text()).get("monotone_attacker_auc")
        verdict = f"<p>Attacker AUC monotone in the margin: <b>{mono}</b></p>"
    return _img(folder / "curve.png", "privacy-utility curve") + verdict + f"<table><tr>{head}</tr>{body}</table>"


def write_report(eval_dir: str | Path, out: str | Path | None = None, sweep: str | Path | None = None,
                 mia: str | Path | None = None) -> Path:
    """Render ``eval_dir`` (a ``gmia evaluate`` output) as one HTML file; returns its path."""
    eval_dir = Path(eval_dir)
    metrics_path = eval_dir / "metrics.json"
    if not metrics_path.is_file():
        raise InputError(f"{metrics_path} not found: run `gmia evaluate ... --out {eval_dir}` first")
    m = json.loads(metrics_path.read_text())
    anon_dir = Path(m["inputs"]["anon"]) if m.get("inputs", {}).get("anon") else None
    mia_path = Path(mia) if mia else eval_dir / "mia.json"
    if mia_path.is_dir():
        mia_path = mia_path / "mia.json"
    mia_part = (_table(json.loads(mia_path.read_text()).get("attacks")) + _table(json.loads(mia_path.read_text()).get("inputs"))
                if mia_path.is_file() else "<p class='na'>no mia.json (run <code>gmia mia</code>)</p>")
    run = json.loads((anon_dir / "run.json").read_text()) if anon_dir and (anon_dir / "run.json").is_file() else {}
    parts = {
        "Summary": _summary(m) + _table(m.get("inputs")),
        "Threat model": THREAT_MODEL,
        "Privacy": "<p>Independent attacker (never seen by the optimizer), E_id (the optimizer's own view), and the "
                   "adaptive attacker retrained on anonymized training patients. AUC: positive pairs vs. "
                   "different-patient pairs; rank-k: retrieval among originals (without / with the own source).</p>"
                   + _img(eval_dir / "roc.png", "ROC curves") + "".join(
                       f"<h3>{k}</h3>" + _table(v) for k, v in m.get("privacy", {}).items()),
        "Control": "<p>The attacker on stage-1 reconstructions must still re-identify: otherwise privacy would come "
                   "from a blurry generator.</p>" + "".join(f"<h3>{k}</h3>" + _table(v)
                                                         for k, v in m.get("control", {}).items()),
        "Utility": _table(m.get("utility")),
        "Fidelity": _table(m.get("fidelity")),
        "Record-level privacy": _table(m.get("record_privacy")),
        "Membership inference": mia_part,
        "Privacy-utility curve": _curve(Path(sweep) if sweep else (eval_dir if (eval_dir / "curve.csv").is_file() else None)),
        "Examples": "<p>source | reconstruction G(E(x)) | anonymized | |anonymized - source| (amplified)</p>"
                    + _img(eval_dir / "examples.png", "examples"),
        "Withheld images": _withheld(anon_dir),
        "Run configuration": "<h3>anonymization run.json</h3><pre>" + html.escape(json.dumps(run, indent=2)) +
                             "</pre><h3>evaluation</h3><pre>" + html.escape(json.dumps(
                                 {"config": m.get("config"), "networks": m.get("networks")}, indent=2)) + "</pre>",
    }
    nav = " | ".join(f"<a href='#s{i}'>{html.escape(s)}</a>" for i, s in enumerate(SECTIONS))
    body = "".join(f"<h2 id='s{i}'>{html.escape(s)}</h2>{parts[s]}" for i, s in enumerate(SECTIONS))
    title = f"gmia evaluation: {html.escape(str(m.get('inputs', {}).get('preset', '')))}"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>"
            f"<body><h1>{title}</h1><p>{nav}</p>{body}</body></html>\n")
    out = Path(out) if out else eval_dir / "report.html"
    atomic_write(out, page)
    return out

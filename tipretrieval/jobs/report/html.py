"""Static HTML pages of a report (stdlib string templates only): no script, no server, no
network; every link is relative or a file:// URI, so the site opens from disk.

Elements carry `data-*` attributes (class, count, id) so tests and tools can read the pages.
"""

from __future__ import annotations

from html import escape
from string import Template

import numpy as np

from .labelling import CSV_FILE, IDS_FILE
from .model import Card, Report, Shot
from .stats import BINS

INDEX = "index.html"
CONFUSED_SHOWN = 10  # most confused pairs listed
LABEL_PAGE = "label.html"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}
td.n,th.n{text-align:right}.note{background:#fff6d8;padding:6px 10px;border-left:4px solid #e0b000}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:220px;border:1px solid #ccc;border-radius:6px;padding:6px;background:#fafafa}
.card.wrong{border-color:#d33;background:#fff0f0}
.img{display:block;width:208px;height:128px;object-fit:contain;background:#eee}
.noimg{display:flex;align-items:center;justify-content:center;height:128px;background:#e6ecf5;
word-break:break-all;font:12px monospace;text-align:center;padding:4px;box-sizing:border-box}
.top{margin:4px 0;padding-left:18px}.ev{display:flex;gap:4px;flex-wrap:wrap}
.shot{width:64px;font-size:10px;word-break:break-all}.shot img{width:64px;height:64px;
object-fit:cover}.shot .noimg{height:64px;font-size:9px}.bar{fill:#4a78c2}
nav a{margin-right:12px}.cols{display:flex;gap:48px;flex-wrap:wrap;align-items:flex-start}
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title>
<style>$style</style></head>
<body><nav><a href="$index">summary</a><a href="$label">next images to label</a>$links</nav>
<h1>$title</h1>
$body
</body></html>
""")


def page(report: Report, title: str, body: str) -> str:
    """A whole HTML document with the report's navigation."""
    links = "".join(f'<a href="{escape(href)}">{escape(text)}</a>' for text, href in report.links)
    return PAGE.substitute(title=escape(title), style=STYLE, index=INDEX, label=LABEL_PAGE,
                           links=links, body=body)


def class_file(c: int) -> str:
    """The page of class index `c`."""
    return f"class-{c:05d}.html"


def _image(thumb: str | None, image: str | None, text: str, css: str = "img") -> str:
    """A thumbnail linked to its source image, or the id in a box when there is none."""
    if thumb is None:
        box = f'<div class="noimg" title="no image">{escape(text)}</div>'
        return f'<a href="{escape(image)}">{box}</a>' if image else box
    img = f'<img class="{css}" src="{escape(thumb)}" alt="{escape(text)}" loading="lazy">'
    return f'<a href="{escape(image)}">{img}</a>' if image else img


def _shot(shot: Shot) -> str:
    sim = "" if shot.sim is None else f" {shot.sim:.2f}"
    kind = "class" if shot.sim is None else "evidence"
    return (f'<div class="shot" data-id="{escape(shot.id)}" data-kind="{kind}" '
            f'title="{escape(shot.id)}">'
            f'{_image(shot.thumb, shot.image, shot.id, css="")}{escape(shot.label)}{sim}</div>')


def card(item: Card) -> str:
    """One row: image, id, true label (if known), top classes with probabilities, evidence."""
    wrong = item.label is not None and item.top[0][1] != item.label
    top = "".join(f'<li><a href="{class_file(c)}">{escape(name)}</a> {prob:.3f}</li>'
                  for c, name, prob in item.top)
    truth = "" if item.label is None else f"<div>true: <b>{escape(item.label)}</b></div>"
    evidence = ""
    if item.evidence:
        evidence = ('<div>evidence shots (key, class, similarity):</div><div class="ev">'
                    + "".join(_shot(s) for s in item.evidence) + "</div>")
    return (f'<div class="card{" wrong" if wrong else ""}" data-id="{escape(item.id)}" '
            f'data-class="{escape(item.top[0][1])}">'
            f'{_image(item.thumb, item.image, item.id)}'
            f'<div title="row id {item.row_id}"><code>{escape(item.id)}</code></div>{truth}'
            f'<ol class="top">{top}</ol><div>margin {item.margin:.3f}</div>{evidence}</div>')


def histogram_svg(counts: np.ndarray, width: int = 400, height: int = 120) -> str:
    """The top-1 confidence histogram as inline SVG bars over [0, 1]."""
    peak = max(1, int(counts.max()))
    bar = width / BINS
    rects = "".join(
        f'<rect class="bar" x="{i * bar:.1f}" y="{height - h:.1f}" width="{bar - 1:.1f}" '
        f'height="{h:.1f}"><title>{i / BINS:.2f}-{(i + 1) / BINS:.2f}: {n} rows</title></rect>'
        for i, n in enumerate(counts.tolist()) for h in [height * n / peak])
    axis = (f'<text x="0" y="{height + 14}" font-size="11">0</text>'
            f'<text x="{width / 2 - 8}" y="{height + 14}" font-size="11">0.5</text>'
            f'<text x="{width - 10}" y="{height + 14}" font-size="11">1</text>')
    return (f'<svg id="confidence" width="{width}" height="{height + 18}" '
            f'role="img" aria-label="top-1 confidence histogram">{rects}{axis}</svg>')


def _notes(report: Report) -> str:
    return "".join(f'<p class="note">{escape(n)}</p>' for n in report.notes)


def _class_table(report: Report) -> str:
    stats = report.stats
    labelled = stats.labelled > 0
    head = ('<tr><th>class</th><th class="n">predicted rows</th><th class="n">mean top-1 '
            'prob</th><th class="n">shown</th>'
            + ('<th class="n">cache keys</th>' if report.shots is not None else "")
            + ('<th class="n">labelled rows</th><th class="n">accuracy %</th>' if labelled
               else "") + "</tr>")
    rows = []
    for c, name in enumerate(report.classes):
        n = int(stats.predicted[c])
        mean = stats.confidence_sum[c] / n if n else float("nan")
        cells = [f'<td><a href="{class_file(c)}">{escape(name)}</a></td>',
                 f'<td class="n">{n}</td>', f'<td class="n">{mean:.3f}</td>' if n else
                 '<td class="n">-</td>', f'<td class="n">{len(report.samples.get(c, []))}</td>']
        if report.shots is not None:
            cells.append(f'<td class="n">{int(report.shots[c])}</td>')
        if labelled:
            t = int(stats.true_rows[c])
            acc = f"{100.0 * stats.true_hits[c] / t:.1f}" if t else "-"
            cells += [f'<td class="n">{t}</td>', f'<td class="n">{acc}</td>']
        acc = ""
        if labelled and stats.true_rows[c]:
            acc = f' data-accuracy="{100.0 * stats.true_hits[c] / stats.true_rows[c]:.2f}"'
        rows.append(f'<tr data-class="{escape(name)}" data-count="{n}"{acc}>{"".join(cells)}'
                    '</tr>')
    return f'<table id="classes">{head}{"".join(rows)}</table>'


def _labelled_sections(report: Report) -> str:
    stats, names = report.stats, report.classes
    if stats.labelled == 0:
        return ""
    pairs = "".join(
        f'<tr data-true="{escape(names[t])}" data-predicted="{escape(names[p])}">'
        f'<td><a href="{class_file(t)}">{escape(names[t])}</a></td><td><a href="'
        f'{class_file(p)}">{escape(names[p])}</a></td><td class="n">{n}</td></tr>'
        for t, p, n in stats.top_confusions(CONFUSED_SHOWN))
    out = (f'<h2>Labelled rows</h2><p id="accuracy" data-rows="{stats.labelled}" '
           f'data-accuracy="{stats.accuracy:.2f}">'
           f'{stats.labelled} rows have a known label: top-1 accuracy '
           f'<b>{stats.accuracy:.2f}%</b>. Per-class accuracy is in the class table.</p>'
           '<div class="cols"><div><h3>Most confused pairs</h3>'
           + (f'<table id="confused"><tr><th>true class</th><th>predicted as</th>'
              f'<th class="n">rows</th></tr>{pairs}</table>' if pairs else
              "<p>No mistakes.</p>") + "</div>")
    if report.shots is not None:
        rows = "".join(f'<tr data-shots="{escape(s)}" data-classes="{c}" data-rows="{r}" '
                       f'data-accuracy="{a:.2f}"><td>{escape(s)}</td><td class="n">{c}</td>'
                       f'<td class="n">{r}</td><td class="n">{a:.2f}</td></tr>'
                       for s, c, r, a in stats.accuracy_by_shots(report.shots))
        out += ('<div><h3>Accuracy by shots per class</h3><table id="by-shots"><tr><th>cache '
                'keys of the class</th><th class="n">classes</th><th class="n">rows</th>'
                f'<th class="n">accuracy %</th></tr>{rows}</table></div>')
    return out + "</div>"


def index_page(report: Report) -> str:
    """The summary: rows per predicted class, confidence histogram, labelled-row figures."""
    stats = report.stats
    counts = " ".join(str(int(n)) for n in stats.histogram)
    body = (f'<p>Classify output <code>{escape(report.output)}</code>: '
            f'<b id="rows" data-rows="{stats.rows}">{stats.rows}</b> rows, '
            f'{len(report.classes)} classes.</p>{_notes(report)}'
            f'<p><a href="{LABEL_PAGE}">{len(report.uncertain)} images to label next</a> '
            '(the rows the cache is least sure about).</p>'
            f'<h2>Top-1 confidence</h2>{histogram_svg(stats.histogram)}'
            f'<p class="small">rows per bin of width {1 / BINS:.2f}: {counts}</p>'
            f'{_labelled_sections(report)}<h2>Classes</h2>{_class_table(report)}')
    return page(report, report.title, body)


def class_page(report: Report, c: int) -> str:
    """One predicted class: how many rows, and cards of the sampled ones."""
    name, n = report.classes[c], int(report.stats.predicted[c])
    cards = sorted(report.samples.get(c, []), key=lambda item: -item.top[0][2])
    shown = (f"{len(cards)} of {n} rows predicted as this class are shown"
             + (f" (a fixed random sample: at most {report.per_class_cap} per class)"
                if len(cards) < n else "") + ", most confident first.")
    shots = report.class_shots.get(c, [])
    keys = (f'<h2>Shots</h2><p>The cache holds {int(report.shots[c])} keys (shots) of this '
            f'class; {len(shots)} are shown.</p><div class="ev" id="shots">'
            + "".join(_shot(s) for s in shots) + "</div>") if report.shots is not None else ""
    body = (f'<p id="class-summary" data-class="{escape(name)}" data-count="{n}" '
            f'data-shown="{len(cards)}">{shown}</p>{_notes(report)}{keys}<h2>Rows</h2>'
            f'<div class="grid">{"".join(card(item) for item in cards)}</div>')
    return page(report, f"{name}: {n} rows", body)


def _label_steps(report: Report) -> str:
    """How the listed rows go back into the cache, for the files this report wrote."""
    steps = []
    if CSV_FILE in report.label_files.values():
        steps.append(f"check and correct the label column of {CSV_FILE} (delete the rows you "
                     f"cannot label), then <code>tipretrieval add-shots CACHE --images "
                     f"{CSV_FILE}</code>; or copy each image into its class folder of the "
                     "labelled folder and rerun <code>tipretrieval fit-predict</code>, which "
                     "adds new labelled images as shots")
    steps.append(f"for rows that already carry a label in their store (e.g. a test split), "
                 f"<code>tipretrieval add-shots CACHE --ids-file {IDS_FILE} --split SPLIT</code>"
                 " adds them as shots")
    return "; ".join(steps) + "."


def label_page(report: Report) -> str:
    """The next images to label: smallest top-1 - top-2 margin, spread over classes."""
    files = ", ".join(f'<a href="{escape(f)}">{escape(f)}</a> ({escape(what)})'
                      for what, f in report.label_files.items())
    body = (f'<p id="to-label" data-count="{len(report.uncertain)}">The '
            f'{len(report.uncertain)} rows whose top two classes are closest in probability '
            '(smallest margin), taking each predicted class\'s least sure row before any '
            f'class\'s second. Listed in {files}.</p>'
            f'<p>To use them: {_label_steps(report)}</p>'
            f'{_notes(report)}<div class="grid">'
            + "".join(card(item) for item in report.uncertain) + "</div>")
    return page(report, "Next images to label", body)

"""report.html of a `gpugrad train` run: one self-contained page, viewable offline.

The curves (training loss on a log scale, train and test accuracy per epoch) are inline SVG, the
confusion matrix on the test set an HTML table, the misclassified test examples small pictures
(grayscale PNGs for square inputs such as digits' 8x8 and MNIST's 28x28, the test set's scatter
for 2-D inputs such as the spiral, a line of the features otherwise), and the run's settings a
table. No script, no external file, font or stylesheet: nothing to fetch, nothing to run.
"""
import base64
import html
import math
import struct
import zlib

import numpy as np

__all__ = ["render", "png_gray"]

LOSS, TRAIN, TEST = "#2ca02c", "#1f77b4", "#d62728"  # curve colours (the browser test finds them)
MAX_EXAMPLES = 24
CLASS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf")

_CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1100px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.summary { font-size: 15px; color: #444; }
.curves svg { margin-right: 16px; border: 1px solid #ddd; background: #fff; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; }
table.settings td { text-align: left; }
.examples { display: flex; flex-wrap: wrap; gap: 10px; }
.example { text-align: center; font-size: 12px; width: 96px; }
.example img { width: 84px; height: 84px; image-rendering: pixelated; border: 1px solid #999; }
.note { color: #666; font-size: 13px; }
"""


def render(metrics, x_test, y_test, pred, probabilities):
    """The page for a run: `metrics` as metrics.json holds it, the raw test inputs and labels,
    the model's predicted classes for them and its softmax probabilities (n, classes)."""
    classes = probabilities.shape[1]
    dataset = metrics.get("dataset", "")
    title = f"gpugrad train: {dataset}"
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>", _summary(metrics), "<h2>Training curves</h2>",
             _curves(metrics["history"]),
             f"<h2>Confusion matrix (test set, {len(y_test)} samples)</h2>",
             _confusion(y_test, pred, classes),
             "<h2>Misclassified test examples</h2>",
             _examples(x_test, y_test, pred, probabilities),
             "<h2>Settings</h2>", _settings(metrics), "</body></html>\n"]
    return "\n".join(parts)


def _e(text):
    return html.escape(str(text), quote=True)


def _summary(m):
    return (f"<p class='summary'>test accuracy <b>{m['test_accuracy']:.4f}</b>, train accuracy "
            f"{m['train_accuracy']:.4f}; model {_e(m.get('model', ''))}; "
            f"{len(m['history'])} epochs in {m['seconds']:.1f} s on {_e(m['device'])} "
            f"({_e(m.get('device_name') or '')}); {_e(m.get('timestamp', ''))}</p>")


# ---- curves -------------------------------------------------------------------------------

def _curves(history):
    epochs = [h["epoch"] for h in history]
    loss = [h["loss"] for h in history]
    acc = [("train", TRAIN, [h["train_accuracy"] for h in history]),
           ("test", TEST, [h["test_accuracy"] for h in history])]
    return ("<div class='curves'>"
            + _plot(epochs, [("loss", LOSS, loss)], "training loss (log scale)", log=True)
            + _plot(epochs, acc, "accuracy", legend_low=True) + "</div>")


def _plot(xs, series, title, log=False, legend_low=False, width=480, height=280):
    """An SVG line chart of series [(label, colour, ys)] over xs, with axes, ticks and legend."""
    left, right, top, bottom = 56, 16, 28, 40
    values = [v for _, _, ys in series for v in ys if np.isfinite(v) and (v > 0 or not log)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if log:
        lo, hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        hi = max(hi, lo + 1)
        every = math.ceil((hi - lo) / 6)  # at most 7 decades labelled
        ticks = [(v, f"1e{v}" if abs(v) > 2 else f"{10.0 ** v:g}")
                 for v in range(hi, lo - 1, -every)]
        fy = lambda v: math.log10(max(v, 10.0 ** lo))  # noqa: E731
    else:
        lo, hi = math.floor(lo * 10) / 10, max(math.ceil(hi * 10) / 10, lo + 0.1)
        step = next(s for s in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0) if (hi - lo) / s <= 6)
        ticks = [(v, f"{v:.2f}") for v in np.arange(lo, hi + 1e-9, step)]
        fy = lambda v: v  # noqa: E731
    x0, x1 = min(xs, default=0), max(max(xs, default=1), min(xs, default=0) + 1)
    px = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    ty = lambda v: top + (hi - v) / (hi - lo) * (height - top - bottom)  # noqa: E731
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"role='img' aria-label='{_e(title)}'>",
           f"<text x='{width / 2}' y='18' text-anchor='middle' font-size='14'>{_e(title)}</text>"]
    for v, label in ticks:
        y = ty(v)
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{y:.1f}' y2='{y:.1f}' "
                   f"stroke='#e5e5e5'/><text x='{left - 6}' y='{y + 4:.1f}' font-size='11' "
                   f"text-anchor='end'>{label}</text>")
    for x in _int_ticks(x0, x1):
        out.append(f"<text x='{px(x):.1f}' y='{height - bottom + 16}' font-size='11' "
                   f"text-anchor='middle'>{x}</text>")
    out.append(f"<text x='{(left + width - right) / 2}' y='{height - 6}' font-size='12' "
               f"text-anchor='middle'>epoch</text>")
    out.append(f"<rect x='{left}' y='{top}' width='{width - left - right}' "
               f"height='{height - top - bottom}' fill='none' stroke='#888'/>")
    for i, (label, color, ys) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{ty(fy(y)):.1f}" for x, y in zip(xs, ys)
                          if np.isfinite(y) and (y > 0 or not log))
        out.append(f"<polyline points='{points}' fill='none' stroke='{color}' "
                   f"stroke-width='2.5'/>")
        ly = (height - bottom - 14 - 16 * (len(series) - 1 - i)) if legend_low else \
            (top + 14 + 16 * i)
        out.append(f"<line x1='{width - right - 70}' x2='{width - right - 50}' y1='{ly}' "
                   f"y2='{ly}' stroke='{color}' stroke-width='3'/><text x='{width - right - 46}'"
                   f" y='{ly + 4}' font-size='12'>{_e(label)}</text>")
    out.append("</svg>")
    return "".join(out)


def _int_ticks(x0, x1, most=8):
    """x0, then the multiples of a round step (1, 2, 5, 10, 20, 50, ...) up to x1."""
    step = 1
    while (x1 - x0) / step > most:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    first = int(x0)
    return [first] + [t for t in range(step * (first // step + 1), int(x1) + 1, step)
                      if t - first >= step / 2]


# ---- confusion matrix ----------------------------------------------------------------------

def _confusion(y, pred, classes):
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (y, pred), 1)
    rows = ["<table class='confusion'><tr><th>true \\ predicted</th>"
            + "".join(f"<th>{c}</th>" for c in range(classes)) + "<th>recall</th></tr>"]
    for t in range(classes):
        total = counts[t].sum()
        cells = []
        for p in range(classes):
            n = counts[t, p]
            share = n / total if total else 0.0
            # the diagonal in green, errors in red; the deeper, the larger the share of the row
            color = f"rgba(44,160,44,{share:.2f})" if t == p else f"rgba(214,39,40,{share:.2f})"
            cells.append(f"<td style='background:{color if n else '#fff'}'>{n}</td>")
        recall = f"{counts[t, t] / total:.3f}" if total else "-"
        rows.append(f"<tr><th>{t}</th>{''.join(cells)}<td>{recall}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


# ---- misclassified examples -----------------------------------------------------------------

def _examples(x, y, pred, probabilities):
    wrong = np.flatnonzero(pred != y)
    if wrong.size == 0:
        return "<p class='note'>None: every test example is classified correctly.</p>"
    # the most confident mistakes first
    wrong = wrong[np.argsort(-probabilities[wrong, pred[wrong]], kind="stable")]
    shown = wrong[:MAX_EXAMPLES]
    which = "all" if shown.size == wrong.size else f"the {shown.size} most confident"
    note = f"<p class='note'>{wrong.size} of {len(y)} test examples are misclassified; {which} "
    features = x.shape[1]
    if features == 2:
        return (note + "ringed in black on the test set, coloured by true class.</p>"
                + _scatter(x, y, set(shown.tolist())))
    note += "shown as (true class, predicted class, its probability).</p>"
    side = math.isqrt(features)
    cards = []
    for i in shown:
        if side * side == features and side >= 4:
            picture = (f"<img alt='test example {i}' src='data:image/png;base64,"
                       f"{base64.b64encode(png_gray(_ink(x[i].reshape(side, side)))).decode()}'>")
        else:
            picture = _sparkline(x[i])
        cards.append(f"<div class='example'>{picture}<br>true {y[i]}, predicted {pred[i]} "
                     f"({probabilities[i, pred[i]]:.2f})</div>")
    return note + "<div class='examples'>" + "".join(cards) + "</div>"


def _ink(image):
    """Pixels scaled to 0..255 with high values dark (ink on paper), as uint8."""
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return (255 - np.round(scaled * 255)).astype(np.uint8)


def png_gray(pixels):
    """A grayscale 8-bit PNG of the uint8 array pixels (height, width), as bytes."""
    h, w = pixels.shape
    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(pixels, np.uint8))

    def chunk(tag, body):
        return (struct.pack(">I", len(body)) + tag + body
                + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _sparkline(values, width=84, height=84):
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo or 1.0
    n = max(len(values) - 1, 1)
    points = " ".join(f"{2 + i / n * (width - 4):.1f},{2 + (hi - v) / span * (height - 4):.1f}"
                      for i, v in enumerate(values))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"style='border:1px solid #999'><polyline points='{points}' fill='none' "
            f"stroke='#333' stroke-width='1.5'/></svg>")


def _scatter(x, y, marked, size=420):
    """The 2-D test set coloured by true class; the shown mistakes ringed in black."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    p = 10 + (x - lo) / span * (size - 20)
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' "
           f"style='border:1px solid #ddd'>"]
    for i, ((px, py), c) in enumerate(zip(p, y)):
        color = CLASS_COLORS[int(c) % len(CLASS_COLORS)]
        out.append(f"<circle cx='{px:.1f}' cy='{size - py:.1f}' r='3' fill='{color}'/>")
        if i in marked:
            out.append(f"<circle cx='{px:.1f}' cy='{size - py:.1f}' r='6' fill='none' "
                       f"stroke='#000' stroke-width='1.5'/>")
    out.append("</svg>")
    return "".join(out)


# ---- settings -------------------------------------------------------------------------------

def _settings(m):
    rows = [("model", m.get("model")), ("ran on", f"{m.get('device')} ({m.get('device_name')})"),
            ("BLAS threads", m.get("threads") or "the BLAS's default"),
            ("training time", f"{m['seconds']:.2f} s"), ("finished", m.get("timestamp"))]
    # the run's settings, named as `gpugrad train`'s options
    rows += [("standardize inputs" if k == "standardize" else "--" + k.replace("_", "-"),
              _setting(k, v)) for k, v in m.get("config", {}).items()]
    rows += [(f"{k} version", v or "not installed") for k, v in m.get("versions", {}).items()]
    return ("<table class='settings'>"
            + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
            + "</table>")


def _setting(key, value):
    if key == "hidden":
        return ",".join(map(str, value)) or "none"
    if value is None:
        return "(default)" if key == "threads" else "-"
    return value

"""report.html (issue 14): what the page holds for each kind of input, that it is self-contained,
and that a real headless browser renders it to a picture that is not blank.

The browser test needs Debian's `chromium` (apt-get install chromium; GPUGRAD_CHROMIUM may name
another binary) and Pillow to read the screenshot; it skips, saying which is missing, without
them."""
import html
import os
import re
import shutil
import subprocess
import zlib

import numpy as np
import pytest

from gpugrad import report_html
from gpugrad.report_html import png_gray, render


def _metrics(epochs=5, dataset="toy"):
    history = [{"epoch": e, "loss": 2.0 * 0.3 ** e, "lr": 0.1, "seconds": 0.01,
                "train_accuracy": 1 - 0.5 / e, "test_accuracy": 1 - 0.6 / e}
               for e in range(1, epochs + 1)]
    return {"dataset": dataset, "device": "cpu", "device_name": "a CPU, 2 cores",
            "engine": "executor", "model": "Standardize-4-8-3 relu", "seconds": 0.5,
            "train_accuracy": history[-1]["train_accuracy"],
            "test_accuracy": history[-1]["test_accuracy"],
            "timestamp": "2026-11-30T12:00:00+00:00", "threads": 1,
            "versions": {"gpugrad": "0.1.0", "numpy": np.__version__, "cupy": None},
            "config": {"dataset": dataset, "lr": 0.1, "hidden": [8], "threads": None,
                       "data": None, "standardize": True, "out": "<runs/&x>"},
            "history": history}


def _case(features, n=60, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n)
    probs = rng.random((n, classes)).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    return x, y, probs.argmax(axis=1), probs


def _confusion_counts(page):
    table = page.split("<table class='confusion'>")[1].split("</table>")[0]
    rows = table.split("<tr>")[2:]
    return np.array([[int(v) for v in re.findall(r"<td style='[^']*'>(\d+)</td>", row)]
                     for row in rows])


def test_page_holds_curves_confusion_matrix_examples_and_settings():
    x, y, pred, probs = _case(64, classes=10)
    page = render(_metrics(), x, y, pred, probs)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # curves: the loss (log scale) and the two accuracies
    assert "training loss (log scale)" in page
    for color in (report_html.LOSS, report_html.TRAIN, report_html.TEST):
        assert "<polyline points='" in page and f"stroke='{color}'" in page
    # the confusion matrix counts every test sample, the diagonal the correct ones
    counts = _confusion_counts(page)
    assert counts.shape == (10, 10) and counts.sum() == len(y)
    assert np.trace(counts) == (pred == y).sum()
    expected = np.zeros((10, 10), int)
    np.add.at(expected, (y, pred), 1)
    np.testing.assert_array_equal(counts, expected)
    # misclassified examples as 8x8 PNG pictures, the most confident mistakes first
    wrong = int((pred != y).sum())
    assert page.count("<img alt='test example") == min(wrong, report_html.MAX_EXAMPLES)
    assert f"{wrong} of {len(y)} test examples are misclassified" in page
    # settings, escaped
    assert "<th>--lr</th><td>0.1</td>" in page and "<th>--hidden</th><td>8</td>" in page
    assert html.escape("<runs/&x>") in page and "<runs/&x>" not in page
    assert "numpy version" in page and "cupy version</th><td>not installed" in page


def test_page_is_self_contained():
    page = render(_metrics(), *_case(64, classes=10))
    assert "<script" not in page.lower()
    urls = re.findall(r"(?:src|href)\s*=\s*['\"]([^'\"]+)", page)
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls)
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)


def test_two_feature_inputs_get_a_scatter_and_others_a_line():
    page = render(_metrics(), *_case(2))
    assert page.count("<circle") >= 60 and "<img" not in page
    page = render(_metrics(), *_case(40, classes=10))  # MNIST-1D's 40 features: not square
    assert "<img" not in page and page.count("<polyline") > 3


def test_the_note_says_which_mistakes_are_shown():
    x, y, _, probs = _case(64)
    pred = y.copy()
    pred[:3] = (y[:3] + 1) % 3
    page = render(_metrics(), x, y, pred, probs)
    assert "3 of 60 test examples are misclassified; all shown as (true class" in page
    page = render(_metrics(), *_case(64, n=200))
    assert re.search(r"\d+ of 200 test examples are misclassified; the 24 most confident shown",
                     page)
    x, y, pred, probs = _case(2)
    assert "ringed in black on the test set" in render(_metrics(), x, y, pred, probs)


def test_epoch_ticks_are_round_numbers():
    assert list(report_html._int_ticks(1, 60)) == [1, 10, 20, 30, 40, 50, 60]
    assert list(report_html._int_ticks(1, 300)) == [1, 50, 100, 150, 200, 250, 300]
    assert list(report_html._int_ticks(1, 5)) == [1, 2, 3, 4, 5]


def test_no_mistakes_is_said():
    x, y, _, probs = _case(64)
    page = render(_metrics(), x, y, y, probs)
    assert "None: every test example is classified correctly." in page


def test_png_gray_is_a_valid_png():
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    data = png_gray(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # IHDR: 4 x 3, 8-bit grayscale; IDAT: filter byte 0 + the row, each row
    assert data[16:24] == (4).to_bytes(4, "big") + (3).to_bytes(4, "big")
    idat = data.index(b"IDAT")
    size = int.from_bytes(data[idat - 4:idat], "big")
    raw = zlib.decompress(data[idat + 4:idat + 4 + size])
    assert raw == b"".join(b"\x00" + row.tobytes() for row in pixels)
    pil = pytest.importorskip("PIL.Image")
    import io
    np.testing.assert_array_equal(np.asarray(pil.open(io.BytesIO(data))), pixels)


# ---- a real browser -------------------------------------------------------------------------

def _chromium():
    for name in (os.environ.get("GPUGRAD_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium to render report.html in (Debian: apt-get install chromium; or "
                "set GPUGRAD_CHROMIUM to a Chromium binary)")


def screenshot(page_path, png_path, profile, width=1200, height=1800):
    """Render page_path in headless Chromium into png_path; returns the CompletedProcess."""
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
            f"--window-size={width},{height}", f"--screenshot={png_path}",
            f"file://{os.path.abspath(page_path)}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def _has(rgb, hex_color, tolerance=12):
    target = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb.astype(int) - target).max(axis=-1) <= tolerance).sum())


def test_report_renders_in_headless_chromium(tmp_path):
    chromium = _chromium()
    image = pytest.importorskip("PIL.Image", reason="Pillow reads the screenshot (pip install "
                                "pillow; it comes with matplotlib)")
    x, y, pred, probs = _case(64, classes=10)
    page = tmp_path / "report.html"
    page.write_text(render(_metrics(epochs=20), x, y, pred, probs))
    r = screenshot(page, tmp_path / "shot.png", tmp_path / "profile")
    assert r.returncode == 0 and (tmp_path / "shot.png").exists(), (chromium, r.stderr[-2000:])
    rgb = np.asarray(image.open(tmp_path / "shot.png").convert("RGB"))
    assert rgb.shape[:2] == (1800, 1200)
    ink = (rgb.min(axis=-1) < 200).mean()
    assert ink > 0.02, f"the screenshot is blank: {ink:.2%} of pixels are not white"
    # the three curves, the confusion matrix's green diagonal and the digit pictures were drawn
    for color in (report_html.LOSS, report_html.TRAIN, report_html.TEST):
        assert _has(rgb, color) > 100, color
    assert _has(rgb, "#000000", tolerance=30) > 500  # the text and the examples' dark ink

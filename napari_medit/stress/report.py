"""report.html: the stress test's figures (matplotlib, embedded), for a reader without Python."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

GALLERY = 6  # cases shown


def _figure_html(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def write_html(path: Path, report: dict, rows: list[dict], cases, spec) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..jobs import write_text_atomically

    measures = list(report["original"])
    figure, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 2.8))
    for axis, measure in zip(np.atleast_1d(axes), measures, strict=True):
        values = [report["original"][measure], report["edited"][measure]]
        axis.bar(["original", "edited"], values, color=["#4a7ab5", "#c0504d"])
        axis.set_title(measure)
        for x, v in enumerate(values):
            axis.text(x, v, f"{v:.3g}", ha="center", va="bottom")
    bars = _figure_html(figure)

    kept = [r for r in rows if r["kept"]]
    figure, axis = plt.subplots(figsize=(5, 2.8))
    key = "probability" if "positive rate" in report["original"] else "dice"
    axis.hist(
        [[r[f"original_{key}"] for r in rows if f"original_{key}" in r], [r[f"edited_{key}"] for r in kept]],
        bins=10,
        label=["original", "edited (kept)"],
        color=["#4a7ab5", "#c0504d"],
    )
    axis.set_xlabel(key)
    axis.legend()
    distribution = _figure_html(figure)

    shown = kept[:GALLERY]
    gallery = ""
    if shown:
        figure, axes = plt.subplots(len(shown), 2, figsize=(5.6, 2.8 * len(shown)), squeeze=False)
        for (left, right), row in zip(axes, shown, strict=True):
            left.imshow(row["source"], cmap="gray")
            right.imshow(row["edited_array"], cmap="gray")
            left.set_title(f"{row['id']} original", fontsize=8)
            if key == "probability":
                left.set_xlabel(f"model: {row['original_probability']:.2f}", fontsize=8)
                right.set_xlabel(
                    f"model: {row['edited_probability']:.2f}; filter {row['filter_says']}", fontsize=8
                )
            else:
                left.contour(row["original_prediction"], levels=[0.5], colors="r", linewidths=0.7)
                right.contour(row["edited_prediction"], levels=[0.5], colors="r", linewidths=0.7)
                left.set_xlabel(f"Dice {row['original_dice']:.3f}", fontsize=8)
                right.set_xlabel(f"Dice {row['edited_dice']:.3f}", fontsize=8)
            right.set_title("edited (kept)", fontsize=8)
            for axis in (left, right):
                axis.set_xticks([])
                axis.set_yticks([])
        figure.subplots_adjust(hspace=0.35)
        gallery = _figure_html(figure)
    paired = report.get("original_of_kept", {})
    numbers = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{report['original'][m]:.4g}</td>"
        + (f"<td>{paired[m]:.4g}</td>" if paired else "")
        + f"<td>{report['edited'][m]:.4g}</td></tr>"
        for m in measures
    )
    kept_before = "<th>original (kept cases)</th>" if paired else ""
    text = f"""<!doctype html><html><head><meta charset="utf-8">
<title>napari-medit stress test: {spec.scenario.value}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{padding:.2em .8em;text-align:right}}</style></head>
<body><h1>Stress test: {spec.scenario.value}</h1>
<p>{html.escape(spec.says)} ({html.escape(spec.reference)}).
Editor: {html.escape(str(report["editor"]))}, {html.escape(report["method"])},
prompt '{html.escape(report["prompt"])}'.
Model under test: {html.escape(str(report["model_under_test"]))}.</p>
<p>{report["n_generated"]} edits generated, {report["n_kept"]} kept by the filter
({html.escape(report["filter"]["judge"])}: {html.escape(report["filter"]["keeps"])});
{report["n_failed"]} failed.
Truth: {html.escape(report["truth"])}.</p>
<table><tr><th>measure</th><th>original</th>{kept_before}<th>edited (kept)</th></tr>{numbers}</table>
<h2>Original against edited</h2>{bars}
<h2>Distribution</h2>{distribution}
<h2>Cases</h2>{gallery or "<p>No edit was kept.</p>"}
</body></html>
"""
    return write_text_atomically(path, text)

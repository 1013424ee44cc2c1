"""Every chart of the dashboard, as pure functions: plain data in, a plotly figure out.

Pages only fetch data and place these figures; keeping them here makes them testable without
Streamlit and keeps one look (axis titles, colours, percent formats) across pages.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import plotly.graph_objects as go

from core.config import MAX_COUNT
from core.reconcile.inventory import MISMATCH_THRESHOLD, AuditCurve, is_mismatch
from core.store.records import count_label

COUNT_TITLE = "items in the bin"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
NEUTRAL = "#b0b7c3"
MATCH = "#2ca02c"
MISMATCH = "#d62728"
SPLIT_PREFIXES = ("train", "val", "valid", "test")  # curve columns are <split>_<metric>
SPLIT_DASH = {"train": "solid", "val": "dash", "valid": "dash", "test": "dot", "": "solid"}


def _layout(fig: go.Figure, title: str | None = None, height: int = 360) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=50 if title else 20, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
    return fig


def _count_axis(num_classes: int, open_top: bool = False) -> dict:
    """The count axis; with an open top class its last tick reads "6+" (more than 5)."""
    return dict(title=COUNT_TITLE, tickmode="array", tickvals=list(range(num_classes)),
                ticktext=[count_label(k, num_classes, open_top, short=True) for k in range(num_classes)],
                range=[-0.5, num_classes - 0.5])


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def count_histogram(counts: npt.ArrayLike, num_classes: int = MAX_COUNT + 1, title: str | None = None) -> go.Figure:
    """How many photos hold each count: bars 0..num_classes-1, labelled with number and share."""
    values = np.asarray(counts, dtype=int)
    per_class = np.bincount(values[(values >= 0) & (values < num_classes)], minlength=num_classes)
    share = per_class / max(per_class.sum(), 1)
    fig = go.Figure(go.Bar(
        x=list(range(num_classes)), y=per_class, marker_color=colour(0),
        text=[f"{n:,}<br>{s:.0%}" for n, s in zip(per_class, share, strict=True)], textposition="outside",
        hovertemplate="%{x} items: %{y} photos<extra></extra>",
    ))
    fig.update_xaxes(**_count_axis(num_classes))
    fig.update_yaxes(title="photos", range=[0, per_class.max() * 1.25 + 1])
    return _layout(fig, title)


def split_curve_column(column: str) -> tuple[str, str]:
    """`val_loss` -> ("val", "loss"); a column without a phase prefix (`lr`) -> ("", "lr")."""
    phase, _, rest = column.partition("_")
    return (phase, rest) if phase in SPLIT_PREFIXES and rest else ("", column)


def curve_metrics(curves: Mapping[str, pd.DataFrame]) -> list[str]:
    """The metrics logged per phase (`train_loss`, `val_rmse`...) in per-epoch frames, loss first,
    then the learning rate if logged; bookkeeping columns (image size, seconds...) are not curves."""
    found: set[str] = set()
    for frame in curves.values():
        for column in frame.columns:
            phase, metric = split_curve_column(column)
            if (phase or column == "lr") and pd.api.types.is_numeric_dtype(frame[column]):
                found.add(metric)
    return sorted(found, key=lambda m: (m == "lr", m != "loss", m))


def curves_figure(curves: Mapping[str, pd.DataFrame], metric: str, title: str | None = None) -> go.Figure:
    """One metric per epoch for several experiments: colour = experiment, dash = train/val."""
    fig = go.Figure()
    last_epoch = max((frame["epoch"].max() for frame in curves.values() if len(frame)), default=1)
    for i, (label, frame) in enumerate(curves.items()):
        for column in frame.columns:
            phase, name = split_curve_column(column)
            if name != metric or column == "epoch":
                continue
            fig.add_trace(go.Scatter(
                x=frame["epoch"], y=frame[column], mode="lines+markers", name=f"{label} · {phase or metric}",
                line=dict(color=colour(i), dash=SPLIT_DASH.get(phase, "solid")), marker=dict(size=5),
                hovertemplate=f"{label}<br>{column}: %{{y:.4g}} at epoch %{{x}}<extra></extra>",
            ))
    fig.update_xaxes(title="epoch", dtick=1 if last_epoch <= 20 else None)
    fig.update_yaxes(title=metric.replace("_", " "))
    if "acc" in metric:
        fig.update_yaxes(tickformat=".0%")
    return _layout(fig, title)


def per_class_bars(values: Mapping[str, Sequence[float | None]], what: str = "accuracy",
                   title: str | None = None,
                   intervals: Mapping[str, Sequence[Sequence[float] | None]] | None = None,
                   open_top: bool = False) -> go.Figure:
    """A value per count class (accuracy or RMSE) for one or more experiments, as grouped bars,
    with error bars where `intervals` gives a [low, high] per class."""
    percent = what == "accuracy"
    fig = go.Figure()
    num_classes = max((len(v) for v in values.values()), default=MAX_COUNT + 1)
    for i, (label, per_class) in enumerate(values.items()):
        y = [math.nan if v is None else v for v in per_class]
        bounds = list((intervals or {}).get(label) or [])
        bounds += [None] * (len(y) - len(bounds))
        error = dict(type="data", symmetric=False, color="#555",
                     array=[math.nan if b is None else b[1] - v for b, v in zip(bounds, y, strict=True)],
                     arrayminus=[math.nan if b is None else v - b[0] for b, v in zip(bounds, y, strict=True)]) \
            if any(b is not None for b in bounds) else None
        fig.add_trace(go.Bar(
            x=list(range(len(y))), y=y, name=label, marker_color=colour(i), error_y=error,
            text=[("" if math.isnan(v) else f"{v:.0%}" if percent else f"{v:.2f}") for v in y],
            textposition="outside",
            hovertemplate=f"{label}<br>%{{x}} items: %{{y:{'.1%' if percent else '.3f'}}}<extra></extra>",
        ))
    fig.update_layout(barmode="group", showlegend=len(values) > 1)
    fig.update_xaxes(**_count_axis(num_classes, open_top))
    if percent:
        fig.update_yaxes(title=what, tickformat=".0%", range=[0, 1.12])
    else:
        fig.update_yaxes(title=what)
    return _layout(fig, title)


def confusion_heatmap(matrix: npt.ArrayLike, normalise: bool = False, title: str | None = None,
                      open_top: bool = False) -> go.Figure:
    """Rows = true count, columns = predicted count; cells show photo counts (and row shares).

    Each cell also carries an invisible marker (x = predicted, y = true): heatmaps report no
    clicks, markers do, so a click on the chart (Streamlit's `on_select`) says which cell it was.
    """
    counts = np.asarray(matrix, dtype=int)
    n = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    z = shares if normalise else counts
    text = [[f"{counts[t, p]}<br>{shares[t, p]:.0%}" if normalise else f"{counts[t, p]}" for p in range(n)]
            for t in range(n)]
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(n)), y=list(range(n)), text=text, texttemplate="%{text}", colorscale="Blues",
        zmin=0, zmax=1 if normalise else max(int(counts.max()), 1), showscale=False, hoverinfo="skip",
    ))
    true_idx, pred_idx = np.meshgrid(range(n), range(n), indexing="ij")
    fig.add_trace(go.Scatter(
        x=pred_idx.ravel(), y=true_idx.ravel(), mode="markers",
        marker=dict(size=28, symbol="square", color="rgba(0,0,0,0)"),
        customdata=np.stack([true_idx.ravel(), pred_idx.ravel(), counts.ravel()], axis=1),
        hovertemplate="true %{customdata[0]}, predicted %{customdata[1]}: %{customdata[2]} photos<extra></extra>",
        showlegend=False,
    ))
    ticks = dict(tickmode="array", tickvals=list(range(n)),
                 ticktext=[count_label(k, n, open_top, short=True) for k in range(n)])
    fig.update_xaxes(title="predicted count", side="top", showgrid=False, zeroline=False, **ticks)
    fig.update_yaxes(title="true count", autorange="reversed", showgrid=False, zeroline=False, **ticks)
    return _layout(fig, title, height=420)


def lr_finder_figure(curves: Sequence[Mapping]) -> go.Figure:
    """Loss against learning rate (log scale), one line per curve, its suggested rate starred.

    Each curve: {"label", "lrs", "losses", "suggested" (float or None)}. The y axis shows the
    useful range only, as fastai's plot does: from the lowest loss to a little above the highest
    starting loss. A sweep ends once the loss diverges (several times its minimum); drawn to
    the top, that tail would flatten the descent before the minimum, which is what one reads.
    """
    fig = go.Figure()
    for i, curve in enumerate(curves):
        lrs = np.asarray(curve["lrs"], dtype=float)
        losses = np.asarray(curve["losses"], dtype=float)
        fig.add_trace(go.Scatter(x=lrs, y=losses, mode="lines", name=curve["label"], line=dict(color=colour(i)),
                                 legendgroup=str(i), hovertemplate="lr %{x:.2e}: loss %{y:.4f}<extra></extra>"))
        suggested = curve.get("suggested")
        if suggested and suggested > 0 and len(lrs):  # starred even outside the sweep, at the edge's loss
            order = np.argsort(lrs)
            loss_at = float(np.interp(np.log10(suggested), np.log10(lrs[order]), losses[order]))
            fig.add_trace(go.Scatter(
                x=[suggested], y=[loss_at], mode="markers+text", name=f"{curve['label']} · suggested",
                legendgroup=str(i), showlegend=False,
                marker=dict(symbol="star", size=16, color=colour(i), line=dict(color="black", width=1)),
                text=[f"{suggested:.1e}"], textposition="top center",
                hovertemplate="suggested lr %{x:.2e}<extra></extra>",
            ))
    fig.update_xaxes(title="learning rate", type="log", exponentformat="power")
    fig.update_yaxes(title="loss", range=_lr_finder_loss_range(curves))
    return _layout(fig, None, height=400)


def _lr_finder_loss_range(curves: Sequence[Mapping], margin: float = 0.1) -> list[float] | None:
    """[lowest loss, highest starting loss], widened by `margin` of its height; None (autorange) if no losses."""
    starts, lows = [], []
    for curve in curves:
        losses = np.asarray(curve["losses"], dtype=float)
        losses = losses[np.isfinite(losses)]
        if len(losses):
            starts.append(losses[0])
            lows.append(losses.min())
    if not starts:
        return None
    low, high = min(lows), max(starts)
    pad = margin * (high - low) or margin * max(abs(high), 1e-3)  # a flat sweep still gets some room
    return [low - pad, high + pad]


def probability_bars(probabilities: Sequence[float], recorded: int | None = None, title: str | None = None,
                     open_top: bool = False, counted: int | None = None) -> go.Figure:
    """The model's probability for each count; the count shown (default: the most likely) is
    coloured, the recorded one marked."""
    probs = np.asarray(probabilities, dtype=float)
    predicted = int(np.argmax(probs)) if counted is None else counted
    colours = [colour(0) if k == predicted else NEUTRAL for k in range(len(probs))]
    lines = [3 if k == recorded else 0 for k in range(len(probs))]
    fig = go.Figure(go.Bar(
        x=list(range(len(probs))), y=probs, marker=dict(color=colours, line=dict(color="black", width=lines)),
        text=[f"{p:.0%}" for p in probs], textposition="outside",
        hovertemplate="%{x} items: %{y:.1%}<extra></extra>",
    ))
    if recorded is not None and 0 <= recorded < len(probs):
        fig.add_annotation(x=recorded, y=probs[recorded], yshift=28, text="recorded", showarrow=False)
    fig.update_xaxes(**_count_axis(len(probs), open_top))
    fig.update_yaxes(title="probability", tickformat=".0%", range=[0, 1.15])
    return _layout(fig, title, height=300)


def mismatch_bars(report: pd.DataFrame, threshold: float | None) -> go.Figure:
    """Probability of a mismatch per bin (a reconcile report), red where the bin is flagged (the
    report's `mismatch` column where it has one, e.g. an audit budget; threshold None: no line)."""
    report = report.dropna(subset=["p_mismatch"]).sort_values("p_mismatch", ascending=False)
    rule = MISMATCH_THRESHOLD if threshold is None else threshold
    flagged = report["mismatch"] if "mismatch" in report else [is_mismatch(p, rule) for p in report["p_mismatch"]]
    fig = go.Figure(go.Bar(
        x=report["image"], y=report["p_mismatch"],
        marker_color=[MISMATCH if f else MATCH for f in flagged],
        customdata=np.stack([report["recorded_quantity"], report["predicted_count"]], axis=1) if len(report) else None,
        hovertemplate="%{x}<br>recorded %{customdata[0]}, counted %{customdata[1]}<br>"
                      "probability of a mismatch %{y:.0%}<extra></extra>",
    ))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="black", annotation_text="threshold")
    fig.update_xaxes(title="bin photo", type="category")
    fig.update_yaxes(title="probability of a mismatch", tickformat=".0%", range=[0, 1.05])
    return _layout(fig, None, height=320)


def coverage_curve(coverage: Sequence[float], accuracy: Sequence[float], title: str | None = None) -> go.Figure:
    """Accuracy on the model's most certain bins against the share of bins it decides.

    Read it as: "if people recount only the bins the model is least sure of, how often is the
    model right on the rest?" The right end is the plain test accuracy.
    """
    fig = go.Figure(go.Scatter(
        x=coverage, y=accuracy, mode="lines", line=dict(color=colour(0), width=3), fill="tozeroy",
        fillcolor="rgba(31,119,180,0.12)",
        hovertemplate="the model decides the %{x:.0%} bins it is surest of: right on %{y:.0%}<extra></extra>",
    ))
    fig.update_xaxes(title="share of bins the model decides (the rest are recounted)", tickformat=".0%", range=[0, 1])
    fig.update_yaxes(title="accuracy on the bins it decides", tickformat=".0%", range=[0, 1.02])
    return _layout(fig, title)


def audit_value_curve(curve: AuditCurve, title: str | None = None) -> go.Figure:
    """What a recount budget buys (`core.reconcile.inventory.audit_curve`): share of wrong records caught
    against share of bins recounted, riskiest first; the diagonal is recounting in random order
    and the star is what the threshold flags."""
    recounted, caught = np.asarray(curve.recounted), np.asarray(curve.caught)
    fig = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="random order", line=dict(color=NEUTRAL, dash="dash"),
                   hoverinfo="skip"),
        go.Scatter(x=recounted, y=caught, mode="lines", name="riskiest first", line=dict(color=colour(0), width=3),
                   hovertemplate="recount %{x:.0%} of the bins: catch %{y:.0%} of the wrong records<extra></extra>"),
    ])
    if curve.n:
        share = curve.flagged / curve.n
        fig.add_trace(go.Scatter(
            x=[share], y=[float(np.interp(share, recounted, caught))], mode="markers", name="flagged by the threshold",
            marker=dict(symbol="star", size=16, color=MISMATCH, line=dict(color="black", width=1)),
            hovertemplate=f"P(mismatch) >= {curve.threshold:.2f}: %{{x:.0%}} of the bins, "
                          "%{y:.0%} of the wrong records<extra></extra>"))
    fig.update_xaxes(title="share of bins recounted, riskiest first", tickformat=".0%", range=[0, 1])
    fig.update_yaxes(title="share of wrong records caught", tickformat=".0%", range=[0, 1.02])
    return _layout(fig, title)


def learning_curve_figure(points: Sequence[tuple[int, float]], fit_line: Sequence[tuple[int, float]],
                          projections: Sequence[tuple[int, float, float, float]],
                          anchors: Sequence[tuple[str, int, float]],
                          marks: Sequence[tuple[str, int, float]] = ()) -> go.Figure:
    """Accuracy against training photos (log axis): the runs (`points`: photos, accuracy), the fitted
    line, its projections with their intervals (photos, accuracy, low, high), the published anchors
    (label, photos, accuracy) and other marked runs, such as one trained with recounts."""
    fig = go.Figure()
    if projections:
        xs = [p[0] for p in projections]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[p[3] for p in projections] + [p[2] for p in projections][::-1],
                                 mode="lines", fill="toself", fillcolor="rgba(31,119,180,0.15)", line=dict(width=0),
                                 hoverinfo="skip", name="95% interval of the line"))
    if fit_line:
        fig.add_trace(go.Scatter(x=[p[0] for p in fit_line], y=[p[1] for p in fit_line], mode="lines",
                                 line=dict(color=PALETTE[0], dash="dash"), name="fit: a + b·ln(photos)"))
    fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers",
                             marker=dict(color=PALETTE[0], size=10), name="runs on this data",
                             hovertemplate="%{x:,} photos: %{y:.3f}<extra></extra>"))
    for (label, photos, accuracy), colour in zip(marks, PALETTE[2:], strict=False):
        fig.add_trace(go.Scatter(x=[photos], y=[accuracy], mode="markers", name=label,
                                 marker=dict(color=colour, size=12, symbol="star")))
    fig.add_trace(go.Scatter(x=[a[1] for a in anchors], y=[a[2] for a in anchors], mode="markers+text",
                             text=[a[0] for a in anchors], textposition="bottom left", name="published anchors",
                             marker=dict(color=PALETTE[3], size=11, symbol="diamond")))
    fig.update_xaxes(type="log", title="training photos")
    fig.update_yaxes(title="accuracy, the paper's task (bins of 0..5 items)", tickformat=".0%")
    return _layout(fig, height=440)

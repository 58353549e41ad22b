"""The trade-off picture, ``tradeoff.png``: task gain against held-out drop, one point per
method of a ``ray-s3ft compare`` grid (mean over its seeds) or per run of ``ray-s3ft report``.

    x = held-out drop, points: the base model's held-out mean minus the method's (right = more
        forgetting)
    y = task gain, points: the method's task accuracy minus the base model's

The base model is the origin. The Pareto front (``pareto_front``) is the set of points that no
other point beats on both axes (more gain and less drop); it is drawn as a line, the points
off it hollow. Error bars, per point: the paired standard error of the method's difference to
the base model on the same questions where the grid kept each question's verdict
(``results.json``: ``summary[].vs_base``), else the sample std over the method's seeds, else
none (one seed, or a run of ``report``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE = "base"
ERRORS = {  # a point's error source -> how the caption says it
    "paired": "± the paired standard error of the method's difference to the base model on the "
    "same questions (bootstrap over questions, seeds averaged first)",
    "seeds": "± the sample std over the method's seeds (no paired difference to the base "
    "model recorded)",
    "one seed": "none (one seed, and no paired difference to the base model)",
}


@dataclass
class Point:
    name: str
    drop: float  # points: base held-out mean minus this one's (positive = forgot)
    gain: float  # points: task accuracy minus the base's
    drop_err: float | None = None  # points, the half-length of the error bar
    gain_err: float | None = None
    errors: str | None = None  # a key of ERRORS; None: no error bar (a run, the base)
    base: bool = False  # the base model itself, the origin


def pareto_front(points: list[Point]) -> list[Point]:
    """The points that no other point dominates, by drop ascending (then gain descending, then
    name). q dominates p when q.gain >= p.gain and q.drop <= p.drop with one of them strict, so
    points with the same coordinates never dominate each other: all of them are on the front or
    none is."""
    front = [
        p
        for p in points
        if not any(
            q.gain >= p.gain and q.drop <= p.drop and (q.gain > p.gain or q.drop < p.drop)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: (p.drop, -p.gain, p.name))


def base_point() -> Point:
    """The base model: every gain and drop is measured from it, so it is drawn whether or not
    a grid lists ``base``."""
    return Point(BASE, 0.0, 0.0, base=True)


def grid_points(results: dict, prefix: str = "") -> list[Point]:
    """One point per method of a compare grid's ``results.json`` (its ``summary``) with a task
    gain and a held-out drop, in points (``base`` left out: ``base_point``)."""
    points = []
    for a in results.get("summary") or []:
        gain, drop = (a.get("task_gain") or {}), (a.get("heldout_drop") or {})
        if a["method"] == BASE or gain.get("mean") is None or drop.get("mean") is None:
            continue
        p = Point(prefix + a["method"], 100 * drop["mean"], 100 * gain["mean"])
        vs = a.get("vs_base") or {}
        task_se = (vs.get("task") or {}).get("se")
        held_se = (vs.get("heldout_mean") or {}).get("se")
        if task_se is not None and held_se is not None:
            p.drop_err, p.gain_err, p.errors = 100 * held_se, 100 * task_se, "paired"
        elif (a.get("n_seeds") or 0) > 1 and drop.get("std") is not None:
            p.drop_err, p.gain_err, p.errors = 100 * drop["std"], 100 * gain["std"], "seeds"
        else:
            p.errors = "one seed"
        points.append(p)
    return points


def errors_text(points: list[Point]) -> str:
    """What the error bars are, for the caption: one source, or each source with its points."""
    by: dict[str, list[str]] = {}
    for p in points:
        if p.errors is not None:
            by.setdefault(p.errors, []).append(p.name)
    if not by:
        return "none (one run per point)"
    if len(by) == 1:
        return ERRORS[next(iter(by))]
    return "; ".join(f"{ERRORS[k]} for {', '.join(names)}" for k, names in by.items())


def caption(front: list[str], errors: str, what: str = "method (mean over its seeds)") -> str:
    return (
        f"Task gain against held-out drop, in points, one point per {what}; the base model "
        f"at the origin; error bars: {errors}. The Pareto front (no other point has both more "
        f"task gain and less held-out drop): {', '.join(front)}."
    )


# ---- the figure ----------------------------------------------------------------------------

# label offsets tried in turn (points from the marker): near first, then farther with a leader
_OFFSETS = [(dx * r, dy * r) for r in (1, 2.2, 3.6) for dx, dy in
            ((6, 6), (6, -6), (-6, 6), (-6, -6), (0, 9), (0, -9), (9, 0), (-9, 0))]  # fmt: skip


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _place_labels(fig, ax, points: list[Point]) -> None:
    """Each label at the first offset that overlaps least with the labels placed so far, the
    markers, the error bars and the frame (greedy; far offsets get a leader line)."""
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    pad = 5 * fig.dpi / 72  # a marker's half-width in pixels
    taken = []
    for p in points:  # each marker and each error bar: a box in pixels
        for dx, dy in ((0, 0), (p.drop_err or 0, 0), (0, p.gain_err or 0)):
            (x0, y0), (x1, y1) = ax.transData.transform(
                [(p.drop - dx, p.gain - dy), (p.drop + dx, p.gain + dy)]
            )
            w, h = (pad, pad) if dx == dy == 0 else (pad / 2 if dy else 0, pad / 2 if dx else 0)
            taken.append(Bbox([[x0 - w, y0 - h], [x1 + w, y1 + h]]))
    frame = ax.get_window_extent(renderer)
    for p in points:
        best = None
        for k, (dx, dy) in enumerate(_OFFSETS):
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
            far = k >= 8
            text = ax.annotate(
                p.name, (p.drop, p.gain), xytext=(dx, dy), textcoords="offset points",
                ha=ha, va=va, fontsize=9,
                arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if far else None,
            )  # fmt: skip
            box = text.get_window_extent(renderer)
            outside = box.width * box.height - _overlap(box, frame)
            cost = sum(_overlap(box, t) for t in taken) + 2 * outside
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        taken.append(best[2])


def draw(points: list[Point], path: Path, title: str) -> list[Point]:
    """Draw ``points`` (the base among them at the origin) into ``path``; returns the front."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    front = pareto_front(points)
    on_front = {id(p) for p in front}
    fig = Figure(figsize=(7.5, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axhline(0, color="0.6", lw=0.8, zorder=0)
    ax.axvline(0, color="0.6", lw=0.8, zorder=0)
    ax.plot([p.drop for p in front], [p.gain for p in front], color="tab:blue", lw=1.5, zorder=1)
    for p in points:
        if p.drop_err or p.gain_err:
            ax.errorbar(p.drop, p.gain, xerr=p.drop_err or None, yerr=p.gain_err or None,
                        fmt="none", ecolor="tab:blue" if id(p) in on_front else "0.6",
                        elinewidth=1, capsize=3, zorder=2)  # fmt: skip
        if p.base:
            style = {"marker": "s", "color": "k", "ms": 8}
        elif id(p) in on_front:
            style = {"marker": "o", "color": "tab:blue", "ms": 8}
        else:
            style = {"marker": "o", "mfc": "white", "mec": "0.45", "mew": 1.5, "ms": 8}
        ax.plot([p.drop], [p.gain], ls="none", zorder=3, **style)
    ax.set(
        xlabel="held-out drop (points; right = more forgetting)",
        ylabel="task gain (points)",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(0.12)
    fig.tight_layout()
    _place_labels(fig, ax, sorted(points, key=lambda p: (id(p) not in on_front, p.drop)))
    handles = [
        Line2D([], [], color="tab:blue", marker="o", ms=7, label="Pareto front"),
        Line2D([], [], ls="none", marker="o", mfc="white", mec="0.45", mew=1.5, ms=7,
               label="dominated"),
        Line2D([], [], ls="none", marker="s", color="k", ms=7, label="base model (origin)"),
    ]  # fmt: skip
    # below the axes: a legend inside would cover points
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3,
              fontsize="small", frameon=False)  # fmt: skip
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return front


def write_grid(results: dict, out: Path) -> dict | None:
    """``out/tradeoff.png`` of a compare grid's results; returns what ``results.json`` keeps
    of it (``figure``, ``front``, ``errors``), or None (and no stale figure) when no method but
    the base has a gain and a drop."""
    path = out / "tradeoff.png"
    points = [base_point(), *grid_points(results)]
    if len(points) < 2:
        path.unlink(missing_ok=True)
        return None
    front = draw(points, path, "Task gain against held-out drop")
    return {"figure": path.name, "front": [p.name for p in front], "errors": errors_text(points)}

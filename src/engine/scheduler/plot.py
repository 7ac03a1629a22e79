"""A picture of where each frame's time went: one stacked band per system.

Needs matplotlib, an optional extra (``pip install all-source-engine[bench]``). It is
imported only when a plot is asked for, and drawn with the Agg canvas directly (no
``pyplot``), so no global backend is switched and no window can open.

Example::

    recorder = FrameRecorder(max_frames=20_000)
    ...  # the scheduler records each frame's {system: ns}
    plot_frame_times(recorder, Path("frame_times.png"))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.scheduler.stats import FrameRecorder

INSTALL_HINT = "pip install all-source-engine[bench]"


def plot_frame_times(
    recorder: FrameRecorder,
    path: Path,
    budget_ms: float = 1000 / 90,
    title: str = "Frame time by system",
) -> Path:
    """Write a PNG stacked area chart of per-system frame times to ``path``; return it.

    x is the frame number, y milliseconds; a system absent from a frame (not yet loaded,
    disabled, removed) counts as 0 there. A dashed line marks ``budget_ms``. Parent
    folders are created. Raises ``RuntimeError`` (naming the extra to install) if
    matplotlib is missing, and ``ValueError`` if the recorder holds no frames.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError(f"plotting frame times needs matplotlib: {INSTALL_HINT}") from exc

    if len(recorder) == 0:
        raise ValueError("no frames recorded; nothing to plot")
    names = recorder.names
    times_ms = np.nan_to_num(recorder.matrix(), nan=0.0)
    frames = np.arange(recorder.first_frame, recorder.first_frame + len(recorder))

    figure = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = band_colors(len(names))
    if names:
        axes.stackplot(frames, times_ms.T, labels=names, colors=colors, linewidth=0)
    axes.axhline(
        budget_ms, color="black", linestyle="--", linewidth=1.2, label=f"budget {budget_ms:.2f} ms"
    )
    axes.set_xlim(frames[0], max(frames[-1], frames[0] + 1))
    top = max(budget_ms, float(times_ms.sum(axis=1).max()) if names else 0.0)
    axes.set_ylim(0, top * 1.15)
    axes.set_xlabel("frame")
    axes.set_ylabel("ms")
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize="small", ncol=max(1, (len(names) + 1) // 8))
    axes.grid(alpha=0.3)
    figure.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def band_colors(count: int) -> list[tuple[float, float, float, float]]:
    """The RGBA colours (0..1) of ``count`` bands, in order: tab10, or tab20 past 10.

    Past 20 systems colours repeat (the legend still names every band).
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(count)]

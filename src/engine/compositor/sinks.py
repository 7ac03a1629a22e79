"""Where composed frames go, behind one small interface (:class:`~engine.compositor.loop.Sink`).

* :class:`HeadlessSink` — no display: waits for the frame to be finished, counts it, and on
  close can save the last frame's mirror view as a PNG (``--capture``).
* :class:`MirrorWindowSink` — a desktop window showing the mirror view, for a machine with
  a display, asked for with ``--window``.

The mirror view is the composer's (:meth:`EyeSurface.render_mirror`): both eyes side by
side, or live and preview side by side while a preview publishes, with labels and a HUD.
* An OpenXR swapchain sink belongs here too, once a runtime is present.

A sink gets the composed eyes from an :class:`EyeSurface` (the GL composer).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class EyeSurface(Protocol):
    """The composer's output as a sink sees it."""

    eye_width: int
    eye_height: int

    def finish(self) -> None:
        """Block until every drawing command of the frame has completed."""

    def read_eyes(self) -> np.ndarray:
        """The composed eyes, ``uint8 (2, height, width, 4)``, rows bottom-to-top."""
        ...

    def eye_textures(self) -> tuple[int, int]:
        """GL texture names of the left and right composed eye."""
        ...

    mirror_wanted: bool  # set by a sink that shows the mirror view every frame
    mirror_scale: float  # ... and the size it shows it at
    mirror_text: Any  # what the mirror view says (engine.compositor.mirror.MirrorText)

    def mirror_halves(self) -> tuple[int, int, bool]:
        """The mirror view's left and right textures, and whether it is live | preview."""
        ...

    def render_mirror(self, scale: float = 1.0) -> int:
        """Draw the mirror view offscreen, ``scale`` x (both eyes); its GL texture."""
        ...

    def read_mirror(self) -> np.ndarray:
        """The mirror view last drawn, ``uint8 (height, width, 4)``, rows bottom-to-top."""
        ...


def side_by_side(eyes: np.ndarray) -> np.ndarray:
    """``(2, h, w, 4)`` eyes as one ``(h, 2w, 4)`` image, left eye on the left."""
    return np.concatenate(list(eyes), axis=1)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write ``image`` (h, w, 4) uint8, rows bottom-to-top, as a PNG (top row first).

    Raises ``OSError`` if the file cannot be written.
    """
    import pyglet  # the caller's process has already chosen headless or not

    h, w = image.shape[:2]
    data = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A positive pitch tells pyglet the rows are bottom-to-top; it flips them for the PNG.
    pyglet.image.ImageData(w, h, "RGBA", data, pitch=w * 4).save(str(path))
    return path


#: The mirror window's size: this times both eyes'.
MIRROR_SCALE = 0.5


class HeadlessSink:
    """Counts presented frames; optionally captures the last one to ``capture_path`` on close.

    ``present`` waits for the GPU (or llvmpipe) to finish the frame, which is what a swap
    would wait for, so the compositor's compose time includes the drawing itself.
    ``mirror_each_frame`` draws the mirror view at every present as a window would (at
    the window's scale), with nobody to show it to: what a mirror window costs, measured
    headless (its times, from the drawing to its end, are in :meth:`mirror_stats`).
    """

    def __init__(
        self,
        surface: EyeSurface | None = None,
        capture_path: str | Path | None = None,
        mirror_each_frame: bool = False,
    ):
        self.surface = surface
        self.capture_path = Path(capture_path) if capture_path else None
        self.frames = 0
        self.captured: Path | None = None
        self.mirror_each_frame = mirror_each_frame and surface is not None
        self._mirror_ns: list[int] = []
        if self.mirror_each_frame:  # as a window: the live eye copied at its scale
            surface.mirror_wanted, surface.mirror_scale = True, MIRROR_SCALE

    def present(self, frame: int, display_time_ns: int) -> None:
        if self.surface is not None:
            self.surface.finish()
            if self.mirror_each_frame:
                start = time.perf_counter_ns()
                self.surface.render_mirror(MIRROR_SCALE)
                self.surface.finish()
                self._mirror_ns.append(time.perf_counter_ns() - start)
        self.frames += 1

    def mirror_stats(self) -> dict[str, float] | None:
        """With ``mirror_each_frame``: the mirror view's drawing time, ms (``None`` else)."""
        if not self.mirror_each_frame:
            return None
        from engine.scheduler.stats import summarize

        summary = summarize(self._mirror_ns[-65_536:], 0)
        return {"mirror_ms_p50": summary.p50_ms, "mirror_ms_p99": summary.p99_ms}

    def capture(self, path: str | Path) -> Path:
        """Save the last composed frame now. Raises ``RuntimeError`` without a surface."""
        if self.surface is None:
            raise RuntimeError("a headless sink without a surface has nothing to capture")
        self.surface.render_mirror()
        image = self.surface.read_mirror()
        image[..., 3] = 255  # what a display shows: uncovered (transparent) pixels are black
        return save_png(image, path)

    def close(self) -> None:
        """Capture (if asked to and something was presented). Never raises for a bad path;
        the failure is kept in ``capture_error``."""
        self.capture_error: str | None = None
        if self.capture_path and self.frames and self.surface is not None:
            try:
                self.captured = self.capture(self.capture_path)
            except OSError as exc:
                self.capture_error = f"cannot write {self.capture_path}: {exc}"


class MirrorWindowSink(HeadlessSink):
    """A visible pyglet window showing the mirror view (both eyes, or live and preview).

    Needs a display and a process started with ``PYGLET_HEADLESS=0`` (the compositor
    process sets that when asked for a window). Presents without vsync: the compositor's
    own clock paces it, the window only mirrors. Closing the window just stops mirroring.
    F1 toggles the HUD (``toggle_hud``, called with no argument).

    After the compositor's context was made again (a GPU reset: the surface's
    ``context_resets`` went up), the window is made again too, sharing with the new
    context (the old window's context was lost with the rest, and shared nothing with the
    new one); ``window_listeners`` are called with the new window (the input feed binds
    its events there).
    """

    def __init__(
        self,
        surface: EyeSurface,
        capture_path: str | Path | None = None,
        scale: float = MIRROR_SCALE,
    ) -> None:
        super().__init__(surface, capture_path)
        from engine.render.context import offscreen_context

        w = max(1, int(surface.eye_width * scale))
        h = max(1, int(surface.eye_height * scale))
        self._offscreen_context = offscreen_context
        surface.mirror_wanted, surface.mirror_scale = True, scale
        self._view: Any = None  # the mirror view's drawing, in the window's context
        self._size = (2 * w, h)
        self._resets = getattr(surface, "context_resets", 0)
        self.window_listeners: list[Any] = []
        self.windows_made = 1
        self.open = True
        self.window = self._make_window()
        offscreen_context()

    def _make_window(self) -> Any:
        """The window, in a context sharing with the current offscreen one."""
        from engine.render.context import mirror_window

        window = mirror_window(*self._size, "All-Source Engine - compositor mirror")
        window.set_vsync(False)

        def on_close() -> None:
            self.open = False

        def on_key_press(symbol: int, modifiers: int) -> None:
            from pyglet.window import key

            text = getattr(self.surface, "mirror_text", None)
            if symbol == key.F1 and text is not None:
                text.toggle_hud()

        window.push_handlers(on_close=on_close, on_key_press=on_key_press)
        return window

    def _remake_window(self) -> None:
        """The compositor's context was made again: so is the window, sharing with it."""
        try:
            self.window.close()
        except Exception:  # noqa: BLE001 - a window in a lost context may fail to close
            pass
        self._view = None  # its GL objects were the old window's
        self.window = self._make_window()
        self.windows_made += 1
        for listener in self.window_listeners:
            listener(self.window)

    def present(self, frame: int, display_time_ns: int) -> None:
        super().present(frame, display_time_ns)
        if not self.open:
            return
        from engine.compositor.mirror import MirrorView

        resets = getattr(self.surface, "context_resets", 0)
        if resets != self._resets:
            self._resets = resets
            self._remake_window()
        halves = self.surface.mirror_halves()
        self.window.switch_to()
        self.window.dispatch_events()
        if self._view is None:
            self._view = MirrorView(getattr(self.surface, "mirror_text", None))
        self._view.draw(halves, *self.window.get_framebuffer_size())
        self.window.flip()
        self._offscreen_context()

    def close(self) -> None:
        super().close()
        if self.open:
            self.window.close()


BLIT_SHADER = """
#version 330 core
in vec2 v_ndc;
out vec4 out_color;
uniform sampler2D u_eye;
void main() { out_color = texture(u_eye, (v_ndc + 1.0) * 0.5); }
"""

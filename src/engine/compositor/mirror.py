"""What the mirror view says: the live/preview labels and the HUD, and the text drawing them.

The mirror view (the desktop window and ``--capture``) shows the two eyes side by side, or,
while a preview publishes, the live scene on the left and the preview on the right, each
labelled with the frame rate its layer publishes at. A small HUD in the corner says how
the compositor and the game are doing (:class:`MirrorText`).

Two halves, as elsewhere in the compositor: :class:`MirrorText` is pure (it reads the
loop's watches and counters on the loop's clock, and refreshes its words at most
``REFRESH_NS`` apart, so a test needs no GL and a frame seldom pays for a new layout);
:class:`MirrorView` draws the view into whatever framebuffer is bound: the window's (in
the window's context) or the compositor's offscreen one for the capture (headless EGL
draws text too), the two halves as one textured triangle each and the words with pyglet
(:class:`TextOverlay`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.compositor.loop import CompositorLoop, LayerState

#: Words are recomputed at most this often (a layout costs a fraction of a millisecond).
REFRESH_NS = 250_000_000
#: A mirror lower than this (pixels) has no text: it would cover the picture.
MIN_TEXT_HEIGHT = 120

#: What the supervisor may say the game is doing (``CompositorHandle.tell_game_state``).
GAME_STATES = ("running", "restarting", "excluded", "starting", "stopped", "waiting for an edit")


def game_state(state: LayerState, told: str | None) -> str:
    """The game's state as the HUD says it.

    A fresh layer is ``running`` whatever the supervisor said before; otherwise what the
    supervisor last said (``restarting`` while it brings up a new game), else what the
    layer shows: ``starting`` (no image yet), ``late`` (reprojected from its last image),
    ``excluded``.
    """
    if state is LayerState.FRESH:
        return "running"
    if told is not None:
        return told
    return {
        LayerState.WAITING: "starting",
        LayerState.REPROJECTED: "late",
        LayerState.EXCLUDED: "excluded",
    }[state]


@dataclass
class MirrorText:
    """The mirror's words, read off a running :class:`CompositorLoop`.

    ``labels`` are the two halves' captions while the preview publishes (``"live 90 fps"``,
    ``"preview 45 fps"``); ``hud`` is the HUD's lines. Both are refreshed by
    :meth:`refresh` at most every ``REFRESH_NS`` of the loop's clock; ``version`` counts
    changes, so a drawer lays text out again only when it changed.
    """

    loop: CompositorLoop
    hud_on: bool = True
    #: The live game's status block (a ``StatusReader``): its systems table, under the HUD.
    status: Any = None
    told_state: str | None = None
    labels: tuple[str, str] = ("live", "preview")
    hud: tuple[str, ...] = ()
    version: int = 0
    _refreshed_ns: int | None = None
    _frames_then: tuple[int, int] | None = field(default=None, repr=False)
    _present_fps: float = 0.0

    def __post_init__(self) -> None:
        # The first refresh (a capture's only one) gives the rate since the start.
        self._frames_then = (self.loop.stats.frames, self.loop.clock.now_ns())

    def tell(self, state: str) -> None:
        """What the supervisor says the game is doing (one of ``GAME_STATES``; anything
        else is ignored)."""
        if state in GAME_STATES:
            self.told_state = state
            self._refreshed_ns = None  # say it at the next frame

    def toggle_hud(self) -> None:
        """Show the HUD if hidden, hide it if shown (from the next frame)."""
        self.hud_on = not self.hud_on
        self._refreshed_ns = None

    def refresh(self) -> bool:
        """Recompute the words if ``REFRESH_NS`` has passed; returns whether they changed."""
        loop = self.loop
        now = loop.clock.now_ns()
        if self._refreshed_ns is not None and now - self._refreshed_ns < REFRESH_NS:
            return False
        if self._frames_then is not None:
            frames_then, then = self._frames_then
            if now > then:
                self._present_fps = (loop.stats.frames - frames_then) * 1e9 / (now - then)
        self._frames_then = (loop.stats.frames, now)
        self._refreshed_ns = now
        watches = loop.watches
        game = watches[0] if watches and loop.preview_layer != 0 else None
        if game is not None and game.state is LayerState.FRESH:
            self.told_state = None  # a new image: whatever was said is over
        live_fps = game.published_fps(now) if game is not None else 0.0
        labels = ("live", "preview")
        if loop.preview_layer is not None:
            preview = watches[loop.preview_layer]
            shed = ", shed" if loop.frame + 1 < loop.shedding.shed_until else ""
            labels = (
                f"live {live_fps:.0f} fps",
                f"preview {preview.published_fps(now):.0f} fps{shed}",
            )
        hud: tuple[str, ...] = ()
        if self.hud_on:
            state = game_state(game.state, self.told_state) if game is not None else "none"
            hud = (
                f"compositor {self._present_fps:.0f} fps, missed {loop.stats.missed}",
                f"game {state}, {live_fps:.0f} fps",
            )
            lines = self.status.read() if self.status is not None else None
            if lines:
                hud += lines
        changed = (labels, hud) != (self.labels, self.hud)
        if changed:
            self.labels, self.hud = labels, hud
            self.version += 1
        return changed


class MirrorView:
    """Draws the mirror view into the bound framebuffer: two halves side by side and the
    text over them (``text``: ``None``, no text). Made and drawn in one GL context."""

    def __init__(self, text: MirrorText | None) -> None:
        from engine.compositor.sinks import BLIT_SHADER
        from engine.compositor.timewarp import FullscreenProgram

        self._blit = FullscreenProgram(BLIT_SHADER)
        self.overlay = TextOverlay(text) if text is not None else None

    def draw(
        self, halves: tuple[int, int, bool], width: int, height: int, text: bool = True
    ) -> None:
        """``halves`` is ``(left texture, right texture, split)``
        (``GLComposer.mirror_halves``); the framebuffer is ``width`` x ``height``;
        ``text=False`` leaves the words out.

        Each half is copied as it is, without blending: a premultiplied image copied
        over nothing is that image over black, which is how a display shows it.
        """
        from pyglet import gl

        left, right, split = halves
        gl.glDisable(gl.GL_BLEND)
        gl.glActiveTexture(gl.GL_TEXTURE0)
        for i, texture in enumerate((left, right)):
            gl.glViewport(i * width // 2, 0, width // 2, height)
            gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
            self._blit.draw(u_eye=0)
        gl.glViewport(0, 0, width, height)
        if self.overlay is not None and text:
            self.overlay.draw(width, height, split)


class TextOverlay:
    """Draws a :class:`MirrorText` with pyglet labels into the bound framebuffer.

    Made and drawn in one GL context (pyglet's text objects belong to it). The text is
    laid out again only when the words change; a frame otherwise costs one batch draw.
    """

    def __init__(self, text: MirrorText) -> None:
        import pyglet

        self.text = text
        self._pyglet = pyglet
        self._batch = pyglet.graphics.Batch()
        self._labels: list[Any] = []
        self._layout: tuple[int, int, bool, bool, int] | None = None
        program = pyglet.text.layout.get_default_layout_shader()
        # pyglet's text shaders read their projection from the "WindowBlock" that a window
        # would fill in; offscreen there is none, so this one is ours.
        self._ubo = program.uniform_blocks["WindowBlock"].create_ubo()

    def draw(self, width: int, height: int, split: bool) -> None:
        """Draw the HUD (bottom left) and, if ``split``, each half's label (top left of
        it) over a ``width`` x ``height`` framebuffer. Nothing below ``MIN_TEXT_HEIGHT``."""
        text = self.text
        text.refresh()
        if height < MIN_TEXT_HEIGHT or not (split or text.hud):
            return
        from pyglet import gl
        from pyglet.math import Mat4

        layout = (width, height, split, text.hud_on, text.version)
        if layout != self._layout:
            self._lay_out(width, height, split)
            self._layout = layout
            with self._ubo as block:
                block.projection[:] = Mat4.orthogonal_projection(0, width, 0, height, -255, 255)
                block.view[:] = Mat4()
        self._ubo.bind()
        gl.glEnable(gl.GL_BLEND)
        gl.glBlendFunc(gl.GL_SRC_ALPHA, gl.GL_ONE_MINUS_SRC_ALPHA)
        self._batch.draw()
        gl.glDisable(gl.GL_BLEND)

    def _lay_out(self, width: int, height: int, split: bool) -> None:
        for label in self._labels:
            label.delete()
        text, label = self.text, self._pyglet.text.Label
        size = max(8, height // 36)
        margin = size // 2
        made = []
        if split:
            for i, words in enumerate(text.labels):
                made.append(
                    label(
                        words, x=i * width // 2 + margin, y=height - margin, anchor_y="top",
                        font_size=size, color=(255, 255, 255, 255), batch=self._batch,
                    )
                )  # fmt: skip
        for i, line in enumerate(reversed(text.hud)):
            made.append(
                label(
                    line, x=margin, y=margin + i * round(size * 1.6), font_size=size * 3 // 4,
                    color=(255, 230, 120, 255), batch=self._batch,
                )
            )  # fmt: skip
        self._labels = made

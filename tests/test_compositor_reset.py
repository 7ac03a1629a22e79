"""The compositor outlives its GL context: after a GPU reset it makes a new one and goes on.

A real reset cannot be provoked on demand (llvmpipe never resets), so the reset status is
injected; the context, the composer and every frame around them are real GL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.compositor.loop import LayerDraw
from engine.compositor.process import GLComposer, RecoveringComposer
from engine.compositor.sinks import HeadlessSink
from engine.contracts.layer import LayerSpec
from engine.pose.base import Fov, Pose
from engine.render.camera import eyes_from_head
from engine.render.context import gl
from test_compositor_process import virtual_display  # noqa: F401  (a fixture)

W, H = 32, 24
GL_GUILTY_CONTEXT_RESET = 0x8253


class Source:
    def still_valid(self, frame) -> bool:  # noqa: ANN001
        return True


def layer_frame(pixels: np.ndarray, eyes):  # noqa: ANN001, ANN201
    class Frame:
        index, seq, frame = 0, 2, 1

    Frame.pixels, Frame.eyes = pixels, eyes
    return Frame()


def test_a_lost_context_is_made_again_and_the_compositor_keeps_presenting() -> None:
    eyes = eyes_from_head(Pose((0.0, 1.6, 0.0)), fov=Fov.for_image(W, H))
    image = np.zeros((2, H, W, 4), np.uint8)
    image[..., 1] = image[..., 3] = 255  # an opaque green layer (premultiplied)
    draw = LayerDraw(0, layer_frame(image, eyes), Source(), False)  # the game's last frame
    statuses = [0, 0, GL_GUILTY_CONTEXT_RESET]  # what the context says before each frame
    messages: list[str] = []
    composer = RecoveringComposer(
        lambda: GLComposer(W, H, [LayerSpec(W, H)]),
        reset_status=lambda: statuses.pop(0) if statuses else 0,
        report=messages.append,
    )
    sink = HeadlessSink(composer)
    first, first_context = composer.current, gl.current_context
    shown = []
    for frame in range(5):
        composer.compose([draw], eyes, fallback=False)
        composer.finish()
        sink.present(frame, 0)
        shown.append(composer.read_eyes())
    assert composer.context_resets == 1 and composer.stats()["context_resets"] == 1
    assert composer.current is not first and gl.current_context is not first_context
    assert sink.frames == 5  # every frame presented, the one after the loss too
    centre = [eyes_[0, H // 2, W // 2] for eyes_ in shown]
    assert all(c[1] > 200 and c[0] < 50 for c in centre)  # the layer, before and after
    assert "GL_GUILTY_CONTEXT_RESET" in messages[0]


WINDOW_AFTER_RESET = """
import json, os
import json

import numpy as np
import pyglet
pyglet.options["headless"] = False
from engine.compositor.loop import LayerDraw
from engine.compositor.process import GLComposer, RecoveringComposer
from engine.compositor.sinks import MirrorWindowSink
from engine.contracts.layer import LayerSpec
from engine.pose.base import Fov, Pose
from engine.render.camera import eyes_from_head
from engine.render.context import gl
from test_compositor_reset import H, W, Source, layer_frame, GL_GUILTY_CONTEXT_RESET

eyes = eyes_from_head(Pose((0.0, 1.6, 0.0)), fov=Fov.for_image(W, H))
statuses = [0, 0, GL_GUILTY_CONTEXT_RESET]
composer = RecoveringComposer(
    lambda: GLComposer(W, H, [LayerSpec(W, H)]),
    reset_status=lambda: statuses.pop(0) if statuses else 0,
)
sink = MirrorWindowSink(composer, scale=1.0)
bound, seen = [], []


def watch(window):  # what each frame put in the window, read just before it is shown
    real_flip = window.flip

    def flip():
        width, height = window.get_framebuffer_size()
        pixel = (gl.GLubyte * 4)()
        gl.glReadPixels(width // 4, height // 2, 1, 1, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, pixel)
        seen.append(list(pixel)[:3])
        real_flip()

    window.flip = flip


watch(sink.window)
sink.window_listeners += [bound.append, watch]
for frame in range(6):
    image = np.zeros((2, H, W, 4), np.uint8)
    image[..., 3] = 255
    image[..., 1 if frame < 2 else 2] = 255  # green, then blue from the frame of the reset
    composer.compose([LayerDraw(0, layer_frame(image, eyes), Source(), False)], eyes, False)
    composer.finish()
    sink.present(frame, 0)
print(json.dumps({"seen": seen, "windows": sink.windows_made, "bound": len(bound),
                  "resets": composer.context_resets}))
sink.close()
"""


@pytest.mark.usefixtures("virtual_display")
def test_the_mirror_window_is_made_again_after_a_lost_context_and_shows_the_new_one() -> None:
    """The window's context shared objects with the lost one, not with the new: it is
    made again, sharing with the new context, and shows what is composed there. (In a
    process of its own: a window needs pyglet loaded with ``headless`` off.)"""
    env = {**os.environ, "PYGLET_HEADLESS": "0"}  # DISPLAY: the virtual display's
    env["PYTHONPATH"] = str(Path(__file__).parent)
    result = subprocess.run(
        [sys.executable, "-c", WINDOW_AFTER_RESET],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["resets"] == 1 and out["windows"] == 2 and out["bound"] == 1, out
    green, blue = [0, 255, 0], [0, 0, 255]
    assert out["seen"][:2] == [green, green], out
    assert out["seen"][2:] == [blue] * 4, out  # the new context's picture, in the new window

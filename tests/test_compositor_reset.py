"""The compositor outlives its GL context: after a GPU reset it makes a new one and goes on.

A real reset cannot be provoked on demand (llvmpipe never resets), so the reset status is
injected; the context, the composer and every frame around them are real GL.
"""

from __future__ import annotations

import numpy as np

from engine.compositor.loop import LayerDraw
from engine.compositor.process import GLComposer, RecoveringComposer
from engine.compositor.sinks import HeadlessSink
from engine.contracts.layer import LayerSpec
from engine.pose.base import Fov, Pose
from engine.render.camera import eyes_from_head
from engine.render.context import gl

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

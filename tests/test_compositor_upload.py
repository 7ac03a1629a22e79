"""The compositor's uploads: the layer format each driver gets, the upload words it is
given, and the start-up frame timing that leaves first touches out."""

from __future__ import annotations

import numpy as np
import pytest

from engine.compositor.loop import LayerDraw
from engine.compositor.upload import (
    GL_BGRA,
    GL_FLOAT,
    GL_RGBA,
    GL_RGBA8,
    GL_UNSIGNED_BYTE,
    GL_UNSIGNED_INT_8_8_8_8,
    GL_UNSIGNED_INT_8_8_8_8_REV,
    choose_upload,
)
from engine.contracts.layer import LayerSpec, PixelFormat
from engine.pose.base import EyeView, Pose

#: What each driver answers to glGetInternalformativ(GL_TEXTURE_2D, GL_RGBA8,
#: GL_TEXTURE_IMAGE_FORMAT / GL_TEXTURE_IMAGE_TYPE), as measured.
NVIDIA_580 = (GL_RGBA, GL_UNSIGNED_INT_8_8_8_8_REV)
MESA_LLVMPIPE_22 = (GL_RGBA, GL_FLOAT)


def test_nvidia_gets_rgba8_uploaded_in_its_preferred_type():
    upload = choose_upload(NVIDIA_580, software=False)
    assert upload.layer_format is PixelFormat.RGBA8
    assert (upload.internal_format, upload.data_format, upload.data_type) == (
        GL_RGBA8,
        GL_RGBA,
        GL_UNSIGNED_INT_8_8_8_8_REV,
    )
    assert "GL_UNSIGNED_INT_8_8_8_8_REV" in upload.describe()


def test_mesa_keeps_bgra8_whatever_it_answers():
    for answer in (MESA_LLVMPIPE_22, NVIDIA_580, None):
        upload = choose_upload(answer, software=True)
        assert upload.layer_format is PixelFormat.BGRA8
        assert (upload.internal_format, upload.data_format, upload.data_type) == (
            GL_RGBA,
            GL_BGRA,
            GL_UNSIGNED_BYTE,
        )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ((GL_BGRA, GL_UNSIGNED_BYTE), (PixelFormat.BGRA8, GL_UNSIGNED_BYTE)),
        ((GL_RGBA, GL_UNSIGNED_BYTE), (PixelFormat.RGBA8, GL_UNSIGNED_BYTE)),
        # Not a layout of the layer's bytes: the default stays.
        ((GL_RGBA, GL_FLOAT), (PixelFormat.BGRA8, GL_UNSIGNED_BYTE)),
        ((GL_RGBA, GL_UNSIGNED_INT_8_8_8_8), (PixelFormat.BGRA8, GL_UNSIGNED_BYTE)),
        (None, (PixelFormat.BGRA8, GL_UNSIGNED_BYTE)),
    ],
)
def test_a_gpu_driver_gets_what_it_prefers_when_that_is_a_byte_layout(answer, expected):
    upload = choose_upload(answer, software=False)
    assert (upload.layer_format, upload.data_type) == expected


def test_a_configured_format_is_kept_and_uploaded_as_well_as_the_driver_allows():
    rgba = choose_upload(NVIDIA_580, software=False, layer_format=PixelFormat.RGBA8)
    assert (rgba.layer_format, rgba.data_type) == (PixelFormat.RGBA8, GL_UNSIGNED_INT_8_8_8_8_REV)
    bgra = choose_upload(NVIDIA_580, software=False, layer_format=PixelFormat.BGRA8)
    assert (bgra.layer_format, bgra.data_format, bgra.data_type) == (
        PixelFormat.BGRA8,
        GL_BGRA,
        GL_UNSIGNED_BYTE,
    )


def test_this_driver_is_asked_and_answers(gl):
    from engine.compositor.process import is_software_renderer, preferred_upload
    from engine.compositor.upload import driver_preference

    answer = driver_preference(gl)
    assert answer is not None  # GL 4.3+ (llvmpipe: 4.5) answers the query
    upload = preferred_upload()
    if is_software_renderer(gl.gl_info.get_renderer()):
        assert upload.layer_format is PixelFormat.BGRA8


RED = (200, 30, 40, 255)


@pytest.mark.parametrize("layer_format", list(PixelFormat))
def test_a_layer_uploaded_the_way_nvidia_prefers_shows_the_same_pixels(
    gl, monkeypatch, layer_format
):
    """Here the real llvmpipe takes the upload words NVIDIA is given
    (``GL_UNSIGNED_INT_8_8_8_8_REV`` into a sized RGBA8 texture): the same bytes, so the
    same picture."""
    import engine.compositor.process as process

    monkeypatch.setattr(process, "driver_preference", lambda gl: NVIDIA_580)
    h, w = 24, 32
    eyes = (EyeView(Pose()), EyeView(Pose()))
    image = np.empty((2, h, w, 4), np.uint8)
    image[...] = np.asarray(RED)[layer_format.rgba_order]
    from engine.compositor.process import GLComposer

    composer = GLComposer(w, h, [LayerSpec(w, h, format=layer_format)])
    upload = composer.layer_uploads()[0]
    if layer_format is PixelFormat.RGBA8:
        assert (upload.internal_format, upload.data_type) == (
            GL_RGBA8,
            GL_UNSIGNED_INT_8_8_8_8_REV,
        )
    draw = LayerDraw(0, _Frame(image, eyes), _AlwaysValid(), False)
    composer.compose([draw], eyes, fallback=False)
    composer.finish()
    out = composer.read_eyes()
    assert composer.uploads == 1
    assert tuple(out[0, h // 2, w // 2]) == RED and tuple(out[1, h // 2, w // 2]) == RED


class _AlwaysValid:
    def still_valid(self, frame) -> bool:  # noqa: ANN001
        return True


class _Frame:
    index, seq, frame = 0, 2, 1

    def __init__(self, pixels: np.ndarray, eyes) -> None:  # noqa: ANN001
        self.pixels, self.eyes = pixels, eyes


def test_the_start_up_frame_time_leaves_out_first_touches(gl):
    """time_frame measures after untimed warm-up frames: with a clock that charges 100
    for the first upload into each texture set and 1 for every later one, the frame
    measured costs 1 (it cost 100 when the first touch was measured)."""
    from engine.compositor.process import GLComposer

    composer = GLComposer(32, 24, [LayerSpec(16, 12)])
    now = [0]
    touched: set[int] = set()
    upload = composer._upload_pixels

    def charged_upload(layer, texture_set, pixels):  # noqa: ANN001, ANN202
        now[0] += 1 if texture_set in touched else 100
        touched.add(texture_set)
        upload(layer, texture_set, pixels)

    composer._upload_pixels = charged_upload
    eyes = (EyeView(Pose()), EyeView(Pose()))
    assert composer.time_frame(eyes, repeats=3, clock=lambda: now[0]) == 1
    assert composer.timed_frame_ns == 1
    assert touched == {0, 1}  # both sets touched in the warm-up

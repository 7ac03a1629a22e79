"""Rotational timewarp: show an image rendered from one head orientation at another.

A layer image was rendered for eye orientation ``R_r`` (the pose the game predicted). By
the time it is shown the head is at ``R_d``. For each output pixel the compositor takes the
ray through it in the display eye, turns it into the render eye's frame with

    delta = R_r^T @ R_d        (display-eye direction -> render-eye direction)

and projects it with the render eye's field of view to find where to sample the image.
Rays that fall outside the image (or behind the render eye) show nothing (the layers below,
or the fallback, show through). Only rotation is corrected; position changes between render
and display are left alone (they are millimetres within one frame).

Conventions: eyes look down -Z, +Y up, +X right; a field of view is four angles with
``left``/``down`` negative; images are stored bottom row first, so texture ``v = 0`` is the
bottom of the image.

The numpy functions here are the reference. On the GPU the whole mapping is one 3x3
homography (:func:`timewarp_homography`) evaluated per vertex, so a pixel costs one
division and one bilinear fetch; :class:`TimewarpPass` draws it (GL is imported only when a pass is
made, so the math needs no GL context).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence

import numpy as np

from engine.pose.base import Fov
from engine.render.camera import quaternion_matrix, quaternion_multiply

Tangents = tuple[float, float, float, float]


def fov_tangents(fov: Fov) -> Tangents:
    """``(tan left, tan right, tan up, tan down)``: the image plane's edges at distance 1."""
    return (
        math.tan(fov.left),
        math.tan(fov.right),
        math.tan(fov.up),
        math.tan(fov.down),
    )


def rotation_delta(render_q: Sequence[float], display_q: Sequence[float]) -> np.ndarray:
    """The 3x3 rotation taking display-eye directions to render-eye directions.

    Both orientations are unit quaternions (xyzw) from eye space to world space. Equal
    orientations give the identity. ``R_r^T R_d`` is the rotation of ``conj(q_r) q_d``:
    one matrix from scalar arithmetic, no matrix product.
    """
    rx, ry, rz, rw = render_q
    return quaternion_matrix(quaternion_multiply((-rx, -ry, -rz, rw), display_q))


def pixel_ndc(width: int, height: int) -> np.ndarray:
    """Normalized device coordinates of every pixel centre, shape ``(height, width, 2)``.

    Row 0 is the bottom row (GL order), so ``y`` increases with the row index.
    """
    x = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    y = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    xx, yy = np.meshgrid(x, y)
    return np.stack([xx, yy], axis=-1)


def eye_rays(out_tan: Tangents, ndc: np.ndarray) -> np.ndarray:
    """Directions (not normalized, z = -1) through points ``ndc`` (..., 2) of an eye's image."""
    left, right, up, down = out_tan
    t = (np.asarray(ndc, dtype=np.float64) + 1.0) * 0.5
    x = left + t[..., 0] * (right - left)
    y = down + t[..., 1] * (up - down)
    return np.stack([x, y, -np.ones_like(x)], axis=-1)


def timewarp_uv(
    delta: np.ndarray, out_tan: Tangents, src_tan: Tangents, ndc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each display point ``ndc`` (..., 2) samples the rendered image.

    Returns ``(uv, valid)``: texture coordinates (..., 2) in 0..1 (``v = 0`` the bottom
    row) and a mask that is ``False`` where the ray leaves the image or points behind the
    render eye. With ``delta`` the identity and equal fields of view, ``uv`` is the point's
    own position in the image.
    """
    rays = eye_rays(out_tan, ndc) @ np.asarray(delta, dtype=np.float64).T
    z = rays[..., 2]
    valid = z < -1e-9
    safe = np.where(valid, -z, 1.0)
    px, py = rays[..., 0] / safe, rays[..., 1] / safe
    left, right, up, down = src_tan
    u = (px - left) / (right - left)
    v = (py - down) / (up - down)
    valid &= (u >= 0.0) & (u <= 1.0) & (v >= 0.0) & (v <= 1.0)
    return np.stack([u, v], axis=-1), valid


def timewarp_homography(delta: np.ndarray, out_tan: Tangents, src_tan: Tangents) -> np.ndarray:
    """The same mapping as :func:`timewarp_uv` as one 3x3 matrix ``H`` on the screen.

    For a display point ``(x, y)`` in normalized device coordinates, ``h = H @ (x, y, 1)``
    gives ``uv = h[:2] / h[2]``, valid where ``h[2] > 0`` (the ray points in front of the
    render eye). A rotation between two pinhole images is a homography, so ``h`` is linear
    across the screen: the GPU computes it per vertex and interpolates it exactly, leaving
    one division and one texture fetch per pixel.
    """
    left, right, up, down = out_tan
    ndc_to_ray = np.array(
        [
            [(right - left) / 2.0, 0.0, (right + left) / 2.0],
            [0.0, (up - down) / 2.0, (up + down) / 2.0],
            [0.0, 0.0, -1.0],
        ]
    )
    s_left, s_right, s_up, s_down = src_tan
    # uv = (s * p + b) with p = r.xy / -r.z; homogeneous: (s * r.xy - b * r.z, -r.z).
    sx, sy = 1.0 / (s_right - s_left), 1.0 / (s_up - s_down)
    ray_to_uv = np.array(
        [
            [sx, 0.0, s_left * sx],
            [0.0, sy, s_down * sy],
            [0.0, 0.0, -1.0],
        ]
    )
    return ray_to_uv @ np.asarray(delta, dtype=np.float64) @ ndc_to_ray


def reproject(
    image: np.ndarray,
    delta: np.ndarray,
    out_tan: Tangents,
    src_tan: Tangents,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """CPU reference of the shader: ``image`` (h, w, 4) warped by ``delta``, nearest sample.

    ``out_size`` is ``(width, height)`` (default: the image's). Pixels with no source are
    zero. Slow (numpy over every pixel); for tests and offline checks only.
    """
    h, w = image.shape[:2]
    ow, oh = out_size or (w, h)
    uv, valid = timewarp_uv(delta, out_tan, src_tan, pixel_ndc(ow, oh))
    cols = np.clip((uv[..., 0] * w).astype(np.int64), 0, w - 1)
    rows = np.clip((uv[..., 1] * h).astype(np.int64), 0, h - 1)
    out = image[rows, cols]
    out[~valid] = 0
    return out


# --- the GPU pass ---------------------------------------------------------------------

#: A triangle covering the viewport, from ``gl_VertexID`` alone (no vertex buffer).
FULLSCREEN_VERTEX_SHADER = """
#version 330 core
out vec2 v_ndc;
void main() {
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    v_ndc = p;
    gl_Position = vec4(p, 0.0, 1.0);
}
"""

#: The timewarp's vertex stage: the homography per vertex (exact when interpolated).
VERTEX_SHADER = """
#version 330 core
uniform mat3 u_homography;   // ndc -> homogeneous uv (see timewarp_homography)
out vec3 v_uvw;
void main() {
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    v_uvw = u_homography * vec3(p, 1.0);
    gl_Position = vec4(p, 0.0, 1.0);
}
"""

#: Outside the image the texture's transparent border shows (blended: the layers below).
FRAGMENT_SHADER = """
#version 330 core
in vec3 v_uvw;
out vec4 out_color;
uniform sampler2D u_layer;
void main() {
    if (v_uvw.z <= 1e-9) discard;  // behind the eye the image was rendered for
    out_color = texture(u_layer, v_uvw.xy / v_uvw.z);
}
"""


def column_major(m: np.ndarray) -> tuple[float, ...]:
    """A matrix as GL wants it from a uniform setter that does not transpose."""
    return tuple(float(x) for x in np.asarray(m).flatten(order="F"))


class FullscreenProgram:
    """A linked shader program drawn as one full-viewport triangle (needs a current context).

    Raises ``pyglet.graphics.shader.ShaderException`` (a ``BaseException``) if the shaders
    do not compile; the compositor's are fixed strings, so that means a broken driver.
    """

    def __init__(self, fragment_source: str, vertex_source: str = FULLSCREEN_VERTEX_SHADER):
        from pyglet import gl
        from pyglet.graphics.shader import Shader, ShaderProgram

        self._gl = gl
        self.program = ShaderProgram(
            Shader(vertex_source, "vertex"), Shader(fragment_source, "fragment")
        )
        vao = gl.GLuint()
        gl.glGenVertexArrays(1, ctypes.byref(vao))  # core profile draws need a bound VAO
        self._vao = vao

    def draw(self, **uniforms: object) -> None:
        """Set ``uniforms`` and cover the current viewport of the bound framebuffer."""
        gl = self._gl
        self.program.use()
        for name, value in uniforms.items():
            self.program[name] = value
        gl.glBindVertexArray(self._vao)
        gl.glDrawArrays(gl.GL_TRIANGLES, 0, 3)
        gl.glBindVertexArray(0)

    def delete(self) -> None:
        self._gl.glDeleteVertexArrays(1, ctypes.byref(self._vao))
        self.program.delete()


class TimewarpPass:
    """Draws one eye's layer texture into the bound framebuffer, reprojected.

    The texture should clamp to a transparent border, so that what lies outside the
    rendered image shows the layers below instead of smeared edge pixels.
    """

    def __init__(self) -> None:
        self._fullscreen = FullscreenProgram(FRAGMENT_SHADER, VERTEX_SHADER)

    def draw(
        self,
        texture: int,
        delta: np.ndarray,
        out_tan: Tangents,
        src_tan: Tangents,
    ) -> None:
        """Draw 2D texture ``texture`` warped by ``delta`` (blending as currently set)."""
        self.draw_homography(texture, timewarp_homography(delta, out_tan, src_tan))

    def draw_homography(self, texture: int, homography: np.ndarray) -> None:
        """Draw ``texture`` through any screen-to-uv homography (a quad layer's too)."""
        from pyglet import gl

        gl.glActiveTexture(gl.GL_TEXTURE0)
        gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
        self._fullscreen.draw(u_layer=0, u_homography=column_major(homography))

    def delete(self) -> None:
        self._fullscreen.delete()

"""Timewarp as a mesh of screen-aligned rectangles: the compositor's path on CPU renderers.

The exact timewarp (:class:`~engine.compositor.timewarp.TimewarpPass`) evaluates the
homography per pixel, which a GPU does for free but which costs llvmpipe (Mesa's CPU
renderer) about 4 ms per 1280 x 720 eye: its general shader pipeline runs every pixel
through the JIT'd fragment shader in 4 x 4 blocks. llvmpipe also has a *linear* path that
shades whole rows with SIMD code several times faster, but only for primitives it can
prove simple: axis-aligned rectangles (two triangles with equal ``w``) whose attributes
are exactly affine across the rectangle, a fragment shader that is a plain texture fetch,
and an 8-bit BGRA colour buffer with no depth buffer.

So here the screen is cut into cells of ``cell`` pixels (a multiple of llvmpipe's 64-pixel
tiles), and each cell gets the affine map that best fits the homography over it. A
rotation between two pinhole images is projective, not affine, but across one cell the
difference is a fraction of a pixel (see :func:`affine_error_px`): a few hundredths of a
texel at the prediction errors of a game that keeps up, a quarter texel at 2 degrees of
rotation between render and display pose. A cell whose fit strays further than
:data:`MAX_FIT_ERROR` takes the exact warp.

Cells where any corner leaves the image by more than :data:`EDGE_SLACK_TEXELS` (or points
behind the render eye) are drawn with the exact per-pixel warp instead, so where the head
has turned away from the rendered image the layers below show through as with the exact
pass.

Texture coordinates are quantized to multiples of 2^-18 so that the two triangles of a
cell are *exactly* coplanar in float32 (llvmpipe compares the attribute differences
bitwise before it takes a pair as a rectangle).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from engine.compositor.timewarp import Tangents, column_major, timewarp_homography

#: Cell size in pixels. Larger cells mean fewer rectangles (llvmpipe's per-rectangle setup
#: is what made 32-px cells slower than one full-screen triangle) but a larger affine error.
CELL_PX = 128
#: Cells whose affine fit strays further than this (in source texels) are drawn exactly.
MAX_FIT_ERROR = 0.25
#: How far (in source texels) a cell may reach past the image and still be drawn affine.
#: llvmpipe's linear path clamps to the edge texel instead of showing the transparent
#: border, so up to this many pixels along the display's edge repeat the image's edge;
#: without this slack, the prediction error of every frame (a pixel or two) would send
#: the whole outer ring of cells to the exact warp, and any 64-pixel tile holding a
#: triangle loses the linear path for everything in it (about +50 % compose time).
EDGE_SLACK_TEXELS = 2.0
QUANTUM = 2.0**-18  # attributes on this grid make float32 sums and differences exact

#: Attributes straight through: the fragment stage is one texture fetch, which is what
#: llvmpipe's linear path accepts (no arithmetic, no discard).
AFFINE_VERTEX_SHADER = """
#version 330 core
layout(location = 0) in vec2 a_position;   // normalized device coordinates
layout(location = 1) in vec2 a_uv;
out vec2 v_uv;
void main() {
    v_uv = a_uv;
    gl_Position = vec4(a_position, 0.0, 1.0);
}
"""

AFFINE_FRAGMENT_SHADER = """
#version 330 core
in vec2 v_uv;
out vec4 out_color;
uniform sampler2D u_layer;
void main() {
    out_color = texture(u_layer, v_uv);
}
"""

#: The exact warp for edge cells: the homography per vertex, divided per pixel.
EXACT_VERTEX_SHADER = """
#version 330 core
layout(location = 0) in vec2 a_position;
uniform mat3 u_homography;
out vec3 v_uvw;
void main() {
    v_uvw = u_homography * vec3(a_position, 1.0);
    gl_Position = vec4(a_position, 0.0, 1.0);
}
"""


@dataclass(frozen=True)
class WarpMesh:
    """What one layer's warp into one eye draws, ready for one vertex buffer.

    ``vertices``: float32 ``(6 cells, 4)`` rows ``x, y, u, v``, two triangles per cell; the
    first ``rect_vertices`` rows are the affine cells (:attr:`rects`), the rest the cells
    for the exact warp (:attr:`edges`, whose ``u, v`` are zero).
    """

    vertices: np.ndarray
    rect_vertices: int

    @property
    def rects(self) -> np.ndarray:
        return self.vertices[: self.rect_vertices]

    @property
    def edges(self) -> np.ndarray:
        return self.vertices[self.rect_vertices :]

    @property
    def cells(self) -> int:
        return len(self.vertices) // 6


def cell_bounds(size: int, cell: int) -> np.ndarray:
    """Pixel boundaries ``0, cell, 2 cell, ..., size`` (the last cell may be narrower)."""
    if cell < 1:
        raise ValueError(f"cell must be at least 1 pixel, got {cell}")
    bounds = np.arange(0, size, cell)
    return np.append(bounds, size)


def _corners(homography: np.ndarray, xs: np.ndarray, ys: np.ndarray):
    """Homogeneous uv at every cell corner: ``(uv (ny+1, nx+1, 2), w (ny+1, nx+1))``."""
    gx, gy = np.meshgrid(xs, ys)
    # Written out rather than einsum/matmul: no BLAS call (whose worker threads would spin
    # on the compositor's cores afterwards).
    h = [m[0] * gx + m[1] * gy + m[2] for m in homography]
    w = h[2]
    safe = np.where(w > 1e-9, w, 1.0)
    return np.stack([h[0] / safe, h[1] / safe], axis=-1), w


def _quantize(x: np.ndarray) -> np.ndarray:
    return np.round(x / QUANTUM) * QUANTUM


def warp_mesh(
    homography: np.ndarray,
    width: int,
    height: int,
    source_size: tuple[int, int],
    cell: int = CELL_PX,
) -> WarpMesh:
    """Cut a ``width`` x ``height`` eye into cells and fit each with an affine uv map.

    ``homography`` maps display NDC to homogeneous uv (:func:`timewarp_homography`);
    ``source_size`` is the layer image's ``(width, height)``, which sets how far outside
    ``[0, 1]`` a corner may fall (:data:`EDGE_SLACK_TEXELS`) and still count as inside.
    """
    px = cell_bounds(width, cell)
    py = cell_bounds(height, cell)
    xs = (2.0 * px / width - 1.0).astype(np.float32).astype(np.float64)
    ys = (2.0 * py / height - 1.0).astype(np.float32).astype(np.float64)
    uv, w = _corners(np.asarray(homography, dtype=np.float64), xs, ys)
    slack = EDGE_SLACK_TEXELS / np.array(source_size, dtype=np.float64)
    ok = (w > 1e-6) & np.all((uv >= -slack) & (uv <= 1.0 + slack), axis=-1)
    inside = ok[:-1, :-1] & ok[:-1, 1:] & ok[1:, :-1] & ok[1:, 1:]  # (ny, nx)

    c00, c10, c01, c11 = uv[:-1, :-1], uv[:-1, 1:], uv[1:, :-1], uv[1:, 1:]
    # The least-squares affine fit to the four corners: mean slope along each axis.
    du = _quantize(((c10 - c00) + (c11 - c01)) * 0.5)
    dv = _quantize(((c01 - c00) + (c11 - c10)) * 0.5)
    origin = _quantize((c00 + c10 + c01 + c11) * 0.25 - (du + dv) * 0.5)
    # Where the fit is off by more than MAX_FIT_ERROR texels (at the centre, where a
    # projective map bends away most, or at the corners) the cell takes the exact warp.
    centre, centre_w = _corners(homography, (xs[:-1] + xs[1:]) * 0.5, (ys[:-1] + ys[1:]) * 0.5)
    texels = np.array(source_size, dtype=np.float64)
    off_centre = np.abs(origin + (du + dv) * 0.5 - centre) * texels
    twist = np.abs(c00 + c11 - c10 - c01) * 0.25 * texels
    fits = np.all((off_centre <= MAX_FIT_ERROR) & (twist <= MAX_FIT_ERROR), axis=-1)
    inside &= fits & (centre_w > 1e-6)

    x0, y0 = np.meshgrid(xs[:-1], ys[:-1])
    x1, y1 = np.meshgrid(xs[1:], ys[1:])
    zero = np.zeros_like(origin)
    # Corners A (x0, y0), B (x1, y0), C (x1, y1), D (x0, y1); triangles ABC and ACD.
    corner_pos = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    corner_uv = [zero, du, du + dv, dv]
    order = (0, 1, 2, 0, 2, 3)
    verts = np.empty(inside.shape + (6, 4), dtype=np.float64)
    for k, c in enumerate(order):
        verts[..., k, 0] = corner_pos[c][0]
        verts[..., k, 1] = corner_pos[c][1]
        verts[..., k, 2:] = origin + corner_uv[c]
    verts[~inside, :, 2:] = 0.0
    ordered = np.concatenate([verts[inside], verts[~inside]]).reshape(-1, 4)
    return WarpMesh(vertices=ordered.astype(np.float32), rect_vertices=6 * int(inside.sum()))


def affine_error_px(
    homography: np.ndarray,
    width: int,
    height: int,
    source_size: tuple[int, int],
    cell: int = CELL_PX,
) -> float:
    """The largest distance, in source texels, between the mesh's and the exact uv.

    Checked at every pixel centre of every affine cell (numpy; for tests and docs).
    """
    mesh = warp_mesh(homography, width, height, source_size, cell)
    worst = 0.0
    scale = np.array(source_size, dtype=np.float64)
    for tri in mesh.rects.reshape(-1, 6, 4):
        (xa, ya, ua, va), (xb, _, ub, vb), (_, yc, uc, vc) = tri[0], tri[1], tri[2]
        i0, i1 = (np.array([xa, xb]) + 1.0) * 0.5 * width
        j0, j1 = (np.array([ya, yc]) + 1.0) * 0.5 * height
        cols = np.arange(round(i0), round(i1)) + 0.5
        rows = np.arange(round(j0), round(j1)) + 0.5
        gx, gy = np.meshgrid(cols, rows)
        fx, fy = (gx - i0) / (i1 - i0), (gy - j0) / (j1 - j0)
        u = ua + fx * (ub - ua) + fy * (uc - ub)
        v = va + fx * (vb - va) + fy * (vc - vb)
        exact, _ = _corners(homography, 2.0 * cols / width - 1.0, 2.0 * rows / height - 1.0)
        err = np.abs((np.stack([u, v], axis=-1) - exact) * scale).max()
        worst = max(worst, float(err))
    return worst


class MeshTimewarpPass:
    """Draws one eye's layer texture into the bound framebuffer, warped by cells.

    Same contract as :class:`~engine.compositor.timewarp.TimewarpPass`. For llvmpipe's
    linear path the bound framebuffer should be 8-bit BGRA without depth, the texture BGRA
    (allocate both with the unsized ``GL_RGBA`` and ``GL_BGRA`` data), and blending off or
    plain; anything else still draws correctly, only slower.
    """

    def __init__(self, cell: int = CELL_PX) -> None:
        from pyglet import gl
        from pyglet.graphics.shader import Shader, ShaderProgram

        from engine.compositor.timewarp import FRAGMENT_SHADER

        self.cell = cell
        self._gl = gl
        self._affine = ShaderProgram(
            Shader(AFFINE_VERTEX_SHADER, "vertex"), Shader(AFFINE_FRAGMENT_SHADER, "fragment")
        )
        self._exact = ShaderProgram(
            Shader(EXACT_VERTEX_SHADER, "vertex"), Shader(FRAGMENT_SHADER, "fragment")
        )
        vao, vbo = gl.GLuint(), gl.GLuint()
        gl.glGenVertexArrays(1, ctypes.byref(vao))
        gl.glGenBuffers(1, ctypes.byref(vbo))
        gl.glBindVertexArray(vao)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, vbo)
        for location, offset in ((0, 0), (1, 8)):
            gl.glEnableVertexAttribArray(location)
            gl.glVertexAttribPointer(location, 2, gl.GL_FLOAT, gl.GL_FALSE, 16, offset)
        gl.glBindVertexArray(0)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, 0)
        self._vao, self._vbo = vao, vbo
        self.rect_cells = 0  # over the pass's life: cells drawn affine / exact
        self.edge_cells = 0
        self.reused_meshes = 0  # draws that reused the previous draw's mesh
        # The last draw's mesh and what it was made from: layers rendered with the same
        # pose (one game's layers, one frame) get the same warp, computed and uploaded once.
        self._last: tuple[bytes, tuple[int, int], tuple[int, int], WarpMesh] | None = None

    def draw(
        self,
        texture: int,
        delta: np.ndarray,
        out_tan: Tangents,
        src_tan: Tangents,
        viewport: tuple[int, int],
        source_size: tuple[int, int],
    ) -> None:
        """Draw ``texture`` warped by ``delta`` over a ``viewport`` ``(width, height)``."""
        gl = self._gl
        homography = timewarp_homography(delta, out_tan, src_tan)
        key = homography.tobytes()
        last = self._last
        reuse = last is not None and last[:3] == (key, viewport, source_size)
        if reuse:
            mesh = last[3]
            self.reused_meshes += 1
        else:
            mesh = warp_mesh(homography, viewport[0], viewport[1], source_size, self.cell)
            self._last = (key, viewport, source_size, mesh)
        rects, edges = mesh.rect_vertices, len(mesh.vertices) - mesh.rect_vertices
        self.rect_cells += rects // 6
        self.edge_cells += edges // 6
        data = mesh.vertices
        gl.glActiveTexture(gl.GL_TEXTURE0)
        gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
        gl.glBindVertexArray(self._vao)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self._vbo)
        if not reuse:  # a fresh store per new mesh: the driver may still read the last one
            gl.glBufferData(gl.GL_ARRAY_BUFFER, data.nbytes, data.ctypes.data, gl.GL_STREAM_DRAW)
        if rects:
            self._affine.use()
            self._affine["u_layer"] = 0
            gl.glDrawArrays(gl.GL_TRIANGLES, 0, rects)
        if edges:
            self._exact.use()
            self._exact["u_layer"] = 0
            self._exact["u_homography"] = column_major(homography)
            gl.glDrawArrays(gl.GL_TRIANGLES, rects, edges)
        gl.glBindVertexArray(0)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, 0)

    def delete(self) -> None:
        gl = self._gl
        gl.glDeleteVertexArrays(1, ctypes.byref(self._vao))
        gl.glDeleteBuffers(1, ctypes.byref(self._vbo))
        self._affine.delete()
        self._exact.delete()

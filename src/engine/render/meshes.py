"""Mesh data: the built-in primitives, OBJ files, and their GPU buffers.

CPU side (:class:`MeshData`, :func:`cube`, :func:`plane`, :func:`sphere`, :func:`load_obj`)
is plain numpy and needs no GL context. GPU side (:class:`MeshBuffers`) uploads one
interleaved vertex buffer (position, normal) and one index buffer per mesh key, lazily,
the first time the renderer draws that mesh; a vertex array object is made per attribute
layout (the ``position``/``normal`` locations a shader program was linked with), so a
live-edited shader that moves its attributes still draws.

Triangles wind counter-clockwise seen from outside (GL's default front face).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.render.components import Mesh


@dataclass(frozen=True)
class MeshData:
    """An indexed triangle mesh: positions (N, 3), normals (N, 3) float32, indices (M,) uint32."""

    positions: np.ndarray
    normals: np.ndarray
    indices: np.ndarray

    def interleaved(self) -> np.ndarray:
        """Vertices as one contiguous (N, 6) float32 array: x y z nx ny nz."""
        return np.ascontiguousarray(np.hstack([self.positions, self.normals]), dtype=np.float32)


def _mesh(positions: list | np.ndarray, normals: list | np.ndarray, indices: list) -> MeshData:
    return MeshData(
        np.asarray(positions, dtype=np.float32).reshape(-1, 3),
        np.asarray(normals, dtype=np.float32).reshape(-1, 3),
        np.asarray(indices, dtype=np.uint32).reshape(-1),
    )


def _quad(normal: np.ndarray, u: np.ndarray, size: float, base: int) -> tuple[list, list, list]:
    """One square face of side ``size`` facing ``normal``, at ``normal * size / 2``."""
    v = np.cross(normal, u)  # u x v == normal, so the corner order below winds CCW
    h = size / 2.0
    centre = normal * h
    corners = [centre + h * (a * u + b * v) for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    quad_indices = [base, base + 1, base + 2, base, base + 2, base + 3]
    return corners, [normal] * 4, quad_indices


def cube(size: float = 1.0) -> MeshData:
    """An axis-aligned cube of side ``size`` centred on the origin; flat normals (24 vertices)."""
    positions, normals, indices = [], [], []
    for axis in range(3):
        for sign in (1.0, -1.0):
            n = np.zeros(3)
            n[axis] = sign
            u = np.zeros(3)
            u[(axis + 1) % 3] = 1.0
            p, nn, i = _quad(n, u, size, len(positions))
            positions += p
            normals += nn
            indices += i
    return _mesh(positions, normals, indices)


def plane(size: float = 1.0) -> MeshData:
    """A square of side ``size`` in the XZ plane, centred on the origin, facing +Y."""
    n, u = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    p, nn, i = _quad(n, u, size, 0)
    return _mesh(np.array(p) - n * size / 2.0, nn, i)


def sphere(radius: float = 0.5, segments: int = 32, rings: int = 16) -> MeshData:
    """A UV sphere centred on the origin; smooth normals. Raises ``ValueError`` if too coarse."""
    if segments < 3 or rings < 2:
        raise ValueError(f"a sphere needs segments >= 3 and rings >= 2, got {segments}, {rings}")
    theta = np.linspace(0.0, np.pi, rings + 1)[:, None]  # from the top (+Y) down
    phi = np.linspace(0.0, 2.0 * np.pi, segments + 1)[None, :]  # seam duplicated for UVs later
    normals = np.stack(
        [
            np.sin(theta) * np.cos(phi),
            np.broadcast_to(np.cos(theta), (rings + 1, segments + 1)),
            -np.sin(theta) * np.sin(phi),
        ],
        axis=-1,
    ).reshape(-1, 3)
    row = segments + 1
    r, s = np.meshgrid(np.arange(rings), np.arange(segments), indexing="ij")
    a = (r * row + s).ravel()
    b, c, d = a + row, a + row + 1, a + 1
    indices = np.stack([a, b, c, a, c, d], axis=-1).reshape(-1)
    return _mesh(normals * radius, normals, indices)


PRIMITIVE_BUILDERS = {"cube": cube, "plane": plane, "sphere": sphere}


def load_obj(path: str | Path) -> MeshData:
    """Read a Wavefront OBJ file's geometry (all objects and groups merged into one mesh).

    Reads ``v``, ``vn`` and ``f`` (``v``, ``v/t``, ``v//n``, ``v/t/n``; negative indices count
    from the end; polygons are fan-triangulated). Faces without normals get flat face
    normals. Materials and texture coordinates are ignored. Raises ``OSError`` if the file
    cannot be read and ``ValueError`` (with the line number) if it is malformed or empty.

    pyglet's OBJ decoder (``pyglet.model.codecs.obj``) is not used: in pyglet 2.1.19 it
    resolves negative indices one vertex off and returns an unindexed triangle soup.
    """
    path = Path(path)
    vertices: list[tuple[float, ...]] = []
    normals: list[tuple[float, ...]] = []
    out_index: dict[tuple[int, int], int] = {}  # (vertex, normal) -> output vertex
    out_pos: list[tuple[float, ...]] = []
    out_nrm: list[tuple[float, ...] | None] = []
    triangles: list[tuple[int, int, int]] = []

    def resolve(text: str, count: int, lineno: int) -> int:
        i = int(text)
        i = i - 1 if i > 0 else count + i
        if not 0 <= i < count:
            raise ValueError(f"{path}:{lineno}: index {text} out of range (have {count})")
        return i

    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if parts[0] == "v":
                vertices.append(tuple(float(x) for x in parts[1:4]))
            elif parts[0] == "vn":
                normals.append(tuple(float(x) for x in parts[1:4]))
            elif parts[0] == "f":
                corners = []
                for corner in parts[1:]:
                    fields = corner.split("/")
                    vi = resolve(fields[0], len(vertices), lineno)
                    has_n = len(fields) > 2 and fields[2]
                    ni = resolve(fields[2], len(normals), lineno) if has_n else -1
                    key = (vi, ni)
                    if key not in out_index:
                        out_index[key] = len(out_pos)
                        out_pos.append(vertices[vi])
                        out_nrm.append(normals[ni] if ni >= 0 else None)
                    corners.append(out_index[key])
                if len(corners) < 3:
                    raise ValueError(f"{path}:{lineno}: a face needs 3 corners")
                triangles += [
                    (corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1)
                ]
        except (IndexError, ValueError) as exc:
            if str(exc).startswith(str(path)):
                raise
            raise ValueError(f"{path}:{lineno}: cannot read {line.strip()!r} ({exc})") from exc
    if not triangles:
        raise ValueError(f"{path}: no faces")

    positions = np.asarray(out_pos, dtype=np.float32).reshape(-1, 3)
    indices = np.asarray(triangles, dtype=np.uint32)
    missing = np.array([n is None for n in out_nrm])
    vertex_normals = np.array([n if n is not None else (0.0, 0.0, 0.0) for n in out_nrm])
    if missing.any():
        # Accumulate area-weighted face normals onto the vertices that lack one.
        a, b, c = (positions[indices[:, k]] for k in range(3))
        face = np.cross(b - a, c - a)
        acc = np.zeros_like(positions, dtype=np.float64)
        for k in range(3):
            np.add.at(acc, indices[:, k], face)
        length = np.linalg.norm(acc, axis=1, keepdims=True)
        acc = np.divide(acc, length, out=np.zeros_like(acc), where=length > 0)
        vertex_normals[missing] = acc[missing]
    return _mesh(positions, vertex_normals, indices.reshape(-1))


def mesh_data(mesh: Mesh) -> MeshData:
    """The geometry a :class:`Mesh` component names: its OBJ file, or its primitive.

    Raises ``KeyError`` for an unknown primitive, and what :func:`load_obj` raises.
    """
    if mesh.path:
        return load_obj(mesh.path)
    try:
        return PRIMITIVE_BUILDERS[mesh.primitive]()
    except KeyError:
        raise KeyError(
            f"unknown primitive {mesh.primitive!r} (have {', '.join(PRIMITIVE_BUILDERS)})"
        ) from None


def mesh_key(mesh: Mesh) -> tuple[str, str]:
    """What GPU buffers are cached by: the OBJ path, or the primitive name."""
    return ("obj", str(mesh.path)) if mesh.path else ("primitive", mesh.primitive)


@dataclass
class GpuMesh:
    """One mesh's buffers on the GPU, plus a vertex array object per attribute layout."""

    vbo: int
    ibo: int
    index_count: int
    vaos: dict[tuple[int, int], int] = field(default_factory=dict)

    def vao(self, position_location: int, normal_location: int) -> int:
        """The VAO binding this mesh to those attribute locations (-1 = unused), made once."""
        key = (position_location, normal_location)
        vao = self.vaos.get(key)
        if vao is None:
            from engine.render.context import gl

            handle = gl.GLuint()
            gl.glGenVertexArrays(1, ctypes.byref(handle))
            vao = self.vaos[key] = handle.value
            gl.glBindVertexArray(vao)
            gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self.vbo)
            gl.glBindBuffer(gl.GL_ELEMENT_ARRAY_BUFFER, self.ibo)  # recorded in the VAO
            stride = 6 * 4
            for location, offset in ((position_location, 0), (normal_location, 12)):
                if location >= 0:
                    gl.glEnableVertexAttribArray(location)
                    gl.glVertexAttribPointer(location, 3, gl.GL_FLOAT, gl.GL_FALSE, stride, offset)
            gl.glBindVertexArray(0)
        return vao


class MeshBuffers:
    """GPU buffers for every mesh drawn so far, keyed by :func:`mesh_key`; GL thread only.

    A mesh that fails to load is remembered as missing (reported once, on the console) and
    skipped until :meth:`forget` is called for it, so a bad path costs nothing per frame.
    """

    def __init__(self) -> None:
        self._meshes: dict[tuple[str, str], GpuMesh | None] = {}

    def get(self, mesh: Mesh) -> GpuMesh | None:
        """The uploaded buffers for ``mesh``, uploading on first use; ``None`` if unloadable."""
        key = mesh_key(mesh)
        try:
            return self._meshes[key]
        except KeyError:
            pass
        try:
            data = mesh_data(mesh)
        except (OSError, KeyError, ValueError) as exc:
            print(f"engine: cannot load mesh {key[1]!r}: {exc}; entities using it are not drawn")
            self._meshes[key] = None
            return None
        gpu = self._meshes[key] = upload(data)
        return gpu

    def forget(self, mesh: Mesh | None = None) -> None:
        """Drop one cached mesh (or all) so the next draw loads it again; buffers are freed."""
        from engine.render.context import gl

        keys = [mesh_key(mesh)] if mesh is not None else list(self._meshes)
        for key in keys:
            gpu = self._meshes.pop(key, None)
            if gpu is None:
                continue
            for vao in gpu.vaos.values():
                gl.glDeleteVertexArrays(1, ctypes.byref(gl.GLuint(vao)))
            for buf in (gpu.vbo, gpu.ibo):
                gl.glDeleteBuffers(1, ctypes.byref(gl.GLuint(buf)))


def upload(data: MeshData) -> GpuMesh:
    """Copy ``data`` into a new vertex buffer and index buffer (current GL context)."""
    from engine.render.context import gl

    vertices = data.interleaved()
    indices = np.ascontiguousarray(data.indices, dtype=np.uint32)
    handles = (gl.GLuint * 2)()
    gl.glGenBuffers(2, handles)
    vbo, ibo = handles[0], handles[1]
    gl.glBindBuffer(gl.GL_ARRAY_BUFFER, vbo)
    gl.glBufferData(gl.GL_ARRAY_BUFFER, vertices.nbytes, vertices.ctypes.data, gl.GL_STATIC_DRAW)
    gl.glBindBuffer(gl.GL_ARRAY_BUFFER, 0)
    # The index buffer is bound to a VAO later; GL_COPY_WRITE_BUFFER avoids touching
    # whatever VAO is bound now.
    gl.glBindBuffer(gl.GL_COPY_WRITE_BUFFER, ibo)
    gl.glBufferData(gl.GL_COPY_WRITE_BUFFER, indices.nbytes, indices.ctypes.data, gl.GL_STATIC_DRAW)
    gl.glBindBuffer(gl.GL_COPY_WRITE_BUFFER, 0)
    return GpuMesh(vbo, ibo, len(indices))

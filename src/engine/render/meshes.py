"""Mesh data: the built-in primitives, OBJ files, and their GPU buffers.

CPU side (:class:`MeshData`, :func:`cube`, :func:`plane`, :func:`sphere`, :func:`load_obj`)
is plain numpy and needs no GL context. GPU side (:class:`MeshBuffers`) uploads one
interleaved vertex buffer (position, normal, texture coordinate) and one index buffer per
mesh, the first time the renderer draws that mesh; a vertex array object is made per
attribute layout (the ``position``/``normal``/``texcoord`` locations a shader program was
linked with), so a live-edited shader that moves its attributes still draws.

OBJ files are paths relative to the project folder (never the working directory) and are
parsed *off the frame*: a worker thread runs the parser in a child interpreter
(``python -m engine.render.meshes``), so a large file neither stalls the frame nor competes
with it for the GIL (a parsing thread would hold the GIL for seconds, and every GL call of
the frame thread releases and waits for it again); the arrays come back in an ``.npz``.
Until a file is parsed its entities are not drawn; the finished arrays are uploaded on the
render thread by :meth:`MeshBuffers.poll`. An edited OBJ is parsed again the same way while
the old mesh keeps drawing; a broken edit keeps the last good mesh and is reported once.

Triangles wind counter-clockwise seen from outside (GL's default front face).
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.render.components import Mesh


@dataclass(frozen=True)
class MeshData:
    """An indexed triangle mesh: positions (N, 3), normals (N, 3), texture coordinates
    (N, 2) float32, indices (M,) uint32."""

    positions: np.ndarray
    normals: np.ndarray
    indices: np.ndarray
    texcoords: np.ndarray | None = None  # None: all zero

    #: Floats per interleaved vertex: position 3, normal 3, texture coordinate 2.
    STRIDE = 8

    def interleaved(self) -> np.ndarray:
        """Vertices as one contiguous (N, 8) float32 array: x y z nx ny nz u v."""
        uv = self.texcoords
        if uv is None:
            uv = np.zeros((len(self.positions), 2), dtype=np.float32)
        return np.ascontiguousarray(np.hstack([self.positions, self.normals, uv]), np.float32)


def _mesh(
    positions: list | np.ndarray,
    normals: list | np.ndarray,
    indices: list | np.ndarray,
    texcoords: list | np.ndarray | None = None,
) -> MeshData:
    return MeshData(
        np.asarray(positions, dtype=np.float32).reshape(-1, 3),
        np.asarray(normals, dtype=np.float32).reshape(-1, 3),
        np.asarray(indices, dtype=np.uint32).reshape(-1),
        None if texcoords is None else np.asarray(texcoords, dtype=np.float32).reshape(-1, 2),
    )


_QUAD_UV = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))


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
    return _mesh(positions, normals, indices, _QUAD_UV * 6)


def plane(size: float = 1.0) -> MeshData:
    """A square of side ``size`` in the XZ plane, centred on the origin, facing +Y."""
    n, u = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
    p, nn, i = _quad(n, u, size, 0)
    return _mesh(np.array(p) - n * size / 2.0, nn, i, _QUAD_UV)


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
    u, v = np.meshgrid(np.linspace(0, 1, segments + 1), np.linspace(1, 0, rings + 1))
    return _mesh(normals * radius, normals, indices, np.stack([u, v], axis=-1).reshape(-1, 2))


PRIMITIVE_BUILDERS = {"cube": cube, "plane": plane, "sphere": sphere}


def load_obj(path: str | Path) -> MeshData:
    """Read a Wavefront OBJ file's geometry (all objects and groups merged into one mesh).

    Reads ``v``, ``vt``, ``vn`` and ``f`` (``v``, ``v/t``, ``v//n``, ``v/t/n``; negative
    indices count from the end; polygons are fan-triangulated). Vertices without normals get
    smooth (area-weighted) normals; without texture coordinates, (0, 0). Materials are
    ignored. Raises ``OSError`` if the file
    cannot be read and ``ValueError`` (with the line number) if it is malformed or empty.

    pyglet's OBJ decoder (``pyglet.model.codecs.obj``) is not used: in pyglet 2.1.19 it
    resolves negative indices one vertex off and returns an unindexed triangle soup.
    """
    path = Path(path)
    vertices: list[tuple[float, ...]] = []
    normals: list[tuple[float, ...]] = []
    uvs: list[tuple[float, ...]] = []
    out_index: dict[tuple[int, int, int], int] = {}  # (vertex, uv, normal) -> output vertex
    out_pos: list[tuple[float, ...]] = []
    out_nrm: list[tuple[float, ...] | None] = []
    out_uv: list[tuple[float, ...]] = []
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
            elif parts[0] == "vt":
                uvs.append((float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0))
            elif parts[0] == "f":
                corners = []
                for corner in parts[1:]:
                    fields = corner.split("/")
                    vi = resolve(fields[0], len(vertices), lineno)
                    has_t = len(fields) > 1 and fields[1]
                    ti = resolve(fields[1], len(uvs), lineno) if has_t else -1
                    has_n = len(fields) > 2 and fields[2]
                    ni = resolve(fields[2], len(normals), lineno) if has_n else -1
                    key = (vi, ti, ni)
                    if key not in out_index:
                        out_index[key] = len(out_pos)
                        out_pos.append(vertices[vi])
                        out_nrm.append(normals[ni] if ni >= 0 else None)
                        out_uv.append(uvs[ti] if ti >= 0 else (0.0, 0.0))
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
    return _mesh(positions, vertex_normals, indices.reshape(-1), out_uv)


def primitive_data(name: str) -> MeshData:
    """The geometry of built-in primitive ``name``; ``KeyError`` (saying which exist) if none."""
    try:
        return PRIMITIVE_BUILDERS[name]()
    except KeyError:
        raise KeyError(
            f"unknown primitive {name!r} (have {', '.join(PRIMITIVE_BUILDERS)})"
        ) from None


def mesh_data(mesh: Mesh, project_dir: Path | None = None) -> MeshData:
    """The geometry a :class:`Mesh` component names: its OBJ file, or its primitive.

    A relative path is taken from ``project_dir`` (the working directory if ``None``).
    Parses on the calling thread. Raises ``KeyError`` for an unknown primitive, and what
    :func:`load_obj` raises.
    """
    if mesh.path:
        return load_obj(resolve_asset(mesh.path, project_dir))
    return primitive_data(mesh.primitive)


def resolve_asset(path: str | Path, project_dir: Path | None) -> Path:
    """Where an asset path points: absolute as given, relative from the project folder.

    Without a project (a renderer used alone) a relative path is taken as it is, from the
    working directory. Never raises; the file need not exist.
    """
    path = Path(path).expanduser()
    if path.is_absolute() or project_dir is None:
        return path
    return Path(project_dir) / path


def mesh_key(mesh: Mesh) -> tuple[str, str]:
    """What GPU buffers are cached by: the OBJ path (as written), or the primitive name."""
    return ("obj", str(mesh.path)) if mesh.path else ("primitive", mesh.primitive)


@dataclass
class GpuMesh:
    """One mesh's buffers on the GPU, plus a vertex array object per attribute layout."""

    vbo: int
    ibo: int
    index_count: int
    vaos: dict[tuple[int, int, int], int] = field(default_factory=dict)

    def vao(self, position_location: int, normal_location: int, texcoord_location: int = -1) -> int:
        """The VAO binding this mesh to those attribute locations (-1 = unused), made once."""
        key = (position_location, normal_location, texcoord_location)
        vao = self.vaos.get(key)
        if vao is None:
            from engine.render.context import gl

            handle = gl.GLuint()
            gl.glGenVertexArrays(1, ctypes.byref(handle))
            vao = self.vaos[key] = handle.value
            gl.glBindVertexArray(vao)
            gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self.vbo)
            gl.glBindBuffer(gl.GL_ELEMENT_ARRAY_BUFFER, self.ibo)  # recorded in the VAO
            stride = MeshData.STRIDE * 4
            attributes = ((position_location, 3, 0), (normal_location, 3, 12))
            for location, size, offset in (*attributes, (texcoord_location, 2, 24)):
                if location >= 0:
                    gl.glEnableVertexAttribArray(location)
                    gl.glVertexAttribPointer(
                        location, size, gl.GL_FLOAT, gl.GL_FALSE, stride, offset
                    )
            gl.glBindVertexArray(0)
        return vao


def _ignore(message: str) -> None:
    pass


def parse_elsewhere(path: Path) -> MeshData:
    """:func:`load_obj` in a child interpreter; blocks (off the GIL) until it is done.

    A child, not ``multiprocessing``: its spawn re-imports the parent's ``__main__`` (a
    game's script) and fork would copy a process holding a GL context and threads.
    Raises ``ValueError`` with the parser's message if the file cannot be read.
    """
    with tempfile.TemporaryDirectory(prefix="engine-mesh-") as tmp:
        out = Path(tmp) / "mesh.npz"
        command = [sys.executable, "-m", "engine.render.meshes", str(path), str(out)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"parser exited {done.returncode}"]
            raise ValueError(lines[-1])
        with np.load(out) as arrays:
            return MeshData(*(arrays[k] for k in ("positions", "normals", "indices", "uv")))


class MeshBuffers:
    """GPU buffers for every mesh drawn so far; :meth:`get` and :meth:`poll` on the GL thread.

    Primitives are built and uploaded on first use. OBJ files resolve from ``project_dir``
    and are parsed by ``submit`` (default: one worker process, started on the first OBJ);
    :meth:`get` returns ``None`` for them until :meth:`poll` has uploaded the result. A
    primitive or file that fails to load is reported once through ``report`` and skipped
    (its entities are not drawn) until the file changes (:meth:`queue_change`); a file that
    loaded before keeps drawing its last good mesh.

    Args:
        project_dir: where relative OBJ paths start; ``None``: the working directory.
        report: where load failures are said (one line each).
        submit: ``submit(parse, path) -> Future`` (default: one worker thread running
            :func:`parse_elsewhere`).
    """

    def __init__(
        self,
        project_dir: Path | None = None,
        report: Callable[[str], None] = _ignore,
        submit: Callable[..., Future] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir) if project_dir is not None else None
        self.report = report
        self._submit = submit
        self._pool: ThreadPoolExecutor | None = None
        self._primitives: dict[str, GpuMesh | None] = {}
        self._files: dict[Path, GpuMesh | None] = {}  # None: never loaded successfully
        self._loading: dict[Path, Future] = {}
        self._stale: set[Path] = set()  # changed while a load was under way: load again
        self._changed: set[Path] = set()
        self._lock = threading.Lock()

    def get(self, mesh: Mesh) -> GpuMesh | None:
        """The uploaded buffers for ``mesh``: ``None`` while its file loads, or if unloadable."""
        if not mesh.path:
            try:
                return self._primitives[mesh.primitive]
            except KeyError:
                pass
            try:
                gpu = upload(primitive_data(mesh.primitive))
            except KeyError as exc:
                reason = exc.args[0]
                self.report(f"engine: cannot load mesh: {reason}; entities using it are not drawn")
                gpu = None
            self._primitives[mesh.primitive] = gpu
            return gpu
        path = resolve_asset(mesh.path, self.project_dir)
        try:
            return self._files[path]
        except KeyError:
            self._files[path] = None
            self._start(path)
            return None

    def loading(self) -> int:
        """How many OBJ files are being parsed now."""
        return len(self._loading)

    def wait_loaded(self, timeout_s: float | None = None) -> bool:
        """Block until every parse under way has finished (not uploaded: :meth:`poll` does
        that); whether they all did within ``timeout_s``. For tools and tests, never a frame.
        """
        _, not_done = wait(list(self._loading.values()), timeout=timeout_s)
        return not not_done

    def handles(self, path: Path | str) -> bool:
        """Whether ``path`` is a mesh file this cache loaded (or tried to)."""
        return Path(path).suffix.lower() == ".obj" and _resolved(path) in {
            _resolved(p) for p in self._files
        }

    def queue_change(self, path: Path | str, event_time_ns: int = 0) -> None:
        """Note that a file changed on disk; any thread. Loaded again at the next :meth:`poll`."""
        if Path(path).suffix.lower() == ".obj":
            with self._lock:
                self._changed.add(_resolved(path))

    def poll(self) -> None:
        """Between frames, on the GL thread: upload finished parses, start changed files'.

        A parse that failed is reported once; the mesh drawn before (if any) stays.
        """
        with self._lock:
            changed, self._changed = self._changed, set()
        if changed:
            for path in list(self._files):
                if _resolved(path) in changed:
                    if path in self._loading:
                        self._stale.add(path)
                    else:
                        self._start(path)
        for path, future in list(self._loading.items()):
            if not future.done():
                continue
            del self._loading[path]
            try:
                data = future.result()
            except (OSError, ValueError) as exc:  # the parser's message, or no child
                keeping = (
                    "keeping the last good mesh"
                    if self._files.get(path)
                    else ("entities using it are not drawn")
                )
                self.report(f"engine: cannot load mesh {path}: {exc}; {keeping}")
            else:
                old = self._files.get(path)
                self._files[path] = upload(data)
                if old is not None:
                    _delete(old)
            if path in self._stale:
                self._stale.discard(path)
                self._start(path)

    def _start(self, path: Path) -> None:
        if self._submit is not None:
            self._loading[path] = self._submit(parse_elsewhere, path)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-mesh")
        self._loading[path] = self._pool.submit(parse_elsewhere, path)

    def forget(self, mesh: Mesh | None = None) -> None:
        """Drop one cached mesh (or all) so the next draw loads it again; buffers are freed."""
        if mesh is None:
            meshes = list(self._primitives.values()) + list(self._files.values())
            self._primitives.clear()
            self._files.clear()
        elif mesh.path:
            meshes = [self._files.pop(resolve_asset(mesh.path, self.project_dir), None)]
        else:
            meshes = [self._primitives.pop(mesh.primitive, None)]
        for gpu in meshes:
            if gpu is not None:
                _delete(gpu)

    def close(self) -> None:
        """Stop the parsing worker (a later OBJ starts a new one); buffers stay."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._loading.clear()


def _resolved(path: Path | str) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(path)


def _delete(gpu: GpuMesh) -> None:
    from engine.render.context import gl

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


def _main(argv: list[str]) -> int:
    """``python -m engine.render.meshes FILE.obj OUT.npz``: what :func:`parse_elsewhere` runs."""
    try:
        data = load_obj(argv[0])
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    uv = data.texcoords if data.texcoords is not None else np.zeros((len(data.positions), 2))
    np.savez(argv[1], positions=data.positions, normals=data.normals, indices=data.indices, uv=uv)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

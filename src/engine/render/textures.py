"""Textures: PNG files (through ``pyglet.image``) as GL textures, reloaded when edited.

A :class:`~engine.render.components.Material` names its texture by path, relative to the
project folder. :class:`TextureCache` loads each file once, on the GL thread, the first
time an entity using it is drawn, and again after the file changes on disk
(:meth:`TextureCache.queue_change`, applied by :meth:`TextureCache.poll` between frames).
A file that cannot be read or decoded is reported once: entities keep the last good
texture, or are drawn untextured (a white texture) if there never was one.

Texture coordinates put (0, 0) at the image's bottom-left corner, as GL and OBJ files do.
"""

from __future__ import annotations

import ctypes
import io
import threading
from collections.abc import Callable
from pathlib import Path

# context first: it picks headless EGL before pyglet.gl is loaded by anyone.
from engine.render.context import gl

# isort: split
import pyglet.image

from engine.render.meshes import _ignore, _resolved, resolve_asset

#: File suffixes the cache reloads when they change.
TEXTURE_SUFFIXES = (".png",)


def _make_texture(width: int, height: int, rgba: bytes) -> int:
    handle = gl.GLuint()
    gl.glGenTextures(1, ctypes.byref(handle))
    _fill(handle.value, width, height, rgba)
    return handle.value


def _fill(texture: int, width: int, height: int, rgba: bytes) -> None:
    gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
    gl.glPixelStorei(gl.GL_UNPACK_ALIGNMENT, 1)
    gl.glTexImage2D(
        gl.GL_TEXTURE_2D, 0, gl.GL_RGBA8, width, height, 0, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, rgba
    )
    gl.glGenerateMipmap(gl.GL_TEXTURE_2D)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MIN_FILTER, gl.GL_LINEAR_MIPMAP_LINEAR)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MAG_FILTER, gl.GL_LINEAR)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_WRAP_S, gl.GL_REPEAT)
    gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_WRAP_T, gl.GL_REPEAT)
    gl.glBindTexture(gl.GL_TEXTURE_2D, 0)


def read_png(path: Path) -> tuple[int, int, bytes]:
    """``(width, height, RGBA bytes, bottom row first)`` of an image file.

    Raises ``OSError`` if it cannot be read and ``ValueError`` if it cannot be decoded.
    """
    with open(path, "rb") as file:
        data = file.read()
    try:
        image = pyglet.image.load(str(path), file=io.BytesIO(data)).get_image_data()
    except Exception as exc:  # each decoder raises its own kind; all mean "not an image"
        raise ValueError(f"cannot decode ({exc.__class__.__name__}: {exc})") from None
    # A positive pitch gives rows bottom-up: GL's order.
    return image.width, image.height, image.get_data("RGBA", image.width * 4)


class TextureCache:
    """GL textures by file, loaded on first use and reloaded after an edit; GL thread only,
    except :meth:`queue_change` (any thread).

    Args:
        project_dir: where relative paths start; ``None``: the working directory.
        report: where load failures are said (one line per failed load).
    """

    def __init__(
        self, project_dir: Path | None = None, report: Callable[[str], None] = _ignore
    ) -> None:
        self.project_dir = Path(project_dir) if project_dir is not None else None
        self.report = report
        self._textures: dict[Path, int] = {}  # only files that loaded at least once
        self._failed: set[Path] = set()
        self._changed: set[Path] = set()
        self._lock = threading.Lock()
        self._white: int | None = None

    def white(self) -> int:
        """A 1x1 white texture: what an untextured material samples."""
        if self._white is None:
            self._white = _make_texture(1, 1, b"\xff\xff\xff\xff")
        return self._white

    def get(self, path: str | None) -> int:
        """The texture for ``path`` (the white one for ``None`` or a file that never loaded)."""
        if not path:
            return self.white()
        resolved = resolve_asset(path, self.project_dir)
        texture = self._textures.get(resolved)
        if texture is not None:
            return texture
        if resolved not in self._failed:
            self._load(resolved)
        return self._textures.get(resolved) or self.white()

    def queue_change(self, path: Path | str, event_time_ns: int = 0) -> None:
        """Note that an image file changed on disk; it is read again at the next :meth:`poll`."""
        if Path(path).suffix.lower() in TEXTURE_SUFFIXES:
            with self._lock:
                self._changed.add(_resolved(path))

    def poll(self) -> None:
        """Between frames: reload every known texture file that changed."""
        with self._lock:
            changed, self._changed = self._changed, set()
        if not changed:
            return
        for path in list(self._textures) + list(self._failed):
            if _resolved(path) in changed:
                self._failed.discard(path)
                self._load(path)

    def _load(self, path: Path) -> None:
        try:
            width, height, rgba = read_png(path)
        except (OSError, ValueError) as exc:
            self._failed.add(path)
            keeping = (
                "keeping the last good texture" if path in self._textures else "drawing untextured"
            )
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self.report(f"engine: cannot load texture {path}: {reason}; {keeping}")
            return
        texture = self._textures.get(path)
        if texture is None:
            self._textures[path] = _make_texture(width, height, rgba)
        else:
            _fill(texture, width, height, rgba)

    def close(self) -> None:
        """Delete every texture (the current context must be the one they were made in)."""
        names = list(self._textures.values()) + ([self._white] if self._white else [])
        for name in names:
            gl.glDeleteTextures(1, ctypes.byref(gl.GLuint(name)))
        self._textures.clear()
        self._white = None

    def forget_gl_objects(self) -> None:
        """Drop every texture without deleting it (its context is gone); they load again."""
        self._textures.clear()
        self._failed.clear()
        self._white = None

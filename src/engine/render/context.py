"""The one OpenGL context the render box draws with: offscreen by default.

Importing this module configures pyglet *before* ``pyglet.gl`` is imported, because pyglet
fixes both choices at that import:

* ``headless``: on unless the environment says ``PYGLET_HEADLESS=0``. Headless pyglet uses
  EGL (Mesa llvmpipe on a machine without a GPU), needs no display, and can open no
  visible window. A process that wants a visible mirror window sets ``PYGLET_HEADLESS=0``
  (or calls :func:`configure` first).
* ``debug_gl``: off unless ``PYGLET_DEBUG_GL=1``. pyglet's default checks ``glGetError``
  after every call, which costs more than the drawing itself for small scenes.

If ``pyglet.gl`` was already imported by someone else, their choice stands.

Drawing never touches a window's framebuffer: the renderer makes its own framebuffer
objects. The context itself is pyglet's *shadow window* context (a 1x1 pbuffer when
headless, a hidden window otherwise), which every later pyglet window shares objects with,
so a mirror window can show the renderer's textures without copies.
"""

from __future__ import annotations

import os
import sys
import threading

import pyglet


def configure(headless: bool | None = None, debug_gl: bool | None = None) -> None:
    """Choose headless and GL error checking; only effective before ``pyglet.gl`` loads.

    ``None`` means: the environment's ``PYGLET_*`` value if set, else headless and no
    error checking. Raises ``RuntimeError`` if a different choice was asked for after
    ``pyglet.gl`` was imported (it can no longer change).
    """
    wanted = {"headless": headless, "debug_gl": debug_gl}
    if "pyglet.gl" in sys.modules:
        for option, value in wanted.items():
            if value is not None and pyglet.options[option] != value:
                raise RuntimeError(
                    f"pyglet.gl is already loaded with {option}={pyglet.options[option]}"
                )
        return
    for option, default in (("headless", True), ("debug_gl", False)):
        value = wanted[option]
        if value is None:
            from_env = f"PYGLET_{option.upper()}" in os.environ  # pyglet already parsed it
            value = pyglet.options[option] if from_env else default
        pyglet.options[option] = value


configure()

_pyglet_gl_was_loaded = "pyglet.gl" in sys.modules

import pyglet.gl  # noqa: E402  (must follow configure())

# The module itself: ``from pyglet import gl`` gives a lazy proxy whose every attribute
# lookup is a Python call, which adds up over thousands of GL calls per frame.
gl = sys.modules["pyglet.gl"]

# Loading pyglet.gl made its shadow window's context current on this thread, and a GL
# context can be current on one thread only: other threads get contexts of their own.
_shadow_thread = None if _pyglet_gl_was_loaded else threading.get_ident()
_local = threading.local()
_surfaces: list[pyglet.window.Window] = []  # hidden windows behind the other threads' contexts


def offscreen_context() -> gl.Context:
    """The calling thread's GL context, made current; created on a thread's first call.

    Every such context shares objects (buffers, programs, textures) with pyglet's shadow
    window and so with each other; framebuffers and vertex arrays are not shared, so a
    :class:`~engine.render.renderer.Renderer` stays on the thread that made it. Raises
    ``pyglet.gl.ContextException`` (or ``pyglet.display.NoSuchDisplayException`` when not
    headless and no display is reachable) if no context can be made.
    """
    context = getattr(_local, "context", None)
    if context is None:
        shadow = getattr(gl, "_shadow_window", None)
        if shadow is not None and threading.get_ident() == _shadow_thread:
            context = shadow.context
        else:
            # A hidden 1x1 window: a pbuffer when headless. It shares objects with the
            # context current at creation, which is the shadow window's.
            surface = pyglet.window.Window(width=1, height=1, visible=False)
            pyglet.app.windows.discard(surface)  # not an app window: pyglet.app.run ignores it
            _surfaces.append(surface)
            context = surface.context
        _local.context = context
    if gl.current_context is not context:
        context.set_current()
    return context


def mirror_window(
    width: int, height: int, caption: str = "All-Source Engine"
) -> pyglet.window.Window:
    """A visible window sharing objects with the offscreen context (for a desktop mirror).

    Raises ``RuntimeError`` when running headless, where no window can be shown. The window
    becomes the current context; call :func:`offscreen_context` before rendering again.
    """
    if pyglet.options["headless"]:
        raise RuntimeError("headless pyglet cannot open a visible window; set PYGLET_HEADLESS=0")
    offscreen_context()
    return pyglet.window.Window(width=width, height=height, caption=caption, visible=True)


def gl_description() -> str:
    """One line naming the GL version and renderer of the current context, for logs."""
    offscreen_context()
    return f"OpenGL {gl.gl_info.get_version_string()} on {gl.gl_info.get_renderer()}"

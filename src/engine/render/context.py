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

Headless, the engine creates its EGL contexts itself (pyglet passes no attributes beyond
the GL version), so that each asks for what its process needs, where the driver offers it:

* a GPU priority (``EGL_IMG_context_priority``) from ``ENGINE_GL_PRIORITY``: ``high``,
  ``medium``, ``low`` (the default: every engine process but the compositor yields the
  GPU to it) or ``none``;
* robustness (``EGL_EXT_create_context_robustness``, or EGL 1.5's attributes): a GPU
  reset loses the context (``LOSE_CONTEXT_ON_RESET``) instead of hanging or killing the
  process, and :func:`reset_status` says so; :func:`recreate_context` makes a fresh one.
  ``ENGINE_GL_ROBUST=0`` asks for none.

An attribute the driver refuses is dropped (the context is made without it) and
:func:`context_grant` says what was asked and what was granted. Every context of a
process gets the same attributes: contexts that share objects must agree on robustness.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
from dataclasses import dataclass

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

# --- EGL context attributes -------------------------------------------------------------

PRIORITY_ENV = "ENGINE_GL_PRIORITY"
ROBUST_ENV = "ENGINE_GL_ROBUST"
DEFAULT_PRIORITY = "low"

# EGL_IMG_context_priority
EGL_CONTEXT_PRIORITY_LEVEL_IMG = 0x3100
PRIORITY_LEVELS = {"high": 0x3101, "medium": 0x3102, "low": 0x3103}
_LEVEL_NAMES = {value: name.upper() for name, value in PRIORITY_LEVELS.items()}
# EGL_EXT_create_context_robustness, then the same request in EGL 1.5's own names.
EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY_EXT = 0x3138
EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY = 0x31BD
LOSE_ON_RESET = 0x31BF  # EGL_LOSE_CONTEXT_ON_RESET(_EXT): one value, both names
# GL: what a context says of itself.
GL_RESET_NOTIFICATION_STRATEGY = 0x8256
GL_LOSE_CONTEXT_ON_RESET = 0x8252
GL_NO_ERROR = 0
RESET_STATUS_NAMES = {
    0x8253: "GL_GUILTY_CONTEXT_RESET",
    0x8254: "GL_INNOCENT_CONTEXT_RESET",
    0x8255: "GL_UNKNOWN_CONTEXT_RESET",
}


@dataclass(frozen=True)
class ContextRequest:
    """What every GL context of this process asks for (read once, before pyglet.gl loads).

    ``priority`` is ``"high"``, ``"medium"``, ``"low"`` or ``None`` (ask for none);
    ``robust`` asks for a context that is lost, not hung, on a GPU reset.
    """

    priority: str | None = DEFAULT_PRIORITY
    robust: bool = True

    @classmethod
    def from_environment(cls) -> ContextRequest:
        """From ``ENGINE_GL_PRIORITY`` and ``ENGINE_GL_ROBUST``; an unknown priority
        name means the default (``low``), so a typo never stops a process from starting."""
        name = os.environ.get(PRIORITY_ENV, DEFAULT_PRIORITY).strip().lower()
        priority = None if name == "none" else name if name in PRIORITY_LEVELS else DEFAULT_PRIORITY
        robust = os.environ.get(ROBUST_ENV, "1").strip() not in ("0", "false", "no", "off")
        return cls(priority, robust)


@dataclass(frozen=True)
class ContextGrant:
    """What this process's GL contexts asked for and what the driver granted.

    ``priority`` reads e.g. ``"HIGH granted"``, ``"MEDIUM (asked HIGH)"``, ``"not offered
    (EGL_IMG_context_priority absent)"``, ``"LOW (not requested)"``; ``reset`` reads
    ``"lose context on reset"``, ``"refused (no reset notification)"``, ``"not offered
    (no reset notification)"`` or ``"not requested"``; ``api`` is ``"EGL"``, ``"GLX"``,
    or says that pyglet made the contexts with its own attributes.
    """

    priority: str
    reset: str
    api: str = "EGL"

    def as_dict(self) -> dict[str, str]:
        return {"priority": self.priority, "reset": self.reset, "api": self.api}


def _attribute_sets(
    extensions: set[str], egl_version: tuple[int, int], request: ContextRequest
) -> list[list[int]]:
    """The extra attribute lists to try, best first; the last one is always empty."""
    priority: list[list[int]] = [[]]
    if request.priority and "EGL_IMG_context_priority" in extensions:
        level = PRIORITY_LEVELS[request.priority]
        priority.insert(0, [EGL_CONTEXT_PRIORITY_LEVEL_IMG, level])
    # Only the reset strategy: robust buffer access (bounds checks in every shader) is not
    # needed to learn of a reset. The EXT names first (what its extension string
    # promises); Mesa takes only EGL 1.5's for desktop GL.
    robust: list[list[int]] = [[]]
    if request.robust:
        if egl_version >= (1, 5):
            robust.insert(0, [EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY, LOSE_ON_RESET])
        if "EGL_EXT_create_context_robustness" in extensions:
            robust.insert(0, [EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY_EXT, LOSE_ON_RESET])
    # Priority matters more than robustness: keep it while dropping robustness first.
    return [p + r for p in priority for r in robust]


class _EglContexts:
    """Makes pyglet's headless contexts with this process's attributes (see the module).

    Installed over ``HeadlessContext._create_egl_context`` before any context exists; the
    first attribute list the driver accepts is used for every later context too.
    """

    def __init__(self, request: ContextRequest) -> None:
        self.request = request
        self.extensions: set[str] = set()
        self.chosen: list[int] | None = None

    def create(self, context, share):  # noqa: ANN001, ANN201  (pyglet's HeadlessContext)
        from pyglet.libs.egl import egl

        display = context.config.canvas.display._display_connection
        egl_config = context.config._egl_config
        # pyglet's own attributes (GL version, forward compatibility, debug), less EGL_NONE.
        base = list(context.config._context_attrib_array)[:-1]
        egl.eglQueryString.restype = ctypes.c_char_p
        text = egl.eglQueryString(display, egl.EGL_EXTENSIONS) or b""
        self.extensions = set(text.decode(errors="replace").split())
        version = (egl.eglQueryString(display, egl.EGL_VERSION) or b"").decode(errors="replace")
        found = re.match(r"\s*(\d+)\.(\d+)", version)
        egl_version = (int(found[1]), int(found[2])) if found else (1, 4)
        candidates = _attribute_sets(self.extensions, egl_version, self.request)
        if self.chosen is not None:
            candidates = [self.chosen]
        if context.config.opengl_api == "gles":
            egl.eglBindAPI(egl.EGL_OPENGL_ES_API)
        else:
            egl.eglBindAPI(egl.EGL_OPENGL_API)
        share_context = share.egl_context if share else None
        for extra in candidates:
            attributes = [*base, *extra, egl.EGL_NONE]
            array = (egl.EGLint * len(attributes))(*attributes)
            made = egl.eglCreateContext(display, egl_config, share_context, array)
            if made:
                self.chosen = extra
                return made
        return None  # pyglet raises ContextException


_contexts = _EglContexts(ContextRequest.from_environment())

if _pyglet_gl_was_loaded or not pyglet.options["headless"]:
    import pyglet.gl  # noqa: E402
else:
    # pyglet.gl makes its shadow window's context when pyglet.window is first imported:
    # hold that back, put our context creation in place, then let pyglet make it.
    _shadow_option = pyglet.options["shadow_window"]
    pyglet.options["shadow_window"] = False
    import pyglet.gl  # noqa: E402
    import pyglet.gl.headless  # noqa: E402
    import pyglet.window  # noqa: E402

    pyglet.gl.headless.HeadlessContext._create_egl_context = lambda self, share: _contexts.create(
        self, share
    )
    pyglet.options["shadow_window"] = _shadow_option
    pyglet.gl._create_shadow_window()

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


# --- what was granted, resets -------------------------------------------------------------


def _egl_extensions(display: object) -> set[str]:
    from pyglet.libs.egl import egl

    egl.eglQueryString.restype = ctypes.c_char_p
    return set((egl.eglQueryString(display, egl.EGL_EXTENSIONS) or b"").decode().split())


def context_grant() -> ContextGrant:
    """What the calling thread's context asked for and was granted (see :class:`ContextGrant`).

    Makes the context current first. Never raises: a query that fails is reported as
    ``unknown (...)``.
    """
    request = _contexts.request
    if not pyglet.options["headless"]:
        return ContextGrant(
            "not checked (GLX context; EGL_IMG_context_priority is EGL only)",
            "not checked (GLX context)",
            api="GLX",
        )
    api = "EGL" if not _pyglet_gl_was_loaded else "EGL, pyglet's attributes (loaded before us)"
    try:
        context = offscreen_context()
        from pyglet.libs.egl import egl

        display = context.display_connection
        extensions = _contexts.extensions or _egl_extensions(display)
        value = egl.EGLint()
        level = None
        if "EGL_IMG_context_priority" in extensions:
            egl.eglQueryContext(
                display, context.egl_context, EGL_CONTEXT_PRIORITY_LEVEL_IMG, ctypes.byref(value)
            )
            level = _LEVEL_NAMES.get(value.value, f"{value.value:#x}")
        if level is None:
            priority = "not offered (EGL_IMG_context_priority absent)"
        elif request.priority is None or _pyglet_gl_was_loaded:
            priority = f"{level} (not requested)"
        elif level == request.priority.upper():
            priority = f"{level} granted"
        else:
            priority = f"{level} (asked {request.priority.upper()})"
        strategy = gl.GLint()
        gl.glGetIntegerv(GL_RESET_NOTIFICATION_STRATEGY, ctypes.byref(strategy))
        gl.glGetError()  # a GL before 4.5 without ARB_robustness does not know the query
        if strategy.value == GL_LOSE_CONTEXT_ON_RESET:
            reset = "lose context on reset"
        elif not request.robust:
            reset = "not requested"
        elif not {"EGL_EXT_create_context_robustness"} & extensions:
            reset = "not offered (no reset notification)"
        else:
            reset = "refused (no reset notification)"
    except Exception as exc:  # an odd driver must not stop a process from starting
        return ContextGrant(f"unknown ({exc.__class__.__name__}: {exc})", "unknown", api)
    return ContextGrant(priority, reset, api)


_reset_status_function = None


def reset_status() -> int:
    """``glGetGraphicsResetStatus`` of the current context: ``GL_NO_ERROR`` (0) while it is
    usable, else why it was lost (see :data:`RESET_STATUS_NAMES`).

    A context not made robust always answers 0. Never raises; 0 where the driver has no
    such query.
    """
    global _reset_status_function
    if _reset_status_function is None:
        for name in ("glGetGraphicsResetStatus", "glGetGraphicsResetStatusARB"):
            function = getattr(gl, name, None)
            try:
                if function is not None:
                    function()
                    _reset_status_function = function
                    break
            except Exception:  # noqa: S112  (missing in this driver: try the next name)
                continue
        else:
            _reset_status_function = lambda: GL_NO_ERROR  # noqa: E731
    try:
        return int(_reset_status_function())
    except Exception:
        return GL_NO_ERROR


def recreate_context() -> gl.Context:
    """Replace the calling thread's context by a fresh one, made current (after a reset).

    The new context shares nothing with the old one: every GL object the caller made
    (buffers, programs, textures, framebuffers) must be made again. It gets the same
    attributes (priority, robustness) as the old. The old context is released, except
    the shadow window's, which pyglet keeps (a lost context holds nothing worth freeing).
    Raises ``pyglet.gl.ContextException`` if no context can be made.
    """
    old = offscreen_context()
    context = old.config.create_context(None)
    surface = pyglet.window.Window(width=1, height=1, visible=False, context=context)
    pyglet.app.windows.discard(surface)
    for previous in [s for s in _surfaces if s.context is old]:
        _surfaces.remove(previous)
        pyglet.app.windows.add(previous)  # close() takes it out of the app's windows
        previous.close()
    _surfaces.append(surface)
    _local.context = context
    context.set_current()
    return context

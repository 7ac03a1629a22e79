"""The render box: draws each eye of the world into offscreen framebuffers, live shaders.

Components and camera math import without touching OpenGL, so world code, checkpoints and
pose sources can use them anywhere. The GL parts (:class:`Renderer`, :class:`ShaderLibrary`,
:func:`offscreen_context`) load on first use; loading them picks headless EGL unless the
environment says ``PYGLET_HEADLESS=0`` (see :mod:`engine.render.context`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.render.camera import eyes_from_head, projection_matrix, view_matrix
from engine.render.components import PRIMITIVES, Material, Mesh, Transform

if TYPE_CHECKING:
    from engine.render.context import mirror_window, offscreen_context
    from engine.render.renderer import Renderer, RenderTimings
    from engine.render.shaders import ShaderError, ShaderLibrary, ShaderSwap

# Public name -> submodule that defines it, imported on first access (PEP 562).
_LAZY = {
    "Renderer": "renderer",
    "RenderTimings": "renderer",
    "ShaderLibrary": "shaders",
    "ShaderSwap": "shaders",
    "ShaderError": "shaders",
    "offscreen_context": "context",
    "mirror_window": "context",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.render' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"engine.render.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "PRIMITIVES",
    "Material",
    "Mesh",
    "RenderTimings",
    "Renderer",
    "ShaderError",
    "ShaderLibrary",
    "ShaderSwap",
    "Transform",
    "eyes_from_head",
    "mirror_window",
    "offscreen_context",
    "projection_matrix",
    "view_matrix",
]

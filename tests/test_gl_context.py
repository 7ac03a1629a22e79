"""The engine's own EGL contexts: the GPU priority and robustness they ask for, what they
report as granted, and a context made again after a reset."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.render.context import (
    EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY,
    EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY_EXT,
    EGL_CONTEXT_PRIORITY_LEVEL_IMG,
    LOSE_ON_RESET,
    PRIORITY_LEVELS,
    ContextRequest,
    _attribute_sets,
)

NVIDIA_EXTENSIONS = {"EGL_IMG_context_priority", "EGL_EXT_create_context_robustness"}
MESA_EXTENSIONS = {"EGL_EXT_create_context_robustness", "EGL_KHR_create_context"}
HIGH = [EGL_CONTEXT_PRIORITY_LEVEL_IMG, PRIORITY_LEVELS["high"]]
EXT_RESET = [EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY_EXT, LOSE_ON_RESET]
CORE_RESET = [EGL_CONTEXT_OPENGL_RESET_NOTIFICATION_STRATEGY, LOSE_ON_RESET]


def test_where_offered_priority_and_robustness_are_asked_for_then_dropped_in_turn():
    sets = _attribute_sets(NVIDIA_EXTENSIONS, (1, 5), ContextRequest("high", robust=True))
    assert sets == [HIGH + EXT_RESET, HIGH + CORE_RESET, HIGH, EXT_RESET, CORE_RESET, []]


def test_what_is_not_offered_or_not_requested_is_not_asked_for():
    assert _attribute_sets(MESA_EXTENSIONS, (1, 5), ContextRequest("high")) == [
        EXT_RESET,
        CORE_RESET,
        [],
    ]
    assert _attribute_sets(NVIDIA_EXTENSIONS, (1, 4), ContextRequest(None, robust=False)) == [[]]
    assert _attribute_sets(set(), (1, 4), ContextRequest("low")) == [[]]


def test_the_request_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("ENGINE_GL_PRIORITY", "HIGH")
    monkeypatch.setenv("ENGINE_GL_ROBUST", "0")
    assert ContextRequest.from_environment() == ContextRequest("high", robust=False)
    monkeypatch.setenv("ENGINE_GL_PRIORITY", "none")
    assert ContextRequest.from_environment().priority is None
    monkeypatch.setenv("ENGINE_GL_PRIORITY", "urgent")  # a typo: the default, not a failure
    monkeypatch.delenv("ENGINE_GL_ROBUST")
    assert ContextRequest.from_environment() == ContextRequest("low", robust=True)


def test_this_context_reports_what_it_was_granted(gl):
    from engine.compositor.process import is_software_renderer
    from engine.render.context import context_grant, reset_status

    grant = context_grant()
    assert grant.api == "EGL"
    assert grant.priority.startswith(("not offered", "LOW granted"))  # tests ask for LOW
    if is_software_renderer(gl.gl_info.get_renderer()):
        # Mesa takes EGL 1.5's reset strategy for desktop GL (not the EXT names).
        assert grant.priority == "not offered (EGL_IMG_context_priority absent)"
        assert grant.reset == "lose context on reset"
    assert reset_status() == 0  # a context in use is not lost


def test_a_gpu_priority_cannot_be_asked_for_once_contexts_exist(gl):
    from engine.compositor.priority import GPU_PRIORITY_ENV, request_gpu_priority
    from engine.render.context import PRIORITY_ENV

    assert GPU_PRIORITY_ENV == PRIORITY_ENV
    with pytest.raises(RuntimeError):
        request_gpu_priority("high")


def test_a_process_asking_for_high_priority_is_told_what_it_got():
    code = (
        "from engine.compositor.priority import request_gpu_priority, gpu_context_priority\n"
        "request_gpu_priority('high')\n"
        "from engine.render.context import offscreen_context, _contexts\n"
        "offscreen_context()\n"
        "print(_contexts.request.priority, gpu_context_priority())\n"
    )
    # This machine's environment (PYTHONPATH, the EGL vendor), less any priority asked.
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_GL_PRIORITY"}
    env["PYGLET_HEADLESS"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    asked, _, granted = done.stdout.strip().partition(" ")
    assert asked == "high"
    assert "'gpu': 'HIGH granted'" in granted or "'gpu': 'not offered" in granted


def test_a_new_context_replaces_the_threads_own_and_draws(gl):
    import ctypes

    from engine.render.context import offscreen_context, recreate_context

    old = offscreen_context()
    new = recreate_context()
    assert new is not old and offscreen_context() is new and gl.current_context is new
    # A fresh context: clear a framebuffer of its own and read it back.
    fbo, texture = gl.GLuint(), gl.GLuint()
    gl.glGenTextures(1, ctypes.byref(texture))
    gl.glBindTexture(gl.GL_TEXTURE_2D, texture.value)
    gl.glTexImage2D(
        gl.GL_TEXTURE_2D, 0, gl.GL_RGBA8, 4, 4, 0, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, None
    )
    gl.glGenFramebuffers(1, ctypes.byref(fbo))
    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, fbo.value)
    gl.glFramebufferTexture2D(
        gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_TEXTURE_2D, texture.value, 0
    )
    gl.glClearColor(0.0, 1.0, 0.0, 1.0)
    gl.glClear(gl.GL_COLOR_BUFFER_BIT)
    pixel = (gl.GLubyte * 4)()
    gl.glReadPixels(0, 0, 1, 1, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE, pixel)
    gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
    gl.glDeleteFramebuffers(1, ctypes.byref(fbo))
    gl.glDeleteTextures(1, ctypes.byref(texture))
    assert tuple(pixel) == (0, 255, 0, 255)

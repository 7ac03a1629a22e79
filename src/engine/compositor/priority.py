"""Asking the OS (and the GPU) to put the compositor first, and saying what was granted.

CPU: ``SCHED_FIFO`` where permitted (root, or ``CAP_SYS_NICE``, or an ``RLIMIT_RTPRIO``),
else the lowest nice value permitted. Threads started afterwards inherit the policy, so
this runs *before* the GL context exists and its driver threads (llvmpipe's rasterizer
threads are then real-time too: they do the compositor's drawing). A real-time thread
that spins is throttled by the kernel's RT bandwidth limit (``sched_rt_runtime_us``);
the compositor's clock therefore sleeps coarsely and spins only the last stretch.

GPU: a high-priority EGL context needs ``EGL_IMG_context_priority``. pyglet creates its
contexts without attributes, so where the extension is offered this reports that it is
offered but not requested; Mesa's llvmpipe does not offer it.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import asdict, dataclass

FIFO_PRIORITY = 10  # above ordinary RT helpers (the kernel's own threads sit at 50+)


@dataclass(frozen=True, slots=True)
class PriorityReport:
    """What the compositor asked for and got, for logs and the stats JSON."""

    cpu: str  # e.g. "SCHED_FIFO 10", "nice -20", "nice 0 (not permitted to raise)"
    gpu: str  # e.g. "not offered (EGL_IMG_context_priority absent)"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def raise_cpu_priority(realtime: bool = True, fifo_priority: int = FIFO_PRIORITY) -> str:
    """Ask for ``SCHED_FIFO`` (if ``realtime``), else the lowest nice; return what was got.

    Never raises: a refusal is part of the answer.
    """
    if realtime and hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(fifo_priority))
            return f"SCHED_FIFO {fifo_priority}"
        except (PermissionError, OSError):
            pass
    current = os.getpriority(os.PRIO_PROCESS, 0)
    for nice in range(-20, current):
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            return f"nice {nice}"
        except (PermissionError, OSError):
            continue
    return f"nice {current} (not permitted to raise)"


def gpu_context_priority() -> str:
    """Whether a high-priority GL context is available, and whether this one has it.

    Reads the EGL extension list of pyglet's headless display; without EGL (a desktop
    GLX context) it says so. Never raises.
    """
    try:
        import pyglet

        if not pyglet.options["headless"]:
            return "not checked (GLX context; EGL_IMG_context_priority is EGL only)"
        from pyglet.libs.egl import egl

        egl.eglQueryString.restype = ctypes.c_char_p
        display = egl.eglGetCurrentDisplay()
        extensions = egl.eglQueryString(display, egl.EGL_EXTENSIONS) or b""
    except Exception as exc:  # an odd driver must not stop the compositor from starting
        return f"unknown ({exc.__class__.__name__}: {exc})"
    if b"EGL_IMG_context_priority" not in extensions.split():
        return "not offered (EGL_IMG_context_priority absent)"
    return "offered, not requested (pyglet creates contexts without priority attributes)"

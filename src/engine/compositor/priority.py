"""Asking the OS (and the GPU) to put the compositor first, and saying what was granted.

CPU: ``SCHED_FIFO`` where permitted (root, or ``CAP_SYS_NICE``, or an ``RLIMIT_RTPRIO``),
else the lowest nice value permitted. Threads started afterwards inherit the policy, so
this runs *before* the GL context exists and its driver threads (llvmpipe's rasterizer
threads are then real-time too: they do the compositor's drawing). A real-time thread
that spins is throttled by the kernel's RT bandwidth limit (``sched_rt_runtime_us``);
the compositor's clock therefore sleeps coarsely and spins only the last stretch.

GPU: a high-priority EGL context needs ``EGL_IMG_context_priority``. pyglet creates its
contexts without attributes, so the engine makes them itself (``engine.render.context``),
asking for what ``ENGINE_GL_PRIORITY`` says: :func:`request_gpu_priority` sets it to
``high`` for the compositor before its GL loads (every other engine process asks for
``low``), and :func:`gpu_context_priority` reports what the driver granted. NVIDIA offers
the extension and grants HIGH; Mesa's llvmpipe does not offer it (reported, not an error).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

#: What ``engine.render.context`` reads (its ``PRIORITY_ENV``) when it makes contexts.
GPU_PRIORITY_ENV = "ENGINE_GL_PRIORITY"
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


def request_gpu_priority(level: str = "high") -> None:
    """Have this process's GL contexts ask for ``level`` (``high``, ``medium``, ``low``).

    Only effective before ``engine.render.context`` is first imported (it reads the
    choice then, and loads GL: so it is not imported here); the compositor calls this
    before its GL. Raises ``RuntimeError`` when called too late.
    """
    if "engine.render.context" in sys.modules:
        raise RuntimeError("GL contexts are already made; ask for a GPU priority before")
    os.environ[GPU_PRIORITY_ENV] = level


def gpu_context_priority() -> dict[str, str]:
    """What the current GL context was granted: ``{"gpu": ..., "gpu_reset": ...}``.

    ``gpu`` reads e.g. ``"HIGH granted"``, ``"not offered (EGL_IMG_context_priority
    absent)"`` or, for a desktop (GLX) context, ``"not checked (GLX context; ...)"``;
    ``gpu_reset`` says whether a GPU reset loses the context (see
    :class:`engine.render.context.ContextGrant`). Never raises.
    """
    try:
        from engine.render.context import context_grant

        grant = context_grant()
    except Exception as exc:  # an odd driver must not stop the compositor from starting
        return {"gpu": f"unknown ({exc.__class__.__name__}: {exc})", "gpu_reset": "unknown"}
    return {"gpu": grant.priority, "gpu_reset": grant.reset}

"""``engine doctor [PROJECT]``: what this machine gives the engine, and what a project's
files say, one line each.

Every line is ``OK``, ``WARN`` (an optional feature is missing: the line says what is
lost and the command that installs it) or ``FAIL`` (the engine cannot run here, or a
project file is broken). Machine checks:

=================  ============================================================  ========
check              how                                                           needed
=================  ============================================================  ========
python             this interpreter's version (3.11 or newer)                    yes
packages           the engine's dependencies, with versions                      yes
gl                 a headless GL context: version, renderer, pyglet's version    yes
egl/gl extensions  context priority, robustness, dma-buf export, memory objects  no
display            an X display for ``--window`` (opened, not just named)        no
cpu priority       what :func:`~engine.compositor.priority.raise_cpu_priority`   no
                   gets here
vulkan             the loader, its drivers (ICDs) and each physical device       no
openxr             ``XR_RUNTIME_JSON`` or the active runtime file; pyopenxr      no
=================  ============================================================  ========

Anything that loads a driver or runs a project's code runs in a child process
(``python -m engine.launcher.doctor probe NAME``) with a time limit, so a driver that
crashes or hangs costs one line, never the doctor. A probe prints JSON lines on its
stdout (everything else it prints goes to stderr).

``engine doctor PROJECT`` adds: each ``systems/*.py`` (and ``game.py``'s module code)
loaded with the loader's own :func:`~engine.loader.modules.execute_module` under its load
limit, each failure as ``file:line: error``; each shader program of ``shaders/`` compiled
by the :class:`~engine.render.shaders.ShaderLibrary` on a headless context; and the size
of ``.engine/history``. Nothing is written to the project (the shader check records its
versions in a throwaway history).

Exit status (:func:`main`): 0 when the machine can run the engine and the project's files
load; 1 when a needed machine check or a project check fails; 2 for a bad path.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

OK, WARN, FAIL = "OK", "WARN", "FAIL"

#: Python the engine needs.
MIN_PYTHON = (3, 11)
#: GL the engine's shaders need (``#version 330 core``).
MIN_GL = (3, 3)
#: Packages the engine imports, as named on PyPI.
REQUIRED_PACKAGES = ("esper", "pyglet", "numpy", "watchfiles", "rich", "pyseccomp")

GPU_DRIVER_FIX = (
    "a GPU driver offers it, a CPU renderer does not (AMD/Intel: apt-get install "
    "libegl-mesa0 libgl1-mesa-dri; NVIDIA: its proprietary driver)"
)
#: EGL and GL extensions the engine can use, and what each gives.
EGL_EXTENSIONS = {
    "EGL_IMG_context_priority": "high-priority GPU context for the compositor",
    "EGL_EXT_create_context_robustness": "GPU reset isolation (only the guilty context dies)",
    "EGL_MESA_image_dma_buf_export": "layer images exported as dma-bufs (no copies)",
}
GL_EXTENSIONS = {
    "GL_EXT_memory_object_fd": "layer images in GPU memory shared between processes",
    "GL_EXT_semaphore_fd": "GPU-side sync between game and compositor",
}
#: Where the OpenXR loader looks for the active runtime (after ``XR_RUNTIME_JSON``).
OPENXR_ACTIVE = "openxr/1/active_runtime.json"

FIX_MODULE = "fix the file; a running game keeps its last good version"
FIX_SHADER = "fix the file; a running game keeps its last good program"

PROBE_TIMEOUT_S = {
    "gl": 60.0,
    "display": 15.0,
    "priority": 15.0,
    "vulkan": 30.0,
    "openxr": 30.0,
    "fence": 15.0,
}


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is :data:`OK`, :data:`WARN` or :data:`FAIL`;
    ``fix`` is what to do about it (a command where there is one)."""

    name: str
    status: str
    detail: str
    fix: str | None = None

    def line(self, width: int = 16) -> str:
        """``STATUS  name  detail -> fix``, the name padded to ``width``."""
        fix = f" -> {self.fix}" if self.fix else ""
        return f"{self.status:<4}  {self.name:<{width}}  {self.detail}{fix}"


# --- probes: child processes ----------------------------------------------------------


@dataclass
class ProbeResult:
    """What a probe printed (its JSON lines, in order) and, if it did not finish, why."""

    lines: list[dict[str, Any]]
    error: str | None = None

    @property
    def last(self) -> dict[str, Any]:
        return self.lines[-1] if self.lines else {}


class Probe:
    """A probe started now in a child process; :meth:`result` waits for it (at most
    ``timeout_s`` from the start, then kills it)."""

    def __init__(self, name: str, *args: str, timeout_s: float, env: dict | None = None):
        self.name = name
        self.deadline = time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding engine/
        environment = {**os.environ, "PYGLET_HEADLESS": "1", **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, environment.get("PYTHONPATH")) if p
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "engine.launcher.doctor", "probe", name, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )

    def result(self) -> ProbeResult:
        error = None
        try:
            out, err = self.process.communicate(timeout=max(0.1, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            error = f"timed out after {self.timeout_s:g} s"
        lines = []
        for text in out.splitlines():
            try:
                value = json.loads(text)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
        if error is None and self.process.returncode != 0:
            code = self.process.returncode
            from engine.launcher.supervisor import describe_exit

            last = next((t for t in reversed(err.strip().splitlines()) if t.strip()), "")
            error = f"crashed ({describe_exit(code)})" + (f": {last.strip()}" if last else "")
        return ProbeResult(lines, error)


def _emit_to(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    def emit(value: dict[str, Any]) -> None:
        out.write(json.dumps(value) + "\n")
        out.flush()

    return emit


def probe_main(argv: list[str]) -> int:
    """Entry point of a probe child: ``probe NAME [ARGS]``. Its JSON lines go to the real
    stdout; stdout is pointed at stderr first, so nothing else (a library's message, a
    driver's warning) can mix in."""
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if len(argv) < 2 or argv[0] != "probe" or argv[1] not in PROBES:
        sys.stderr.write(f"usage: python -m engine.launcher.doctor probe {{{','.join(PROBES)}}}\n")
        return 2
    PROBES[argv[1]](_emit_to(out), *argv[2:])
    return 0


def _probe_gl(emit: Callable[[dict[str, Any]], None]) -> None:
    import pyglet

    from engine.render.context import gl, offscreen_context

    offscreen_context()
    info = gl.gl_info
    egl_extensions: list[str] = []
    try:
        from pyglet.libs.egl import egl

        egl.eglQueryString.restype = ctypes.c_char_p
        display = egl.eglGetCurrentDisplay()
        egl_extensions = (egl.eglQueryString(display, egl.EGL_EXTENSIONS) or b"").decode().split()
    except Exception:  # no EGL (a GLX context): the extensions are reported as absent
        pass
    emit(
        {
            "pyglet": pyglet.version,
            "version": info.get_version_string(),
            "major_minor": list(info.get_version()[:2]),
            "renderer": info.get_renderer(),
            "vendor": info.get_vendor(),
            "egl_extensions": egl_extensions,
            "gl_extensions": sorted(info.get_extensions()),
        }
    )


def _probe_display(emit: Callable[[dict[str, Any]], None]) -> None:
    import pyglet

    pyglet.options["headless"] = False
    display = pyglet.display.get_display()
    screens = display.get_screens()
    emit({"screens": [f"{s.width}x{s.height}" for s in screens]})


def _probe_priority(emit: Callable[[dict[str, Any]], None]) -> None:
    from engine.compositor.priority import raise_cpu_priority

    emit({"cpu": raise_cpu_priority(True)})


def _probe_fence(emit: Callable[[dict[str, Any]], None]) -> None:
    """The game's kernel fence, tried for real: fence off the doctor (this probe's parent)
    and send it a harmless SIGCONT, which the fence must refuse."""
    import signal

    from engine.launcher.containment import fence_signals

    fence = fence_signals([os.getppid()])
    try:
        os.kill(os.getppid(), signal.SIGCONT)
        refused = False
    except PermissionError:
        refused = True
    emit({"fence": fence, "refused": refused})


def _probe_vulkan(emit: Callable[[dict[str, Any]], None]) -> None:
    emit({"devices": vulkan_devices()})


def _probe_openxr(emit: Callable[[dict[str, Any]], None]) -> None:
    import xr

    emit({"pyopenxr": getattr(xr, "__version__", "") or metadata.version("pyopenxr")})


def _probe_modules(emit: Callable[[dict[str, Any]], None], project: str, limit: str) -> None:
    from engine.game import builtin_systems_dir

    root = Path(project)
    builtin = builtin_systems_dir()
    modules = DiskModules([root / "systems", *([builtin] if builtin else [])], float(limit))
    for name in project_module_names(root):
        emit({"start": name})
        emit(modules.check(name, root / "systems" / f"{name}.py"))
    game = root / "game.py"
    if game.is_file():
        emit({"start": "game"})
        emit(modules.check("game", game))


def _probe_shaders(emit: Callable[[dict[str, Any]], None], project: str) -> None:
    from engine.loader.history import ProjectHistory
    from engine.render.shaders import STAGE_SUFFIXES, ShaderLibrary

    shader_dir = Path(project) / "shaders"
    names = sorted(
        {
            p.stem
            for p in shader_dir.iterdir()
            if p.suffix in STAGE_SUFFIXES and not p.name.startswith(".")
        }
    )
    with tempfile.TemporaryDirectory(prefix="engine-doctor-") as scratch:
        library = ShaderLibrary(Path(project), history=ProjectHistory(Path(scratch)))
        for name in names:
            library.program(name)
            error = library.last_error(name)
            emit(
                {
                    "program": name,
                    "ok": error is None,
                    "path": str(error.path) if error else None,
                    "line": error.line if error else None,
                    "message": error.message if error else None,
                }
            )


PROBES: dict[str, Callable[..., None]] = {
    "gl": _probe_gl,
    "display": _probe_display,
    "priority": _probe_priority,
    "vulkan": _probe_vulkan,
    "fence": _probe_fence,
    "openxr": _probe_openxr,
    "modules": _probe_modules,
    "shaders": _probe_shaders,
}


class DiskModules:
    """Loads a project's modules from disk the way the loader resolves them, for checking.

    ``systems.<name>`` imports find the project's file first, then the built-ins; each
    file loads once; a module imported while it is still loading gets an empty module, as
    in the loader; a module that imports a broken one fails with that one's error. Nothing
    is recorded in the project's history.
    """

    def __init__(self, dirs: list[Path], load_limit_s: float) -> None:
        self.dirs = dirs
        self.load_limit_s = load_limit_s
        self.loaded: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        self.in_progress: dict[str, Any] = {}

    def check(self, name: str, path: Path) -> dict[str, Any]:
        """Load ``path`` as module ``name``: ``{"module", "ok", "path", "line", "message",
        "systems"}``."""
        from engine.loader.modules import LoadError

        try:
            loaded = self.loaded.get(name) or self._load(name, path)
        except LoadError as err:
            return {
                "module": name,
                "ok": False,
                "file": str(path),
                "path": err.path,
                "line": err.line,
                "message": err.message,
            }
        systems = [spec.name for spec, _ in loaded.systems]
        return {"module": name, "ok": True, "file": str(path), "systems": systems}

    def resolve(self, stem: str, importer: str) -> Any:
        import types

        if stem in self.loaded:
            return self.loaded[stem].module
        if stem in self.in_progress:
            return self.in_progress[stem]
        if stem in self.errors:
            raise self.errors[stem]
        path = next((d / f"{stem}.py" for d in self.dirs if (d / f"{stem}.py").is_file()), None)
        if path is None:
            raise ModuleNotFoundError(f"No module named 'systems.{stem}'")
        self.in_progress[stem] = types.ModuleType(f"systems.{stem}")
        try:
            return self._load(stem, path).module
        finally:
            self.in_progress.pop(stem, None)

    def _load(self, name: str, path: Path) -> Any:
        from engine.loader.compiler import compile_in_process
        from engine.loader.modules import (
            LoadError,
            error_from_exception,
            execute_module,
            new_module,
        )
        from engine.scheduler.watchdog import ThreadWatchdog

        try:
            source = path.read_text(encoding="utf-8")
            module = new_module(name, path, self)
            with ThreadWatchdog(self.load_limit_s):  # module code that runs away at import
                chunks = compile_in_process(source, str(path))
                loaded = execute_module(module, chunks, None, path)
        except LoadError as err:
            self.errors[name] = err
            raise
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError) as exc:
            self.errors[name] = error_from_exception(name, path, exc)
            raise self.errors[name] from None
        self.loaded[name] = loaded
        return loaded


# --- vulkan (ctypes; no device is created) --------------------------------------------

_VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
_VK_DEVICE_TYPES = {0: "other", 1: "integrated GPU", 2: "discrete GPU", 3: "virtual GPU", 4: "CPU"}
_VK_EXTERNAL = ("VK_KHR_external_memory_fd", "VK_KHR_external_semaphore_fd")


class _InstanceCreateInfo(ctypes.Structure):
    _fields_ = [
        ("sType", ctypes.c_int32),
        ("pNext", ctypes.c_void_p),
        ("flags", ctypes.c_uint32),
        ("pApplicationInfo", ctypes.c_void_p),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
    ]


class _ExtensionProperties(ctypes.Structure):
    _fields_ = [("extensionName", ctypes.c_char * 256), ("specVersion", ctypes.c_uint32)]


def vulkan_devices(library: str = "libvulkan.so.1") -> list[dict[str, Any]]:
    """Every Vulkan physical device: name, type, API version, and whether it offers the
    external memory and semaphore fds the GPU layer path needs.

    Raises ``OSError`` when the loader library is missing and ``RuntimeError`` when
    ``vkCreateInstance`` fails (no driver at all). Run it in a child process: a broken
    driver can crash the caller.
    """
    vk = ctypes.CDLL(library)
    vk.vkCreateInstance.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    vk.vkCreateInstance.restype = ctypes.c_int32
    vk.vkEnumeratePhysicalDevices.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    vk.vkEnumeratePhysicalDevices.restype = ctypes.c_int32
    vk.vkGetPhysicalDeviceProperties.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    vk.vkGetPhysicalDeviceProperties.restype = None
    vk.vkEnumerateDeviceExtensionProperties.argtypes = [ctypes.c_void_p] * 4
    vk.vkEnumerateDeviceExtensionProperties.restype = ctypes.c_int32
    vk.vkDestroyInstance.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    vk.vkDestroyInstance.restype = None
    info = _InstanceCreateInfo(sType=_VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO)
    instance = ctypes.c_void_p()
    result = vk.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance))
    if result != 0:
        raise RuntimeError(f"vkCreateInstance failed (VkResult {result})")
    try:
        count = ctypes.c_uint32()
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
        handles = (ctypes.c_void_p * count.value)()
        vk.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles)
        devices = []
        for handle in handles[: count.value]:
            # VkPhysicalDeviceProperties: apiVersion, driverVersion, vendorID, deviceID,
            # deviceType (u32 each), deviceName[256], ... (824 bytes; the rest unread).
            props = ctypes.create_string_buffer(2048)
            vk.vkGetPhysicalDeviceProperties(handle, props)
            api, _, _, _, kind = (
                int.from_bytes(props.raw[i : i + 4], "little") for i in range(0, 20, 4)
            )
            name = props.raw[20:276].split(b"\0", 1)[0].decode(errors="replace")
            n = ctypes.c_uint32()
            vk.vkEnumerateDeviceExtensionProperties(handle, None, ctypes.byref(n), None)
            extensions = (_ExtensionProperties * n.value)()
            vk.vkEnumerateDeviceExtensionProperties(handle, None, ctypes.byref(n), extensions)
            offered = {e.extensionName.decode(errors="replace") for e in extensions[: n.value]}
            devices.append(
                {
                    "name": name,
                    "type": _VK_DEVICE_TYPES.get(kind, f"type {kind}"),
                    "api": f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}",
                    "external": [e for e in _VK_EXTERNAL if e in offered],
                }
            )
        return devices
    finally:
        vk.vkDestroyInstance(instance, None)


def vulkan_icds() -> list[Path]:
    """The Vulkan driver manifests the loader would read (``VK_DRIVER_FILES`` /
    ``VK_ICD_FILENAMES`` if set, else the standard folders)."""
    named = os.environ.get("VK_DRIVER_FILES") or os.environ.get("VK_ICD_FILENAMES")
    if named:
        return [Path(p) for p in named.split(os.pathsep) if p]
    dirs = [Path("/usr/share/vulkan/icd.d"), Path("/etc/vulkan/icd.d")]
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    dirs.append(Path(data_home) / "vulkan/icd.d")
    return sorted(p for d in dirs if d.is_dir() for p in d.glob("*.json"))


# --- machine checks -------------------------------------------------------------------


def check_python() -> Check:
    """This interpreter's version against :data:`MIN_PYTHON`."""
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", OK, f"{version} ({sys.executable})")
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "python",
        FAIL,
        f"{version}; the engine needs {need}+",
        f"apt-get install python{need} python{need}-venv",
    )


def check_packages() -> list[Check]:
    """The installed versions of :data:`REQUIRED_PACKAGES` (one line; FAIL if any is
    missing)."""
    found, missing = [], []
    for name in REQUIRED_PACKAGES:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        return [Check("packages", FAIL, f"missing: {', '.join(missing)}",
                      f"pip install {' '.join(missing)}")]  # fmt: skip
    return [Check("packages", OK, ", ".join(found))]


def _version_tuple(values: Any) -> tuple[int, int]:
    try:
        return int(values[0]), int(values[1])
    except (TypeError, ValueError, IndexError):
        return (0, 0)


def gl_checks(result: ProbeResult) -> list[Check]:
    """The GL line and one line per EGL/GL extension, from the ``gl`` probe."""
    fix = "apt-get install libegl1 libgl1-mesa-dri (headless GL: EGL and Mesa)"
    data = result.last
    if result.error or not data:
        why = result.error or "no answer"
        lines = [Check("gl", FAIL, f"no headless GL context: {why}", fix)]
        unknown = "unknown (no GL context)"
        return lines + [Check(n, WARN, unknown) for n in (*EGL_EXTENSIONS, *GL_EXTENSIONS)]
    described = f"OpenGL {data['version']} on {data['renderer']} (pyglet {data['pyglet']})"
    if _version_tuple(data.get("major_minor")) < MIN_GL:
        need = ".".join(map(str, MIN_GL))
        lines = [Check("gl", FAIL, f"{described}; the engine needs GL {need}", fix)]
    else:
        lines = [Check("gl", OK, described)]
    for names, offered in (
        (EGL_EXTENSIONS, set(data.get("egl_extensions", []))),
        (GL_EXTENSIONS, set(data.get("gl_extensions", []))),
    ):
        for name, gives in names.items():
            if name in offered:
                lines.append(Check(name, OK, f"offered: {gives}"))
            else:
                lines.append(Check(name, WARN, f"missing, so no {gives}", GPU_DRIVER_FIX))
    return lines


def display_check(result: ProbeResult | None) -> Check:
    """Whether ``--window`` can open a window here (from the ``display`` probe)."""
    fix = (
        "run from a desktop session, or under Xvfb: apt-get install xvfb; "
        "xvfb-run engine run --window"
    )
    if result is None:
        wayland = os.environ.get("WAYLAND_DISPLAY")
        why = (
            f"WAYLAND_DISPLAY={wayland} but no DISPLAY (pyglet needs X11: XWayland)"
            if wayland
            else "no DISPLAY set"
        )
        return Check("display", WARN, f"{why}: --window unavailable; runs headless", fix)
    if result.error or not result.last:
        display = os.environ.get("DISPLAY", "")
        why = result.error or "no answer"
        return Check("display", WARN, f"DISPLAY={display} unreachable ({why})", fix)
    screens = ", ".join(result.last.get("screens", [])) or "no screens"
    return Check("display", OK, f"DISPLAY={os.environ.get('DISPLAY', '')} ({screens})")


def priority_check(result: ProbeResult) -> Check:
    """What CPU priority the compositor gets here (from the ``priority`` probe)."""
    fix = (
        'allow real-time: sudo setcap cap_sys_nice+ep "$(readlink -f '
        f"{sys.executable})\", or add '{_user()} - rtprio 20' to /etc/security/limits.conf"
    )
    if result.error or not result.last:
        return Check("cpu priority", WARN, f"unknown ({result.error or 'no answer'})", fix)
    got = str(result.last.get("cpu", ""))
    if got.startswith("SCHED_FIFO"):
        return Check("cpu priority", OK, f"{got} (real-time)")
    return Check(
        "cpu priority", WARN, f"{got}; SCHED_FIFO refused: frames can be late under load", fix
    )


def fence_check(result: ProbeResult) -> Check:
    """Whether the kernel keeps a game's code from signalling the engine's processes
    (from the ``fence`` probe, which tries it)."""
    fix = "apt-get install libseccomp2; pip install pyseccomp"
    if result.error or not result.last:
        return Check("signal fence", WARN, f"unknown ({result.error or 'no answer'})", fix)
    fence, refused = str(result.last.get("fence", "")), bool(result.last.get("refused"))
    if fence.startswith("seccomp") and refused:
        return Check(
            "signal fence", OK, "seccomp: the kernel refuses a game's signals to the engine"
        )
    if fence.startswith("seccomp"):
        return Check("signal fence", WARN, f"{fence}, but a signal got through", fix)
    return Check(
        "signal fence",
        WARN,
        f"{fence}: a game's raw system calls or child programs can signal the engine",
        fix,
    )


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return "@users"


def vulkan_check(result: ProbeResult) -> Check:
    """The Vulkan devices (from the ``vulkan`` probe) and the driver manifests found."""
    fix = "apt-get install libvulkan1 mesa-vulkan-drivers"
    icds = vulkan_icds()
    icd_names = ", ".join(p.stem for p in icds) or "none"
    if result.error or "devices" not in result.last:
        why = result.error or "no answer"
        if "libvulkan" in why or "cannot open shared object" in why:
            why = "no Vulkan loader (libvulkan.so.1)"
        return Check("vulkan", WARN, f"{why}; drivers: {icd_names}", fix)
    devices = result.last["devices"]
    if not devices:
        return Check("vulkan", WARN, f"no physical device; drivers: {icd_names}", fix)
    described = "; ".join(
        f"{d['name']} ({d['type']}, Vulkan {d['api']}, "
        + (" + ".join(d["external"]) if d["external"] else "no external memory/semaphore fds")
        + ")"
        for d in devices
    )
    return Check("vulkan", OK, described)


def openxr_runtime() -> tuple[Path | None, str]:
    """The active OpenXR runtime manifest and where it was named (``XR_RUNTIME_JSON``, or
    the user's or the system's ``active_runtime.json``); ``(None, "")`` when none is."""
    env = os.environ.get("XR_RUNTIME_JSON")
    if env:
        return Path(env), "XR_RUNTIME_JSON"
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    config_dirs = (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(os.pathsep)
    for base in (config_home, *config_dirs):
        path = Path(base) / OPENXR_ACTIVE
        if path.exists() or path.is_symlink():
            return path, str(path)
    return None, ""


def openxr_checks(result: ProbeResult) -> list[Check]:
    """The OpenXR runtime (manifest and its library) and whether pyopenxr imports."""
    manifest, named_by = openxr_runtime()
    runtime_fix = (
        "install a runtime, e.g. Monado: apt-get install monado-service; then run monado-service"
    )
    if manifest is None:
        runtime = Check(
            "openxr runtime",
            WARN,
            "none active (no XR_RUNTIME_JSON, no active_runtime.json): no headset",
            runtime_fix,
        )
    else:
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))["runtime"]
            library = Path(data["library_path"])
            if not library.is_absolute() and "/" in data["library_path"]:
                library = manifest.resolve().parent / library
            name = data.get("name") or library.name
            if library.is_absolute() and not library.exists():
                runtime = Check(
                    "openxr runtime",
                    WARN,
                    f"{name} named by {named_by}, but {library} is missing",
                    runtime_fix,
                )
            else:
                runtime = Check("openxr runtime", OK, f"{name} ({named_by})")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            runtime = Check("openxr runtime", WARN, f"{manifest} unreadable: {exc}", runtime_fix)
    if result.error or not result.last:
        why = result.error or "no answer"
        pyopenxr = Check(
            "pyopenxr",
            WARN,
            f"does not import: {why}",
            "pip install 'all-source-engine[openxr]' (or pip install pyopenxr)",
        )
    else:
        pyopenxr = Check("pyopenxr", OK, f"imports (pyopenxr {result.last['pyopenxr']})")
    return [runtime, pyopenxr]


def start_machine_probes() -> dict[str, Probe]:
    """The machine's probes, started side by side (each with its own time limit)."""
    probes = {
        name: Probe(name, timeout_s=PROBE_TIMEOUT_S[name])
        for name in ("gl", "priority", "vulkan", "openxr", "fence")
    }
    if os.environ.get("DISPLAY"):
        probes["display"] = Probe(
            "display", timeout_s=PROBE_TIMEOUT_S["display"], env={"PYGLET_HEADLESS": "0"}
        )
    return probes


def machine_checks(probes: dict[str, Probe] | None = None) -> list[Check]:
    """Every machine check, from ``probes`` (default: started now)."""
    probes = probes if probes is not None else start_machine_probes()
    checks = [check_python(), *check_packages()]
    checks += gl_checks(probes["gl"].result())
    checks.append(display_check(probes["display"].result() if "display" in probes else None))
    checks.append(priority_check(probes["priority"].result()))
    checks.append(vulkan_check(probes["vulkan"].result()))
    checks.append(fence_check(probes["fence"].result()))
    checks += openxr_checks(probes["openxr"].result())
    return checks


# --- project checks -------------------------------------------------------------------


def _shown(path: str | Path) -> str:
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def project_module_names(project: Path) -> list[str]:
    """The system modules of ``project``, as the loader lists them."""
    systems = project / "systems"
    if not systems.is_dir():
        return []
    return sorted(
        p.stem for p in systems.glob("*.py") if p.stem.isidentifier() and p.stem != "__init__"
    )


def start_module_probe(
    project: Path, load_limit_s: float = 2.0, timeout_s: float | None = None
) -> Probe:
    """Load the project's modules in a child, each under ``load_limit_s``; the child is
    killed after ``timeout_s`` (default: 30 s plus the load limit and a second per module),
    which only code the load limit cannot stop (a C call that never returns) reaches."""
    if timeout_s is None:
        count = len(project_module_names(project)) + (project / "game.py").is_file()
        timeout_s = 30.0 + (load_limit_s + 1.0) * count
    return Probe("modules", str(project), str(load_limit_s), timeout_s=timeout_s)


def module_checks(project: Path, probe: Probe | None = None) -> list[Check]:
    """One line per module that fails to load (``file:line: error``), or one OK line."""
    result = (probe or start_module_probe(project)).result()
    checks, ok = [], []
    started = None
    for line in result.lines:
        if "start" in line:
            started = line["start"]
            continue
        started = None
        if line["ok"]:
            ok.append(line["module"])
            continue
        where = _shown(line["path"]) + (f":{line['line']}" if line.get("line") else "")
        detail = f"{where}: {line['message']}"
        if line.get("file") and not _same_file(line["file"], line["path"]):
            detail = f"{_shown(line['file'])} imports a module that fails: {detail}"
        checks.append(Check(f"module {line['module']}", FAIL, detail, FIX_MODULE))
    if result.error:
        blamed = f" while loading {started}" if started else ""
        checks.append(
            Check(
                "modules",
                FAIL,
                f"the check {result.error}{blamed}",
                "a module hangs or crashes at import",
            )
        )
    if not checks:
        count = len(ok)
        detail = f"{count} module{'s' * (count != 1)} load" if count else "no systems/*.py"
        checks.append(Check("modules", OK, detail))
    return checks


def _has_shaders(project: Path) -> bool:
    from engine.loader.watcher import SHADER_SUFFIXES  # not engine.render: no GL here

    shader_dir = project / "shaders"
    return shader_dir.is_dir() and any(p.suffix in SHADER_SUFFIXES for p in shader_dir.iterdir())


def start_shader_probe(project: Path) -> Probe | None:
    """Build the project's shader programs in a child (``None``: it has none)."""
    if not _has_shaders(project):
        return None
    return Probe("shaders", str(project), timeout_s=PROBE_TIMEOUT_S["gl"])


def shader_checks(project: Path, probe: Probe | None = None) -> list[Check]:
    """One line per shader program of ``shaders/`` that does not build, or one OK line."""
    probe = probe or start_shader_probe(project)
    if probe is None:
        return [Check("shaders", OK, "none in the project (the built-ins draw)")]
    result = probe.result()
    checks = []
    good = 0
    for line in result.lines:
        if line["ok"]:
            good += 1
            continue
        where = _shown(line["path"]) + (f":{line['line']}" if line.get("line") else "")
        checks.append(
            Check(f"shader {line['program']}", FAIL, f"{where}: {line['message']}", FIX_SHADER)
        )
    if result.error:
        checks.append(
            Check(
                "shaders",
                FAIL,
                f"the check {result.error}",
                "apt-get install libegl1 libgl1-mesa-dri",
            )
        )
    if not checks:
        checks.append(Check("shaders", OK, f"{good} program{'s' * (good != 1)} compile and link"))
    return checks


def history_check(project: Path, warn_bytes: int = 256 << 20) -> Check:
    """Size of ``.engine/history``: versions kept for undo (grows with every save)."""
    from engine.loader.history import HISTORY_DIR

    root = project / HISTORY_DIR
    if not root.is_dir():
        return Check("history", OK, "none yet (made at the first run)")
    size = files = 0
    units = set()
    for path in _walk(root):
        files += 1
        size += path.stat().st_size
        units.add(path.parent)
    detail = f"{_bytes(size)} in {files} files, {len(units)} modules and shaders ({_shown(root)})"
    if size > warn_bytes:
        return Check("history", WARN, detail, f"to start over (undo is lost): rm -r {_shown(root)}")
    return Check("history", OK, detail)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def project_checks(project: Path, probes: dict[str, Probe | None] | None = None) -> list[Check]:
    """Modules, shaders and history of ``project``, from ``probes`` (default: started now)."""
    probes = probes or {}
    return [
        *module_checks(project, probes.get("modules")),
        *shader_checks(project, probes.get("shaders")),
        history_check(project),
    ]


# --- the command ----------------------------------------------------------------------


def exit_status(checks: list[Check]) -> int:
    """0 if nothing failed, else 1."""
    return 1 if any(c.status == FAIL for c in checks) else 0


def write_report(checks: list[Check], out: IO[str], colour: bool | None = None) -> None:
    """The lines, coloured by ``rich`` on a terminal (``colour=None``: when ``out`` is one),
    plain otherwise."""
    if colour is None:
        colour = out.isatty()
    width = max((len(c.name) for c in checks), default=0)
    if not colour:
        for check in checks:
            out.write(check.line(width) + "\n")
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=out, highlight=False, force_terminal=True)
    colours = {OK: "green", WARN: "yellow", FAIL: "bold red"}
    for check in checks:
        text = Text()
        text.append(f"{check.status:<4}", style=colours[check.status])
        text.append(f"  {check.name:<{width}}  ", style="bold")
        text.append(check.detail)
        if check.fix:
            text.append(f" -> {check.fix}", style="cyan")
        console.print(text)


def main(project: str | None = None, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run the checks and write the report; the exit status (see the module doc).

    A ``project`` that is not a folder is a user error: one plain line on ``err``, 2.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    root = None
    if project is not None:
        root = Path(project)
        if not root.is_dir():
            err.write(f"engine: no project folder at {project} (give a folder with systems/)\n")
            return 2
    # Every probe starts now and runs side by side; the report waits for each in turn.
    machine = start_machine_probes()
    project_probes = (
        {"modules": start_module_probe(root), "shaders": start_shader_probe(root)} if root else {}
    )
    checks = machine_checks(machine)
    write_report(checks, out)
    if root is not None:
        out.write(f"project {_shown(root)}:\n")
        found = project_checks(root, project_probes)
        write_report(found, out)
        checks += found
    return exit_status(checks)


if __name__ == "__main__":
    raise SystemExit(probe_main(sys.argv[1:]))

"""Turning a system module's source into a fresh module object, and what it declares.

A module is executed into a brand-new ``types.ModuleType`` named ``systems.<stem>``; the old
version is never touched, so a failed load leaves nothing half-applied. Imports of
``systems.<other>`` inside it go through the loader (see :class:`ImportResolver`), which
hands out the *active* version of the other module — or, while a batch of modules is being
prepared on the loading thread, the batch's version — and records the dependency.

While its code runs, the module is marked as initialising (``__spec__._initializing``), as
Python marks a module it imports: a circular ``from systems.a import X`` made before ``a``
defined ``X`` fails with Python's own "partially initialized module (most likely due to a
circular import)" message.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import inspect
import marshal
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import esper

from engine.loader.compiler import Chunk, CompileFailed, CompileTimeout
from engine.scheduler.spec import SystemSpec
from engine.scheduler.watchdog import LoadTimeout, loop_line
from engine.world.components import component_key, is_component

PACKAGE = "systems"
#: Why an empty (or blank) module file is refused.
EMPTY_FILE = "the file is empty (delete it to unload the module)"

SystemFn = Callable[[Any, float], None]


@dataclass
class LoadError(Exception):
    """A module that could not be loaded: where, and why.

    ``str(error)`` reads ``systems/physics.py:12: SyntaxError: invalid syntax``.
    ``timeout`` marks a load refused for running (or compiling) past its limit.
    """

    module: str
    path: str
    line: int | None
    message: str
    timeout: bool = False

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


@dataclass
class LoadedModule:
    """One executed version of a system module and everything it declares.

    ``imports`` names the ``systems.*`` modules it imported while it loaded.
    """

    name: str
    version: int | None
    path: Path
    module: types.ModuleType
    systems: list[tuple[SystemSpec, SystemFn]] = field(default_factory=list)
    components: dict[str, type] = field(default_factory=dict)
    imports: set[str] = field(default_factory=set)

    def hook(self, name: str) -> Callable[[Any], None] | None:
        fn = self.module.__dict__.get(name)
        return fn if callable(fn) else None


class ImportResolver(Protocol):
    def resolve(self, stem: str, importer: str) -> types.ModuleType: ...


class SystemsPackage(types.ModuleType):
    """The ``systems`` package as module code sees it: attributes resolve to active versions.

    ``import systems`` then ``systems.physics.Velocity`` finds whatever version of
    ``physics`` is active at the moment of the attribute access.
    """

    def __init__(self, resolver: ImportResolver, importer: str) -> None:
        super().__init__(PACKAGE)
        self.__path__: list[str] = []
        self._resolver = resolver
        self._importer = importer

    def __getattr__(self, stem: str) -> types.ModuleType:
        if stem.startswith("__"):
            raise AttributeError(stem)
        try:
            return self._resolver.resolve(stem, self._importer)
        except ModuleNotFoundError as exc:
            raise AttributeError(str(exc)) from exc


def make_builtins(resolver: ImportResolver, importer: str) -> dict[str, Any]:
    """A copy of ``builtins`` whose ``__import__`` routes ``systems.*`` to the loader."""

    real_import = builtins.__import__

    def engine_import(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: tuple[str, ...] | list[str] | None = (),
        level: int = 0,
    ) -> Any:
        if level == 0 and (name == PACKAGE or name.startswith(PACKAGE + ".")):
            package = SystemsPackage(resolver, importer)
            parts = name.split(".")
            if len(parts) == 1:
                for stem in fromlist or ():
                    if stem != "*":
                        getattr(package, stem)  # load it now, as Python would
                return package
            module = resolver.resolve(parts[1], importer)
            return module if fromlist else package
        return real_import(name, globals, locals, fromlist or (), level)

    table = dict(builtins.__dict__)
    table["__import__"] = engine_import
    return table


def error_from_exception(name: str, path: Path, exc: BaseException) -> LoadError:
    """A :class:`LoadError` pointing at the line of ``path`` where ``exc`` happened."""
    if isinstance(exc, LoadError):
        return exc
    if isinstance(exc, SyntaxError):
        msg = f"{type(exc).__name__}: {exc.msg}"
        return LoadError(name, str(path), exc.lineno, msg)
    if isinstance(exc, CompileTimeout | CompileFailed):
        return LoadError(name, str(path), None, str(exc), timeout=isinstance(exc, CompileTimeout))
    line, code = None, None
    tb = exc.__traceback__
    while tb is not None:  # the innermost frame in the module's own file
        if tb.tb_frame.f_code.co_filename == str(path):
            line, code = tb.tb_lineno, tb.tb_frame.f_code
        tb = tb.tb_next
    if isinstance(exc, LoadTimeout):
        # The interrupt lands on any line of a runaway loop: name the loop's header.
        if code is not None and line is not None:
            line = loop_line(code, line) or line
        msg = "LoadTimeout: module code ran past the load limit (infinite loop at import?)"
        return LoadError(name, str(path), line, msg, timeout=True)
    return LoadError(name, str(path), line, f"{type(exc).__name__}: {exc}")


def read_source(name: str, path: Path) -> str | None | LoadError:
    """A module file's text; ``None`` if it is gone; a :class:`LoadError` if it cannot be
    a module: a folder, unreadable, not UTF-8 (the line of the first bad byte), or empty
    (an empty file is a save caught half-way or a mistake; deleting the file unloads)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return LoadError(name, str(path), None, "is a folder, not a module file")
    except OSError as exc:
        return LoadError(name, str(path), None, f"cannot be read: {exc.strerror or exc}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return LoadError(name, str(path), line, f"not UTF-8 text: {exc.reason} (byte {exc.start})")
    if not text or text.isspace():
        return LoadError(name, str(path), 1, EMPTY_FILE)
    return text


def new_module(name: str, path: Path, resolver: ImportResolver) -> types.ModuleType:
    """An empty module ``systems.<name>``, marked as initialising, to run a version into."""
    module = types.ModuleType(f"{PACKAGE}.{name}")
    module.__file__ = str(path)
    spec = importlib.machinery.ModuleSpec(module.__name__, None, origin=str(path))
    spec._initializing = True  # type: ignore[attr-defined]  # as importlib marks it
    module.__spec__ = spec
    module.__dict__["__builtins__"] = make_builtins(resolver, name)
    return module


def execute_module(
    module: types.ModuleType,
    chunks: list[Chunk],
    version: int | None,
    path: Path,
    between: Callable[[], None] = lambda: None,
) -> LoadedModule:
    """Run compiled ``chunks`` in order into ``module`` (see :func:`new_module`) and
    collect what it declares. ``between()`` runs before each chunk is loaded (the caller
    waits at its frame gate there). Raises :class:`LoadError` on any failure, pointing at
    the file and line."""
    name = module.__name__.rpartition(".")[2]
    try:
        for chunk in chunks:
            between()
            code = marshal.loads(chunk) if isinstance(chunk, bytes) else chunk
            exec(code, module.__dict__)
        detach_from_other_versions(module)
        loaded = LoadedModule(name, version, path, module)
        collect_declarations(loaded, between)
    except (Exception, LoadTimeout, SystemExit) as exc:
        raise error_from_exception(name, path, exc) from None
    finally:
        module.__spec__._initializing = False  # type: ignore[union-attr]
    return loaded


def detach_from_other_versions(module: types.ModuleType) -> None:
    """Give the methods ``dataclasses`` generated for ``module``'s classes their own globals.

    ``dataclasses`` compiles ``__init__``, ``__repr__``, ``__eq__``... with the globals of
    ``sys.modules[cls.__module__]``, which, while a new version is executed, is the version
    still running: each version's classes would keep the previous version's globals (and
    so every older version) alive forever. The generated code needs only builtins (every
    other name it uses is passed in as a closure), so it gets a globals dict of its own, as
    ``dataclasses`` itself does for a module missing from ``sys.modules``. Functions
    wrapped by ``dataclasses`` (``__repr__`` in ``_recursive_repr``) are reached through
    their wrapper's closure.
    """
    own = module.__dict__
    for cls in list(own.values()):
        if not isinstance(cls, type) or cls.__module__ != module.__name__:
            continue
        for attr, fn in list(cls.__dict__.items()):
            fresh = _detached(fn, own, depth=2)
            if fresh is not None:
                setattr(cls, attr, fresh)


def _detached(fn: Any, own: dict[str, Any], depth: int) -> Any:
    """A copy of ``fn`` with fresh globals if it uses another version's; else None.

    Closure cells of ``fn`` (``depth`` levels down) and its ``__wrapped__`` are fixed in
    place.
    """
    if not isinstance(fn, types.FunctionType):
        return None
    if depth > 0:
        for cell in fn.__closure__ or ():
            try:
                inner = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            fresh_inner = _detached(inner, own, depth - 1)
            if fresh_inner is not None:
                cell.cell_contents = fresh_inner
                if fn.__dict__.get("__wrapped__") is inner:  # functools.wraps keeps it too
                    fn.__wrapped__ = fresh_inner
    g = fn.__globals__
    if g is own or g.get("__name__") != own.get("__name__"):
        return None  # its own module's function, or another module's (not a version)
    fresh = types.FunctionType(
        fn.__code__, {"__builtins__": builtins}, fn.__name__, fn.__defaults__, fn.__closure__
    )
    fresh.__kwdefaults__ = fn.__kwdefaults__
    fresh.__qualname__ = fn.__qualname__
    fresh.__annotations__ = fn.__annotations__
    fresh.__doc__ = fn.__doc__
    fresh.__module__ = fn.__module__
    fresh.__dict__.update(fn.__dict__)
    return fresh


def collect_declarations(loaded: LoadedModule, between: Callable[[], None] = lambda: None) -> None:
    """Find the systems, esper Processors and components a module defines (not imports).

    ``between()`` runs every few hundred names (a module may define hundreds of thousands:
    the caller waits at its frame gate there)."""
    mod_name = loaded.module.__name__
    for i, obj in enumerate(list(loaded.module.__dict__.values())):
        if not i & 511:
            between()
        if getattr(obj, "__module__", None) != mod_name:
            continue
        spec = getattr(obj, "__engine_system__", None)
        if isinstance(spec, SystemSpec) and callable(obj) and not isinstance(obj, type):
            loaded.systems.append((spec, obj))
        elif (
            isinstance(obj, type)
            and issubclass(obj, esper.Processor)
            and obj is not esper.Processor
        ):
            loaded.systems.append(processor_system(obj))
        elif is_component(obj):
            loaded.components[component_key(obj)] = obj


def processor_system(cls: type[esper.Processor]) -> tuple[SystemSpec, SystemFn]:
    """Wrap an esper ``Processor`` subclass as a system.

    It is instantiated with no arguments; ``process`` gets ``dt`` if it takes an argument.
    esper runs higher ``priority`` first, so ``order = -priority``. A ``budget_ms`` class
    attribute sets its budget.
    """
    instance = cls()
    params = [
        p
        for p in inspect.signature(instance.process).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    process = instance.process
    if params:

        def run(world: Any, dt: float) -> None:
            process(dt)
    else:

        def run(world: Any, dt: float) -> None:
            process()

    run.__qualname__ = f"{cls.__qualname__}.process"
    spec = SystemSpec(
        cls.__name__, -int(getattr(cls, "priority", 0)), (), getattr(cls, "budget_ms", None)
    )
    return spec, run

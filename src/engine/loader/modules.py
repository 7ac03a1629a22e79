"""Turning a system module's source into a fresh module object, and what it declares.

A module is executed into a brand-new ``types.ModuleType`` named ``systems.<stem>``; the old
version is never touched, so a failed load leaves nothing half-applied. Imports of
``systems.<other>`` inside it go through the loader (see :class:`ImportResolver`), which
hands out the *active* version of the other module — or loads it first — and records the
dependency.
"""

from __future__ import annotations

import builtins
import inspect
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import esper

from engine.scheduler.spec import SystemSpec
from engine.scheduler.watchdog import LoadTimeout, ThreadWatchdog
from engine.world.components import component_key, is_component

PACKAGE = "systems"

SystemFn = Callable[[Any, float], None]


@dataclass
class LoadError(Exception):
    """A module that could not be loaded: where, and why.

    ``str(error)`` reads ``systems/physics.py:12: SyntaxError: invalid syntax``.
    """

    module: str
    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


@dataclass
class LoadedModule:
    """One executed version of a system module and everything it declares."""

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
    line = None
    for fs in traceback.extract_tb(exc.__traceback__):
        if fs.filename == str(path):
            line = fs.lineno
    if isinstance(exc, LoadTimeout):
        msg = "LoadTimeout: module code ran past the load limit (infinite loop at import?)"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    return LoadError(name, str(path), line, msg)


def execute_module(
    name: str,
    source: str,
    path: Path,
    version: int | None,
    resolver: ImportResolver,
    load_limit_s: float,
) -> LoadedModule:
    """Compile and run ``source`` into a fresh module; raise :class:`LoadError` on failure.

    Module-level code runs under a :class:`ThreadWatchdog`: an infinite loop at import is
    stopped after ``load_limit_s`` and reported as a failed load.
    """
    module = types.ModuleType(f"{PACKAGE}.{name}")
    module.__file__ = str(path)
    module.__dict__["__builtins__"] = make_builtins(resolver, name)
    try:
        code = compile(source, str(path), "exec", dont_inherit=True)
        with ThreadWatchdog(load_limit_s):
            exec(code, module.__dict__)
    except (Exception, LoadTimeout, SystemExit) as exc:
        raise error_from_exception(name, path, exc) from None
    detach_from_other_versions(module)
    loaded = LoadedModule(name, version, path, module)
    try:
        collect_declarations(loaded)
    except Exception as exc:
        raise error_from_exception(name, path, exc) from None
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


def collect_declarations(loaded: LoadedModule) -> None:
    """Find the systems, esper Processors and components a module defines (not imports)."""
    mod_name = loaded.module.__name__
    for obj in list(loaded.module.__dict__.values()):
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

"""Where CPython puts the objects a loop visits, and how to tell whether they lie in order.

A loop over components runs at the speed of memory: objects visited one after the other in
memory are streamed in by the CPU's prefetcher, scattered ones are a cache miss each.
CPython never moves an object, and a new one goes into whichever free block of its size
the heap has; after a day of reloads those holes are spread all over the heap (tens of
thousands of them, each pinned between objects that live on), so what is built one by
one lands scattered and out of order. The remedy used here (for migrated components,
:mod:`engine.world.migration`, and cached query rows, :mod:`engine.world.layout`) is to
make a batch, check it with :func:`lie_in_order`, and while it is not, keep it (it has taken
up holes) and make the batch again, until it comes from fresh memory; what was kept is
then freed.

An instance of an ordinary class is two blocks on CPython 3.11: the object, and the array
its attributes' values are kept in, made with it from another size's free blocks (3.13
keeps them inside the object). :func:`blocks` gives both addresses where it can see them.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: A step from one block to the next that goes further than this is a jump.
PAGE = 4096
#: Share of steps that may jump (pool and arena boundaries, a block freed between two
#: allocations) for a batch still to count as in order.
TOLERANCE = 0.02

_POINTER = ctypes.sizeof(ctypes.c_void_p)
_MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT


def out_of_order(addresses: Sequence[int]) -> int:
    """How many steps from one address to the next jump further than a page, either way
    (a run of blocks one after the other, up or down the heap, streams in alike)."""
    return sum(1 for a, b in zip(addresses, addresses[1:], strict=False) if abs(b - a) > PAGE)


def in_order(addresses: Sequence[int], tolerance: float = TOLERANCE) -> bool:
    """Whether ``addresses``, in the order they are visited, lie one after the other."""
    return out_of_order(addresses) <= tolerance * max(1, len(addresses) - 1)


def _attribute_array_reader() -> Any:
    """A function giving the address of an instance's attribute-value array (0 when it has
    none: a dict of its own), or None where this CPython's layout is not the one known.

    CPython 3.11 keeps the array's address in the word four pointers before the object
    (the dict's is the next one). That is checked here on a fresh instance before it is
    trusted: the word must hold an address until the instance's ``__dict__`` is asked
    for, and then be cleared while the next one holds that dict.
    """
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return None

    def word(obj: Any, back: int) -> int:
        return ctypes.c_void_p.from_address(id(obj) - back * _POINTER).value or 0

    class _Probe:
        def __init__(self) -> None:
            self.a = 1

    if not _Probe.__flags__ & _MANAGED_DICT:
        return None
    probe = _Probe()
    values = word(probe, 4)
    if not values or values % _POINTER or word(probe, 3):
        return None
    d = probe.__dict__
    if word(probe, 4) or word(probe, 3) != id(d):
        return None

    def read(obj: Any) -> int:
        return word(obj, 4) if type(obj).__flags__ & _MANAGED_DICT else 0

    return read


_attribute_array = _attribute_array_reader()


def _arrays(instances: Sequence[Any]) -> list[int]:
    assert _attribute_array is not None
    return [_attribute_array(i) for i in instances]


def blocks(instances: Sequence[Any]) -> list[list[int]]:
    """The addresses of ``instances``' blocks, one list per kind: the objects, and (where
    CPython's layout is known and they have one) their attribute arrays."""
    kinds = [[id(i) for i in instances]]
    if _attribute_array is not None and instances and _attribute_array(instances[0]):
        arrays = _arrays(instances)
        if all(arrays):
            kinds.append(arrays)
    return kinds


def samples(items: Sequence[Any], windows: int = 8, size: int = 128) -> list[Sequence[Any]]:
    """A few runs of consecutive ``items``, spread over them (all of them, if few): enough
    to tell how a long list lies, without a look at every item."""
    n = len(items)
    if n <= windows * size:
        return [items]
    return [items[(n - size) * i // (windows - 1) :][:size] for i in range(windows)]


#: Every how many objects' attribute arrays :func:`lie_in_order` reads.
ARRAY_STRIDE = 2


def lie_in_order(objects: Sequence[Any]) -> bool:
    """Whether ``objects``, in this order, lie one after the other, attribute arrays and
    all (see :func:`blocks`). The arrays are judged on every :data:`ARRAY_STRIDE`-th
    object (reading where one is costs a microsecond), where a jump between two memory
    pools weighs that many times more."""
    if not in_order([id(o) for o in objects]):
        return False
    if _attribute_array is None or not objects or not _attribute_array(objects[0]):
        return True
    arrays = _arrays(objects[::ARRAY_STRIDE])
    return not all(arrays) or in_order(arrays, TOLERANCE * ARRAY_STRIDE)


_BYTES_HEADER = sys.getsizeof(b"")


def fillers(size: int, count: int) -> list[bytes]:
    """``count`` objects of ``size`` bytes (:func:`sys.getsizeof`, so of the same block
    size as an object of that size) that the garbage collector does not follow: to take up
    the heap's holes of that size without setting off collections (a batch of tuples kept
    aside to hold holes would, and a full collection here takes 50-100 ms)."""
    n = max(2, size - _BYTES_HEADER)  # bytes of length 0 and 1 are shared
    return [bytes(n) for _ in range(count)]


#: Objects made aside at most while a batch lands in holes: this many per object wanted,
#: and at least :data:`MIN_HELD`. A test run or a day of play leaves tens of thousands of
#: holes of each small size (55,000 of a 2-tuple's in ``bench/soak.py`` after its
#: warm-up); what is made aside mostly fills memory the heap holds anyway, and past this
#: it is not worth the time (a batch is then used as it comes).
MAX_HELD = 8
MIN_HELD = 200_000
#: Fewer objects than this are made as they come: a loop over them runs from the caches
#: wherever they lie, and taking up the heap's holes for them would cost more.
FEW = 256
#: CPython keeps this many freed floats to hand out before it asks the heap for blocks.
_FLOAT_STACK = 100


def made_in_order(
    make: Callable[[], list[T]], filler: Callable[[], object], floor: int | None = None
) -> tuple[list[T], bool]:
    """``make()``'s batch, made again until it lies in order (:func:`lie_in_order`), and
    whether it does. A batch that lands in holes is kept while the next is made, with
    ``filler()`` objects (as many as the batch, doubling each time) taking up more holes
    cheaply; past :data:`MAX_HELD` per object wanted (at least ``floor``) the last batch is
    returned as it came (``floor`` defaults to :data:`MIN_HELD`). What was kept is freed
    on return."""
    batch = make()
    held: list[list[Any]] = []
    floor = MIN_HELD if floor is None else floor
    kept, limit, extra = 0, max(MAX_HELD * len(batch), floor), len(batch)
    while not lie_in_order(batch):
        if kept >= limit:
            return batch, False
        held += [batch, [filler() for _ in range(extra)]]
        kept += len(batch) + extra
        extra *= 2
        batch = make()
    return batch, True


def fresh_floats(values: Sequence[float]) -> list[float]:
    """Floats equal to ``values`` (the same bits: ``-0.0`` stays ``-0.0``), made in this
    order one after the other in fresh memory. A NaN is returned as it is.

    A float is a heap object of its own, so a loop over components' float attributes
    also visits their floats: laid out in the order of the loop they stream in, scattered
    each is a cache miss. Made one by one they land in the heap's holes (thousands of
    float-sized ones after hours of play) and on the stack of freed floats; so the stack
    is emptied first, and the floats are made with :func:`made_in_order`.
    """
    one = 1.0

    def make() -> list[float]:
        return [v * one if v == v else v for v in values]

    if len(values) < FEW:
        return make()
    stack = [one * one for _ in range(_FLOAT_STACK)]  # held while the floats are made
    floats, _ = made_in_order(make, lambda: one * one)
    del stack
    return floats


#: Float blocks handed back to a system at each call (see :class:`FloatCycle`).
FLOAT_CYCLE = 8
_CYCLE = range(FLOAT_CYCLE)
_BACKWARDS = range(FLOAT_CYCLE - 1, -1, -1)


class FloatCycle:
    """Keeps a system's float attributes lying in the order its loop visits them, frame
    after frame, by handing it back at each call the float blocks it freed last.

    ``p.x += v.dx * dt`` makes a new float and frees the old one; CPython keeps the last
    freed floats on a stack and hands the top one to the next float made. In a loop over
    10,000 bodies that is a conveyor: each body's new ``x`` takes the block the previous
    body's ``y`` just freed, so floats laid out in order stay in order, moved one place
    along per frame; the two blocks left on the stack at the loop's end are the ones the
    next frame's loop starts with. Unless other code runs between: then the engine's own
    work (and every other system) leaves its floats on top, the loop takes those in, and
    after one turn of the conveyor (20,000 frames for 20,000 floats, minutes of play)
    every float it visits lies somewhere else: the same loop ran 1.9x slower over floats
    scattered so than over the same floats laid out fresh (``bench/soak.py``).

    So the scheduler (for a system whose calls run long enough to matter,
    :data:`engine.scheduler.scheduler.FLOAT_CYCLE_NS`) takes the top :data:`FLOAT_CYCLE`
    blocks off the stack right after the system returns (:meth:`after`: it makes that many
    floats and keeps them) and puts them back right before its next call (:meth:`before`:
    it frees them, the last taken first, so the stack's top is as the system left it).
    Room is made first: the stack holds 100 at most, and a block freed onto a full stack
    goes back to the heap instead.
    Nothing the system sees changes: these are floats of the engine's own, and no value
    of the system's is touched; a loop of another shape just gets other blocks back. It
    costs about a microsecond per call.
    """

    __slots__ = ("_kept", "_room")

    def __init__(self) -> None:
        # Filled and emptied in place: a new list could set off a garbage collection,
        # whose freed floats would land on top of the stack first.
        self._kept: list[float | None] = [None] * FLOAT_CYCLE
        self._room: list[float | None] = [None] * FLOAT_CYCLE

    def before(self) -> None:
        """Right before the system's call: its blocks back on top of the stack."""
        room, kept = self._room, self._kept
        for i in _CYCLE:  # taken off, so that what is freed next fits on the stack
            room[i] = float(i)
        for i in _BACKWARDS:  # the last taken freed first: the first taken ends on top
            kept[i] = None

    def after(self) -> None:
        """Right after the call: the blocks it left on top, kept for the next."""
        room, kept = self._room, self._kept
        for i in _CYCLE:
            kept[i] = float(i)
        for i in _BACKWARDS:
            room[i] = None

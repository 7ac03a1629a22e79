"""Keyboard and mouse for games: what crosses from the compositor's window to the world.

==========================  ============================================================
module                      what it holds
==========================  ============================================================
:mod:`~.state`              :class:`Input`, the world resource systems read
                            (``world.input``), and the tracker that fills it each frame
                            from the input block (game side)
:mod:`~.script`             scripted input (``engine run --input-script FILE``): the file
                            format, and the player that feeds it into an input block
==========================  ============================================================

The block itself is a contract (:mod:`engine.contracts.input`); the compositor feeds it
from its window or a script (:mod:`engine.compositor.input_feed`). See ``docs/input.md``.
"""

"""The cross-process contracts: everything that crosses a process boundary, in one place.

Both sides import this package and never each other: the game side (world, loader,
scheduler, render) and the compositor side (clock, timewarp, sinks), and the supervisor.

============================  ==========================================================
module                        contract
============================  ==========================================================
:mod:`~.shm`                  sealed memfds, read-only reopening, passing fds to a child
:mod:`~.seqlock`              the one seqlock every shared block uses
:mod:`~.layer`                the layer block (game → compositor): header, ring, images
:mod:`~.handoff`              the pose block (compositor → clients) and the heartbeat
                              block (game → supervisor)
:mod:`~.input`                the input block (compositor → game): keys, mouse, press
                              and release counters
:mod:`~.control`              runtime commands (``engine undo`` → a running game): JSON
                              lines with replies over the game's control socket
============================  ==========================================================

Code in this package writes shared memory that another process reads; the frame watchdog
never interrupts it half-way (see :func:`engine.scheduler.watchdog`'s protected files).
"""

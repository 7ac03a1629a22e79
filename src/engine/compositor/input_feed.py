"""The compositor's input feed: window events and scripted input into the input block.

:class:`InputFeed` wraps the compositor's sink (a :class:`~engine.compositor.loop.Sink`):
after each present, which is where a mirror window dispatches its events, it plays the
script's due events and publishes the input block (:mod:`engine.contracts.input`) if
anything changed. So input costs the compositor one small copy on frames with input and
nothing else; the loop does not know it exists, and nothing here waits or raises.

Latency: an event dispatched at present N is published right after it; a game frame
started by the pose of frame N+1 reads it (one display frame, as a window's events are
only seen once per frame anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.compositor.loop import Sink
from engine.contracts.input import InputWriter, button_index, key_index
from engine.input.script import ScriptEvent, ScriptPlayer


class InputFeed:
    """A sink that also feeds the input block; everything else goes to ``sink``.

    Args:
        sink: the real sink (headless or mirror window). A sink with a ``window``
            attribute (a pyglet window) has its keyboard and mouse bound to ``writer``.
        writer: the input block's writer; published once now, so a game's first read
            finds a settled (empty) record to count from.
        script: scripted events (:func:`engine.input.script.load_script`), or ``None``.
        started: whether the game is on screen yet; the script's frame 0 is the first
            present at which it says so (``None``: the first present).
    """

    def __init__(
        self,
        sink: Sink,
        writer: InputWriter,
        script: list[ScriptEvent] | None = None,
        started: Callable[[], bool] | None = None,
    ) -> None:
        self.sink = sink
        self.writer = writer
        self.player = ScriptPlayer(script) if script else None
        self.started = started
        window = getattr(sink, "window", None)
        if window is not None:
            bind_window(window, writer)
        remade = getattr(sink, "window_listeners", None)
        if remade is not None:  # a window made again (after a GPU reset) is bound too
            remade.append(lambda new: bind_window(new, writer))
        writer.publish(0, 0, force=True)

    def present(self, frame: int, display_time_ns: int) -> None:
        self.sink.present(frame, display_time_ns)
        player = self.player
        if player is not None:
            if not player.started and (self.started is None or self.started()):
                player.start(frame, display_time_ns)
            for event in player.due(frame, display_time_ns):
                event.apply(self.writer)
        self.writer.publish(frame, display_time_ns)

    def close(self) -> None:
        self.sink.close()
        self.writer.close()

    def stats(self) -> dict[str, Any]:
        """For the compositor's stats: input events seen and script lines played."""
        return {
            "events": int(self.writer.state["events"]),
            "script_played": self.player.played if self.player else None,
            "script_finished": self.player.finished if self.player else None,
        }

    def __getattr__(self, name: str) -> Any:
        # What callers read off the sink (``captured``, ``capture_error``, ``frames``).
        return getattr(self.sink, name)


def bind_window(window: Any, writer: InputWriter) -> None:
    """Route a pyglet window's keyboard and mouse events into ``writer``.

    Key presses are consumed (returned as handled), so Escape reaches the game instead
    of closing the mirror window (its close button still closes it). Leaving the window
    releases every key and button held, since their release would never arrive.
    """

    def on_key_press(symbol: int, modifiers: int) -> bool:
        writer.key(key_index(symbol), True)
        return True

    def on_key_release(symbol: int, modifiers: int) -> None:
        writer.key(key_index(symbol), False)

    def on_mouse_motion(x: float, y: float, dx: float, dy: float) -> None:
        writer.move(x, y)

    def on_mouse_drag(x: float, y: float, dx: float, dy: float, buttons: int, mods: int) -> None:
        writer.move(x, y)

    def on_mouse_press(x: float, y: float, button: int, modifiers: int) -> None:
        writer.move(x, y)
        _button(writer, button, True)

    def on_mouse_release(x: float, y: float, button: int, modifiers: int) -> None:
        writer.move(x, y)
        _button(writer, button, False)

    def on_mouse_scroll(x: float, y: float, scroll_x: float, scroll_y: float) -> None:
        writer.scroll(scroll_x, scroll_y)

    def on_resize(width: int, height: int) -> None:
        writer.window_size(width, height)

    def on_deactivate() -> None:
        release_all(writer)

    window.push_handlers(
        on_key_press,
        on_key_release,
        on_mouse_motion,
        on_mouse_drag,
        on_mouse_press,
        on_mouse_release,
        on_mouse_scroll,
        on_resize,
        on_deactivate,
    )
    writer.window_size(*window.get_size())


def _button(writer: InputWriter, button: int, down: bool) -> None:
    try:
        writer.button(button_index(button), down)
    except KeyError:
        pass  # a button pyglet knows and the block does not


def release_all(writer: InputWriter) -> None:
    """Every key and button held goes up (counted as releases)."""
    state = writer.state
    for word in range(len(state["keys_down"])):
        bits = int(state["keys_down"][word])
        for bit in range(64):
            if bits >> bit & 1:
                writer.key(word * 64 + bit, False)
    buttons = int(state["buttons"])
    for index in range(buttons.bit_length()):
        if buttons >> index & 1:
            writer.button(index, False)

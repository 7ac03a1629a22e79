"""Built-in render system: draws every entity with Transform + Mesh + Material, both eyes.

It draws with the frame's head pose (``FrameInfo.pose``) into the engine's render stage,
which publishes the images as a layer. The engine loads this module when rendering is on;
like any system module it can be edited and hot-swapped while the game runs.

It is *essential*: the picture depends on it, so it is never disabled for time. A draw
that the driver takes long over (a first draw of a new mesh on a CPU renderer, a slow
shader) or frames over its budget are shown late — the compositor reprojects the last
picture meanwhile — and noted at most every few seconds; none at all would make the
supervisor restart the game for not publishing. Its hard limit (longer than the frame)
still stops a runaway in its Python code, and a shader that never ends in the driver
stops the heartbeat, which is how the supervisor finds and blames it.
"""

import engine
from engine.render.stage import RenderStage


@engine.system(order=1000, budget_ms=8.0, hard_limit_ms=50.0, essential=True)
def render(world, dt):
    stage = world.resources.get(RenderStage)
    if stage is None:
        return
    info = world.resources[engine.FrameInfo]
    stage.draw(world, info.frame, info.pose.eyes if info.pose else None)

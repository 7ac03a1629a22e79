"""Built-in render system: draws every entity with Transform + Mesh + Material, both eyes.

It draws with the frame's head pose (``FrameInfo.pose``) into the engine's render stage,
which publishes the images as a layer. The engine loads this module when rendering is on;
like any system module it can be edited and hot-swapped while the game runs.
"""

import engine
from engine.render.stage import RenderStage


@engine.system(order=1000, budget_ms=8.0)
def render(world, dt):
    stage = world.resources.get(RenderStage)
    if stage is None:
        return
    info = world.resources[engine.FrameInfo]
    stage.draw(world, info.frame, info.pose.eyes if info.pose else None)

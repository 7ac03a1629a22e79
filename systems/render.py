"""Built-in render system: draws every entity with Transform + Mesh + Material, both eyes.

It draws with the frame's head pose (``FrameInfo.pose``) into the engine's render stage,
which publishes the images as a layer. The engine loads this module when rendering is on;
like any system module it can be edited and hot-swapped while the game runs.

Its hard limit is far longer than the frame: a frame drawn late is shown timewarped by
the compositor, so a slow frame (a busy CPU renderer compiling a new shader variant for a
new mesh, measured at 50-150 ms on llvmpipe under load) is not a runaway; a draw that
never returns (a shader's infinite loop in the driver) is the supervisor's to see, by the
heartbeat. It is disabled for its budget only after a whole second of slow frames in a
row, because a slow picture (reprojected by the compositor) is better than none.
"""

import engine
from engine.render.stage import RenderStage


@engine.system(order=1000, budget_ms=8.0, hard_limit_ms=250.0, over_budget_frames=90)
def render(world, dt):
    stage = world.resources.get(RenderStage)
    if stage is None:
        return
    info = world.resources[engine.FrameInfo]
    stage.draw(world, info.frame, info.pose.eyes if info.pose else None)

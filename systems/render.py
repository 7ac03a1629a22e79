"""Built-in render system: draws every entity with Transform + Mesh + Material, both eyes.

It draws with the frame's head pose (``FrameInfo.pose``) into the engine's render stage,
which publishes the images as a layer. The engine loads this module when rendering is on;
like any system module it can be edited and hot-swapped while the game runs.

Its hard limit is longer than the frame: a frame drawn late is shown timewarped by the
compositor, so an occasional slow frame is not a runaway. It is not much longer: three
interrupts of one draw (150 ms) make a game hung, which is how a shader that never ends
in the driver is found and blamed (a CPU renderer under load can take longer than 50 ms
for a first draw of a new mesh: a known hole, see tests/test_assets.py). It is disabled
for its budget only after a whole second of slow frames in a row, because a slow picture
(reprojected by the compositor) is better than none.
"""

import engine
from engine.render.stage import RenderStage


@engine.system(order=1000, budget_ms=8.0, hard_limit_ms=50.0, over_budget_frames=90)
def render(world, dt):
    stage = world.resources.get(RenderStage)
    if stage is None:
        return
    info = world.resources[engine.FrameInfo]
    stage.draw(world, info.frame, info.pose.eyes if info.pose else None)

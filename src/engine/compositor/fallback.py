"""What the user sees when no game image can be shown: a floor grid and a horizon.

Drawn by the compositor from the head pose alone, so it follows every head motion even
when every layer is stale or excluded: the world never freezes to the eyes. The grid lies
on the floor (``y = 0``) with a line every metre, fading with distance; above the horizon
is a plain sky gradient. It is the same in every frame for the same head pose.

:func:`fallback_colors` is the numpy reference of :data:`FRAGMENT_SHADER`.
"""

from __future__ import annotations

import numpy as np

from engine.compositor.timewarp import FullscreenProgram, Tangents, column_major, eye_rays
from engine.pose.base import EyeView
from engine.render.camera import quaternion_matrix

FLOOR = (0.10, 0.10, 0.12)
GRID = (0.55, 0.60, 0.70)
SKY_HORIZON = (0.30, 0.33, 0.40)
SKY_ZENITH = (0.05, 0.06, 0.10)
GRID_FADE_M = 25.0  # beyond this the grid has faded into the floor

#: The world-space ray per vertex: linear across the screen, so interpolation is exact.
VERTEX_SHADER = """
#version 330 core
uniform mat3 u_head;      // eye direction -> world direction
uniform vec4 u_out_tan;   // tan left, right, up, down
out vec3 v_dir;
void main() {
    vec2 p = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    vec2 t = (p + 1.0) * 0.5;
    vec3 ray = vec3(mix(u_out_tan.x, u_out_tan.y, t.x), mix(u_out_tan.w, u_out_tan.z, t.y), -1.0);
    v_dir = u_head * ray;
    gl_Position = vec4(p, 0.0, 1.0);
}
"""

FRAGMENT_SHADER = """
#version 330 core
in vec3 v_dir;
out vec4 out_color;
uniform float u_height;   // eye height above the floor, metres
const vec3 FLOOR = vec3(0.10, 0.10, 0.12);
const vec3 GRID = vec3(0.55, 0.60, 0.70);
const vec3 SKY_HORIZON = vec3(0.30, 0.33, 0.40);
const vec3 SKY_ZENITH = vec3(0.05, 0.06, 0.10);
void main() {
    float up = v_dir.y * inversesqrt(dot(v_dir, v_dir));
    if (up < -1e-4) {
        vec2 p = v_dir.xz * (max(u_height, 0.05) / -v_dir.y);  // where the ray meets the floor
        vec2 cell = abs(fract(p + 0.5) - 0.5);                 // distance to the nearest line
        vec2 width = max(fwidth(p) * 1.5, vec2(0.01));
        float line = 1.0 - min(min(cell.x / width.x, cell.y / width.y), 1.0);
        float fade = clamp(1.0 - length(p) / 25.0, 0.0, 1.0);
        out_color = vec4(mix(FLOOR, GRID, line * fade), 1.0);
    } else {
        out_color = vec4(mix(SKY_HORIZON, SKY_ZENITH, clamp(up * 2.0, 0.0, 1.0)), 1.0);
    }
}
"""


def fallback_colors(eye: EyeView, out_tan: Tangents, ndc: np.ndarray) -> np.ndarray:
    """RGB (..., 3) in 0..1 at display points ``ndc`` (..., 2): floor and sky only.

    The reference ignores the grid lines (their width depends on screen-space derivatives)
    and answers the question the tests ask: which points show floor and which sky.
    """
    dirs = eye_rays(out_tan, ndc) @ quaternion_matrix(eye.pose.orientation).T
    below = dirs[..., 1] < -1e-4
    out = np.empty(dirs.shape[:-1] + (3,))
    out[below] = FLOOR
    up = np.clip(dirs[..., 1] / np.linalg.norm(dirs, axis=-1) * 2.0, 0.0, 1.0)
    sky = np.asarray(SKY_HORIZON) + (np.asarray(SKY_ZENITH) - SKY_HORIZON) * up[..., None]
    out[~below] = sky[~below]
    return out


class FallbackPass:
    """Draws the floor grid and horizon for one eye into the bound framebuffer."""

    def __init__(self) -> None:
        self._fullscreen = FullscreenProgram(FRAGMENT_SHADER, VERTEX_SHADER)

    def draw(self, eye: EyeView, out_tan: Tangents) -> None:
        self._fullscreen.draw(
            u_head=column_major(quaternion_matrix(eye.pose.orientation)),
            u_height=float(eye.pose.position[1]),
            u_out_tan=out_tan,
        )

    def delete(self) -> None:
        self._fullscreen.delete()

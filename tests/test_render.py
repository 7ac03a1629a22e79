"""The render box, with real GL: camera math, meshes, and pixels drawn headless."""

from __future__ import annotations

import math
import pickle
from multiprocessing import shared_memory

import esper
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.pose.base import EyeView, Fov, Pose
from engine.render.camera import (
    axis_angle,
    eyes_from_head,
    model_matrices,
    pose_matrix,
    projection_matrix,
    quaternion_matrices,
    view_matrix,
)
from engine.render.components import Material, Mesh, Transform
from engine.render.meshes import cube, load_obj, plane, sphere

W, H = 320, 240
HEAD = Pose((0.0, 1.6, 0.0))
RED = (1.0, 0.0, 0.0, 1.0)
BLUE = (0.0, 0.0, 1.0, 1.0)
CLEAR = (0.0, 0.0, 0.0, 1.0)


# -- camera math (no GL) --------------------------------------------------------------
angles = st.floats(min_value=0.1, max_value=1.2)


@given(left=angles, right=angles, up=angles, down=angles)
def test_projection_maps_each_frustum_edge_to_the_clip_edge(left, right, up, down):
    fov = Fov(-left, right, up, -down)
    p = projection_matrix(fov, near=0.1, far=50.0)
    depth = 3.0

    def ndc(x, y, z):
        clip = p @ np.array([x, y, z, 1.0])
        return clip[:3] / clip[3]

    assert ndc(-depth * math.tan(left), 0.0, -depth)[0] == pytest.approx(-1.0, abs=1e-4)
    assert ndc(depth * math.tan(right), 0.0, -depth)[0] == pytest.approx(1.0, abs=1e-4)
    assert ndc(0.0, depth * math.tan(up), -depth)[1] == pytest.approx(1.0, abs=1e-4)
    assert ndc(0.0, -depth * math.tan(down), -depth)[1] == pytest.approx(-1.0, abs=1e-4)
    assert ndc(0.0, 0.0, -0.1)[2] == pytest.approx(-1.0, abs=1e-4)
    assert ndc(0.0, 0.0, -50.0)[2] == pytest.approx(1.0, abs=1e-3)


def test_projection_rejects_an_empty_field_of_view():
    with pytest.raises(ValueError):
        projection_matrix(Fov(0.5, -0.5, 0.5, -0.5))


@given(
    x=st.floats(-10, 10),
    yaw=st.floats(-math.pi, math.pi),
    pitch=st.floats(-1.5, 1.5),
)
def test_view_matrix_inverts_the_eye_pose(x, yaw, pitch):
    q = axis_angle((0.0, 1.0, 0.0), yaw)
    q2 = axis_angle((1.0, 0.0, 0.0), pitch)
    from engine.render.camera import quaternion_multiply

    pose = Pose((x, 1.6, -2.0), quaternion_multiply(q, q2))
    assert view_matrix(pose) @ pose_matrix(pose) == pytest.approx(np.eye(4), abs=1e-5)


def test_eyes_sit_half_the_ipd_along_the_heads_right_axis():
    left, right = eyes_from_head(HEAD, ipd=0.064)
    assert left.pose.position == pytest.approx((-0.032, 1.6, 0.0))
    assert right.pose.position == pytest.approx((0.032, 1.6, 0.0))
    # Turned 90 degrees left, the head's right axis is world -Z.
    turned = Pose((0.0, 1.6, 0.0), axis_angle((0.0, 1.0, 0.0), math.pi / 2))
    left, right = eyes_from_head(turned, ipd=0.064)
    assert left.pose.position == pytest.approx((0.0, 1.6, 0.032), abs=1e-9)
    assert right.pose.position == pytest.approx((0.0, 1.6, -0.032), abs=1e-9)
    assert left.pose.orientation == turned.orientation


def test_a_zero_quaternion_draws_unrotated_and_others_are_normalised():
    r = quaternion_matrices(np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]]))
    assert r[0] == pytest.approx(np.eye(3))
    assert r[1] == pytest.approx(np.eye(3))


def test_model_matrix_applies_scale_then_rotation_then_translation():
    q = axis_angle((0.0, 0.0, 1.0), math.pi / 2)  # +X -> +Y
    m = model_matrices(np.array([[1.0, 2.0, 3.0]]), np.array([q]), np.array([[2.0, 1.0, 1.0]]))[0]
    assert m @ np.array([1.0, 0.0, 0.0, 1.0]) == pytest.approx([1.0, 4.0, 3.0, 1.0], abs=1e-6)


def test_components_are_plain_picklable_data():
    things = (Transform((1, 2, 3)), Mesh("sphere"), Material(RED, "glow"))
    assert pickle.loads(pickle.dumps(things)) == things


# -- meshes (no GL) -------------------------------------------------------------------
@pytest.mark.parametrize("make", [cube, sphere])
def test_closed_primitives_wind_counter_clockwise_seen_from_outside(make):
    data = make()
    tri = data.positions[data.indices.reshape(-1, 3)]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(face_normals, axis=1)
    outward = np.einsum("ij,ij->i", face_normals, tri.mean(axis=1))
    assert np.all(outward[area > 1e-9] > 0)
    assert np.linalg.norm(data.normals, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_plane_faces_up():
    data = plane()
    tri = data.positions[data.indices.reshape(-1, 3)]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert np.all(face_normals[:, 1] > 0)
    assert np.all(data.positions[:, 1] == 0)


def test_obj_reads_quads_negative_indices_and_makes_missing_normals(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# a unit quad facing +Z, no normals\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf -4 -3 -2 -1\n"
    )
    data = load_obj(path)
    assert len(data.indices) == 6
    assert sorted(map(tuple, data.positions.tolist())) == [
        (0, 0, 0),
        (0, 1, 0),
        (1, 0, 0),
        (1, 1, 0),
    ]
    assert data.normals == pytest.approx(np.tile([0.0, 0.0, 1.0], (4, 1)))


def test_obj_with_a_bad_index_names_the_line(tmp_path):
    path = tmp_path / "bad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
    with pytest.raises(ValueError, match=r"bad.obj:3"):
        load_obj(path)


# -- drawing (real GL, headless) --------------------------------------------------------
@pytest.fixture(scope="module", params=["sync", "pbo"])
def renderer(request):
    """A renderer reading back each way: straight into client memory, or through a
    pixel-buffer object and a fence. Every drawing test checks the pixels of both."""
    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    r = Renderer(W, H, ShaderLibrary(), clear_color=CLEAR, readback=request.param)
    assert r.readback == request.param
    yield r
    r.close()


@pytest.fixture
def world(request):
    name = f"test-render-{request.node.name}"
    esper.switch_world(name)
    yield esper
    esper.switch_world("default")
    esper.delete_world(name)


def frames(renderer, world, eyes=None):
    eyes = eyes or eyes_from_head(HEAD)
    images = tuple(np.zeros((H, W, 4), dtype=np.uint8) for _ in eyes)
    timings = renderer.render(world, eyes, images)
    from pyglet import gl

    assert gl.glGetError() == 0
    return images, timings


def is_red(px):
    return px[0] > 100 and px[1] < 30 and px[2] < 30


def red_centroid_x(image):
    mask = (image[..., 0] > 100) & (image[..., 1] < 30) & (image[..., 2] < 30)
    assert mask.any(), "no red pixels"
    return float(np.nonzero(mask)[1].mean())


def test_a_red_cube_in_front_is_red_in_the_centre_and_the_corners_are_clear(renderer, world):
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    (left, right), timings = frames(renderer, world)
    for image in (left, right):
        assert is_red(image[H // 2, W // 2])
        for y, x in ((0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1)):
            assert tuple(image[y, x]) == (0, 0, 0, 255)
    assert timings.drawn == 1


def test_a_bgra_renderer_writes_the_same_frame_blue_first(renderer, world):
    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    (rgba, _), _ = frames(renderer, world)
    bgra_renderer = Renderer(
        W, H, ShaderLibrary(), clear_color=(0.2, 0.4, 0.6, 1.0), bgra=True,
        readback=renderer.readback,
    )  # fmt: skip
    try:
        (bgra, _), _ = frames(bgra_renderer, world)
    finally:
        bgra_renderer.close()
    assert is_red(rgba[H // 2, W // 2]) and is_red(bgra[H // 2, W // 2, [2, 1, 0, 3]])
    assert tuple(bgra[0, 0]) == (153, 102, 51, 255)  # the clear colour, B G R A


def test_the_eyes_see_the_cube_shifted_by_the_eye_offset(renderer, world):
    distance, ipd = 2.0, 0.064
    world.create_entity(Transform((0.0, 1.6, -distance)), Mesh("cube"), Material(RED))
    (left, right), _ = frames(renderer, world, eyes_from_head(HEAD, ipd=ipd))
    shift = red_centroid_x(left) - red_centroid_x(right)
    # The left eye sits further left, so it sees the cube further right. Expected shift:
    # the eye offset projected at the cube's front face (1.5 m) and at its centre (2 m).
    expected = ipd * projection_matrix(Fov())[0, 0] * (W / 2) / 1.75
    assert shift > 0
    assert shift == pytest.approx(expected, rel=0.25)


def test_a_blue_plane_below_the_cube_shows_in_the_lower_rows(renderer, world):
    world.create_entity(
        Transform((0.0, 1.6, -2.0), scale=(0.5, 0.5, 0.5)), Mesh("cube"), Material(RED)
    )
    world.create_entity(
        Transform((0.0, 0.5, -2.0), scale=(6.0, 1.0, 6.0)), Mesh("plane"), Material(BLUE)
    )
    (left, _), _ = frames(renderer, world)
    # Rows are bottom-to-top (as glReadPixels writes them): row 0 is the bottom edge.
    low = left[H // 8, W // 2]
    high = left[H - 1 - H // 8, W // 2]
    assert low[2] > 100 and low[0] < 30 and low[1] < 30
    assert tuple(high) == (0, 0, 0, 255)
    assert is_red(left[H // 2, W // 2])


def test_faces_turned_away_are_culled(renderer, world):
    # The camera inside a big cube sees only its back faces: nothing is drawn.
    world.create_entity(
        Transform((0.0, 1.6, 0.0), scale=(10.0, 10.0, 10.0)), Mesh("cube"), Material(RED)
    )
    (left, _), _ = frames(renderer, world)
    assert np.all(left[..., :3] == 0)


def test_nearer_surfaces_hide_farther_ones_whatever_the_draw_order(renderer, world):
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    world.create_entity(
        Transform((0.0, 1.6, -6.0), scale=(3, 3, 3)), Mesh("cube"), Material((0, 1, 0, 1))
    )
    (left, _), _ = frames(renderer, world)
    assert is_red(left[H // 2, W // 2])


def test_an_unloadable_mesh_is_skipped_and_the_frame_goes_on(renderer, world, tmp_path):
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("dodecahedron"), Material(BLUE))
    world.create_entity(
        Transform((0.0, 1.6, -2.0)), Mesh(path=str(tmp_path / "nope.obj")), Material(BLUE)
    )
    (left, _), timings = frames_once_loaded(renderer, world)
    assert timings.drawn == 1
    assert is_red(left[H // 2, W // 2])


def frames_once_loaded(renderer, world, eyes=None):
    """Frames drawn after every OBJ file the world names has been parsed (off the frame)."""
    frames(renderer, world, eyes)  # the first draw starts the parses
    assert renderer.meshes.wait_loaded(timeout_s=120)
    return frames(renderer, world, eyes)


def test_an_obj_file_draws(renderer, world, tmp_path):
    path = tmp_path / "tri.obj"
    path.write_text("v -1 -1 0\nv 1 -1 0\nv 0 1 0\nvn 0 0 1\nf 1//1 2//1 3//1\n")
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh(path=str(path)), Material(RED))
    (left, _), _ = frames_once_loaded(renderer, world)
    assert is_red(left[H // 2, W // 2])


def test_an_unknown_shader_name_draws_with_basic(renderer, world):
    world.create_entity(
        Transform((0.0, 1.6, -2.0)), Mesh("sphere"), Material(RED, shader="nonexistent")
    )
    (left, _), _ = frames(renderer, world)
    assert is_red(left[H // 2, W // 2])


def test_readback_lands_in_the_callers_array_and_at_a_raw_address(renderer, world):
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    target = np.full((H, W, 4), 7, dtype=np.uint8)
    block = shared_memory.SharedMemory(create=True, size=H * W * 4)
    try:
        shared = np.ndarray((H, W, 4), dtype=np.uint8, buffer=block.buf)
        shared[:] = 7
        address = shared.ctypes.data
        eyes = eyes_from_head(HEAD)
        renderer.render(world, eyes, (target, address))
        assert np.all(target[..., 3] == 255)  # every pixel written, in place
        assert is_red(target[H // 2, W // 2])
        assert np.all(shared[..., 3] == 255)
        assert is_red(shared[H // 2, W // 2])
        del shared
    finally:
        block.close()
        block.unlink()


def test_a_destination_that_would_need_a_copy_is_refused(renderer, world):
    eyes = eyes_from_head(HEAD)
    good = np.zeros((H, W, 4), dtype=np.uint8)
    strided = np.zeros((H, W * 2, 4), dtype=np.uint8)[:, ::2]
    with pytest.raises(ValueError):
        renderer.render(world, eyes, (good, strided))
    with pytest.raises(ValueError):
        renderer.render(world, eyes, (good, np.zeros((H, W, 3), dtype=np.uint8)))
    with pytest.raises(ValueError):
        renderer.render(world, eyes, (good,))


def test_clear_colour_is_configurable(renderer, world):
    renderer.clear_color = (0.0, 1.0, 0.0, 1.0)
    try:
        (left, _), _ = frames(renderer, world)
    finally:
        renderer.clear_color = CLEAR
    assert tuple(left[0, 0]) == (0, 255, 0, 255)


def test_a_single_eye_renders_too(renderer, world):
    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    (mono,), _ = frames(renderer, world, (EyeView(HEAD),))
    assert is_red(mono[H // 2, W // 2])


def test_a_renderer_on_another_thread_gets_that_threads_context(world):
    import threading

    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
    image = np.zeros((H, W, 4), dtype=np.uint8)
    failures = []

    def draw() -> None:
        try:
            r = Renderer(W, H, ShaderLibrary(), clear_color=CLEAR)
            r.render(world, eyes_from_head(HEAD)[:1], (image,))
            r.close()
        except BaseException as exc:  # reported below, on the test's thread
            failures.append(exc)

    thread = threading.Thread(target=draw)
    thread.start()
    thread.join()
    assert failures == []
    assert is_red(image[H // 2, W // 2])


def test_a_frame_drawn_now_can_be_read_later_until_its_buffer_is_reused(world):
    """The pixel-buffer readback in two steps: draw (the GPU copies into the buffer), then
    read (wait for the fence, map, copy out). A read that times out copies nothing and
    may be tried again; a frame whose buffer two later draws reused cannot be read."""
    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    renderer = Renderer(W, H, ShaderLibrary(), clear_color=CLEAR, readback="pbo")
    try:
        world.create_entity(Transform((0.0, 1.6, -2.0)), Mesh("cube"), Material(RED))
        eyes = eyes_from_head(HEAD)
        images = tuple(np.zeros((H, W, 4), dtype=np.uint8) for _ in eyes)
        frame = renderer.draw(world, eyes)
        if renderer.read(frame, images, 0) is None:  # not signalled yet: nothing copied
            assert not images[0].any()
            assert renderer.read(frame, images, 2_000_000_000) is not None
        assert is_red(images[0][H // 2, W // 2]) and is_red(images[1][H // 2, W // 2])
        old = renderer.draw(world, eyes)
        renderer.draw(world, eyes)
        renderer.draw(world, eyes)  # the ring has two buffers: the old one is reused
        with pytest.raises(ValueError):
            renderer.read(old, images, 2_000_000_000)
    finally:
        renderer.close()


def test_the_pixel_buffer_is_unbound_after_a_frame(world):
    """A later plain glReadPixels in the same context must land in client memory, not in
    the renderer's pixel buffer."""
    import ctypes

    from pyglet import gl

    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    renderer = Renderer(W, H, ShaderLibrary(), clear_color=CLEAR, readback="pbo")
    try:
        frames(renderer, world)
        bound = gl.GLint(-1)
        gl.glGetIntegerv(gl.GL_PIXEL_PACK_BUFFER_BINDING, ctypes.byref(bound))
        assert bound.value == 0
    finally:
        renderer.close()


def test_auto_readback_copies_once_on_a_cpu_renderer_and_through_a_buffer_on_a_gpu():
    from pyglet import gl

    from engine.render.renderer import Renderer
    from engine.render.shaders import ShaderLibrary

    renderer = Renderer(W, H, ShaderLibrary())
    software = "llvmpipe" in gl.gl_info.get_renderer() or "softpipe" in gl.gl_info.get_renderer()
    assert renderer.readback == ("sync" if software else "pbo")
    with pytest.raises(ValueError):
        Renderer(W, H, ShaderLibrary(), readback="dma")

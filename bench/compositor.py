"""How well the compositor keeps its frame rate, against a bare pacing loop on the same machine.

    python bench/compositor.py [--seconds 5] [--crash-seconds 10] [--json PATH]
        [--sizes 1280x720,1440x1600] [--layers 1,4] [--before] [--no-game] [--preview]

Runs, one after another, each in its own process at the priority the compositor gets:

1. **floor** — a bare pacing loop: sleep coarsely, spin to each 90 Hz compose deadline,
   nothing else. What this machine's scheduler allows at best.
2. **1 layer / 4 layers** — the compositor process at 2 x (1280 x 720) on this machine's
   renderer (llvmpipe here), with a producer process publishing a new 1280 x 720 stereo
   image into every layer each display frame (so every frame uploads every layer), with
   the compositor's automatic choices (on llvmpipe: the mesh warp, nearest sampling, BGRA8
   layers; on NVIDIA: the exact warp, linear sampling, RGBA8 layers);
   "1 linear" samples with bilinear filtering instead (``CompositorConfig.filter``).
   ``--sizes`` adds the same runs at other per-eye sizes (``"4 @1440x1600"``; the
   compositor's eyes are that size too), ``--layers`` sets the layer counts. ``--before``
   adds, at the first size, each count as the code before the per-driver tuning ran it
   (``"1 before"``: BGRA8 layers whatever the driver prefers, and the start-up frame
   timed with its first touches): the baseline for the tuning, in the same run.
   Below the table, each run's layer path (shared memory), pixel format and upload.
   The layer runs keep the layers in shared memory (``gpu_images="off"``); "1 gpu" / "4 gpu" run
   the same with the layers' images in GPU memory where Vulkan and GL allow it, on a CPU
   renderer too (``gpu_images="on"``; "auto" keeps shared memory there): the producer
   draws each ring image once with GL, the compositor samples them in place, no upload.
   Which path each run used is printed after the table.
   ``--preview`` adds, at the first size with one game layer, the preview layer's runs:
   "no preview" (``CompositorConfig.preview=False``: no preview layer at all, the code
   before it), "preview" (a second producer publishing into the preview layer: drawn as
   a panel in each eye), "mirror" (the mirror view with its HUD drawn every frame as a
   window would, headless: ``mirror_headless``) and "preview+mirror" (both: the split
   view with its labels). The plain "1 layer" run has the preview layer idle. The mirror
   view is drawn at present, after the compose: its own time is printed below the table.
   Then, since a loaded machine's runs differ more from each other than these costs do,
   the same costs measured in one process, interleaved frame by frame (``compose_costs``):
   the compose with the game layer alone, with the preview's panel too, with the live
   eye's copy for the mirror too; and the mirror view (window size) without and with text.
3. **game / crashes** — the supervisor running a game (fill renderer, 2 x 640 x 360: see
   ``GAME_EYE``), left alone, then killed with SIGKILL again and again, each time once
   the new game ran 20 frames and the next warm standby is ready: the compositor's misses
   over each run, and how long each restart took, from detection to the new game's first
   frame. (Kills faster than a standby warms up, about a second, meet a standby still
   warming or none: ``bench/restart.py`` compares restarts with and without one.)

Prints one table; the ratio and difference columns compare each run with the floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.compositor.clock import DisplaySchedule
from engine.compositor.priority import raise_cpu_priority
from engine.compositor.process import CompositorConfig, CompositorHandle
from engine.contracts.handoff import PoseHandoffReader
from engine.contracts.layer import LayerSpec, LayerWriter, PixelFormat
from engine.contracts.shm import PassedFd, create_block_fd
from engine.launcher.supervisor import Supervisor
from engine.policy import FailurePolicy, Settings
from engine.scheduler.pacing import MonotonicClock
from engine.scheduler.stats import summarize

SPAWN = multiprocessing.get_context("spawn")
EYE = (1280, 720)
#: The game runs: smaller, so that on a 2-core CPU renderer the compositor has headroom and
#: what the crashes cost is not buried under what rendering 720p stereo on the CPU costs.
GAME_EYE = (640, 360)
RATE_HZ = 90.0


# --- 1. the floor ---------------------------------------------------------------------


def bare_pacing_loop(seconds: float, lead_ns: int, out: multiprocessing.Queue) -> None:
    """Sleep + spin to each compose deadline; a wake after the slot's vsync is a miss."""
    priority = raise_cpu_priority(True)
    clock = MonotonicClock()
    period = round(1e9 / RATE_HZ)
    schedule = DisplaySchedule(period, clock.now_ns() + 2 * period, lead_ns)
    frames = round(seconds * RATE_HZ)
    wakes: list[int] = []
    late = skipped = 0
    slot = 0
    for _ in range(frames):
        clock.sleep_until(schedule.compose_deadline(slot))
        t = clock.now_ns()
        wakes.append(t)
        late += t > schedule.vsync(slot)
        nxt = max(slot + 1, schedule.first_slot_not_before(clock.now_ns()))
        skipped += nxt - slot - 1
        slot = nxt
    intervals = np.diff(wakes)
    out.put(
        {
            "frames": frames,
            "seconds": (wakes[-1] - wakes[0]) / 1e9,
            "missed": late + skipped,
            "skipped_slots": skipped,
            "interval_error": list(np.abs(intervals - period).tolist()),
            "priority": priority,
        }
    )


def run_floor(seconds: float, lead_ns: int) -> dict:
    queue = SPAWN.Queue()
    p = SPAWN.Process(target=bare_pacing_loop, args=(seconds, lead_ns, queue))
    p.start()
    result = queue.get(timeout=seconds + 60)
    p.join()
    errors = summarize([int(x) for x in result.pop("interval_error")], 0)
    return {
        **result,
        "rate_hz": result["frames"] / result["seconds"],
        "interval_error_ms_p50": errors.p50_ms,
        "interval_error_ms_p99": errors.p99_ms,
    }


# --- 2. the compositor with producers -------------------------------------------------


def layer_colour(i: int) -> np.ndarray:
    """Layer ``i``'s RGBA: the bottom one opaque, overlays translucent and premultiplied
    (as layers are)."""
    alpha = 255 if i == 0 else 96
    return np.array([*(np.array([40 + 50 * i, 200 - 40 * i, 90]) * alpha // 255), alpha])


def produce(pose_fd: int, layers: list[tuple[int, LayerSpec]], seconds: float) -> None:
    """Publish a new image into every layer each time the compositor starts a frame.

    Each ring image is painted once (its first use); after that publishing is only the
    header update, so the producer costs little and the compositor still uploads every
    layer every frame.
    """
    pose = PoseHandoffReader(pose_fd)
    writers = [LayerWriter(fd, spec) for fd, spec in layers]
    painted: set[tuple[int, int]] = set()
    last = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        record = pose.read()
        if record is None or record.frame == last:
            time.sleep(0.0005)
            continue
        last = record.frame
        for i, writer in enumerate(writers):
            slot = writer.acquire()
            if (i, slot.index) not in painted:
                painted.add((i, slot.index))
                rgba = layer_colour(i)
                slot.pixels[...] = rgba[writer.spec.format.rgba_order]  # the header's order
            writer.publish(slot, record.frame, record.sample.eyes, time.monotonic_ns())


def run_compositor(
    layer_count: int,
    seconds: float,
    lead_ns: int,
    filter: str = "auto",
    eye: tuple[int, int] = EYE,
    before: bool = False,
    preview: str = "idle",
    mirror: bool = False,
) -> dict:
    """One compositor run; ``before`` runs it as the code before the per-driver tuning
    did: BGRA8 layers and the start-up frame timed without warm-up frames. ``preview``:
    ``"off"`` (no preview layer), ``"idle"`` (allocated, nothing publishes), ``"publishing"``
    (the producer publishes into it too); ``mirror``: draw the mirror view every frame."""
    pose_fd = create_block_fd("bench-pose")
    layers = tuple((f"layer{i}", *eye) for i in range(layer_count))
    config = CompositorConfig(
        eye_width=eye[0],
        eye_height=eye[1],
        layers=layers,
        compose_lead_ns=lead_ns,
        filter=filter,
        layer_format=PixelFormat.BGRA8 if before else None,
        timing_warmups=0 if before else 2,
        gpu_images="off",  # the producer writes the block: shared memory, populated
        preview=preview != "off",
        mirror_headless=mirror,
    )
    handle = CompositorHandle.start(config, pose_fd)
    published = list(handle.layers)
    if preview == "publishing" and handle.preview_layer is not None:
        published.append(handle.preview_layer)
    producer = SPAWN.Process(
        target=produce,
        args=(PassedFd(pose_fd), [(PassedFd(fd), spec) for fd, spec in published], seconds),
    )
    producer.start()
    producer.join(seconds + 60)
    stats = handle.stop()
    os.close(pose_fd)
    stats["rate_hz"] = stats["frames"] / stats["seconds"]
    stats["eye"] = list(eye)
    stats["ready"] = handle.ready
    return stats


#: The --preview runs: (name, preview layer, mirror view every frame).
PREVIEW_RUNS = (
    ("1 no preview", "off", False),
    ("1 preview", "publishing", False),
    ("1 mirror", "idle", True),
    ("1 preview+mirror", "publishing", True),
)


def compose_costs(eye: tuple[int, int], frames: int, out: multiprocessing.Queue) -> None:
    """The preview's and the mirror view's costs, in ms, measured in this process with a
    real GLComposer (both layers uploaded every frame, shown 1 degree turned from where they
    were rendered: a typical turn),
    the variants interleaved frame by frame so that a machine's swings hit all alike. At
    the compositor's priority, before GL starts (its threads inherit it)."""
    raise_cpu_priority(True)
    os.environ["PYGLET_HEADLESS"] = "1"
    from engine.compositor.loop import CompositorLoop, LayerDraw
    from engine.compositor.mirror import MirrorText
    from engine.compositor.process import GLComposer, make_pose_source, preferred_upload
    from engine.compositor.quad import quad_in_front
    from engine.compositor.sinks import MIRROR_SCALE, HeadlessSink
    from engine.pose.base import EyeView, Fov, Pose
    from engine.render.camera import axis_angle
    from engine.render.context import offscreen_context

    offscreen_context()
    w, h = eye
    spec = LayerSpec(width=w, height=h, format=preferred_upload().layer_format)
    composer = GLComposer(w, h, [spec, spec], preview_layer=1)
    fov = Fov.for_image(w, h)

    def eyes_at(degrees: float) -> tuple[EyeView, EyeView]:
        q = tuple(axis_angle((0.0, 1.0, 0.0), np.radians(degrees)))
        return (EyeView(Pose((-0.03, 1.6, 0.0), q), fov), EyeView(Pose((0.03, 1.6, 0.0), q), fov))

    class Source:
        def read(self) -> None:
            return None

        def still_valid(self, frame: object) -> bool:
            return True

    class Image:
        def __init__(self, seq: int, colour: int) -> None:
            self.index, self.seq, self.frame, self.spec = 0, seq, seq, spec
            self.eyes = eyes_at(0.0)
            self.pixels = np.full(spec.shape, colour, np.uint8)

    quad = quad_in_front(Pose((0.0, 1.6, 0.0)), h / w)
    # A loop for the words to read (never stepped: the HUD says what it says at start).
    loop = CompositorLoop(
        clock=MonotonicClock(),
        schedule=DisplaySchedule(round(1e9 / RATE_HZ), 0, 4_000_000),
        pose_source=make_pose_source("simulated"),
        layers=[("game", Source()), ("preview", Source())],
        composer=composer,
        sink=HeadlessSink(),
        preview_layer=1,
    )
    composer.mirror_text = MirrorText(loop)
    composer.mirror_scale = MIRROR_SCALE  # the live eye copied at the window's size
    # The mirror view is drawn after the frame that copied the live eye: the split view.
    variants = ("game", "game+preview", "game+preview+copy", "mirror", "mirror+text")
    times: dict[str, list[int]] = {name: [] for name in variants}
    images = [Image(2, 60), Image(2, 160)]
    composer.warm_up(eyes_at(0.0))
    seq = 2
    for frame in range(frames + 10):
        for name in variants:
            seq += 2
            images[0].seq = images[1].seq = seq  # a new image each time: uploaded
            draws = [LayerDraw(0, images[0], Source(), False)]
            if name != "game":
                draws.append(LayerDraw(1, images[1], Source(), False, quad=quad))
            composer.mirror_wanted = name != "game+preview"
            start = time.perf_counter_ns()
            if name.startswith("mirror"):
                composer.render_mirror(MIRROR_SCALE, text=name == "mirror+text")
            else:
                composer.compose(draws, eyes_at(1.0), fallback=False)
            composer.finish()
            if frame >= 10:
                times[name].append(time.perf_counter_ns() - start)
    out.put({name: dataclasses.asdict(summarize(t, 0)) for name, t in times.items()})


def run_compose_costs(eye: tuple[int, int], frames: int = 200) -> dict:
    queue = SPAWN.Queue()
    p = SPAWN.Process(target=compose_costs, args=(eye, frames, queue))
    p.start()
    result = queue.get(timeout=300)
    p.join()
    return result


# --- 2b. the same with the layers' images in GPU memory --------------------------------


def produce_in_gpu_memory(pose_fd: int, layers: list, seconds: float) -> None:
    """As :func:`produce`, drawing each ring image once with GL into the layer's GPU images
    (``layers`` are ``(fd, spec, offer)``); a layer whose images cannot be imported here
    is painted in its block instead."""
    os.environ["PYGLET_HEADLESS"] = "1"
    from engine.contracts.layer import ImageStorage
    from engine.gpu.gl_memory import GpuLayerTargets, ImportRefused, wait_for_rendering
    from engine.render.context import gl, offscreen_context

    offscreen_context()
    pose = PoseHandoffReader(pose_fd)
    targets, writers = [], []
    for fd, spec, offer in layers:
        target = None
        if offer.offered:
            try:
                target = GpuLayerTargets(offer.images, tuple(offer.fds))
            except ImportRefused:
                target = None
        storage = ImageStorage.SHARED_MEMORY if target is None else ImageStorage.GPU_MEMORY
        targets.append(target)
        writers.append(LayerWriter(fd, spec, storage))
    painted: set[tuple[int, int]] = set()
    last = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        record = pose.read()
        if record is None or record.frame == last:
            time.sleep(0.0005)
            continue
        last = record.frame
        slots = [writer.acquire() for writer in writers]
        drew = False
        for i, (writer, target, slot) in enumerate(zip(writers, targets, slots, strict=True)):
            if (i, slot.index) in painted:
                continue
            painted.add((i, slot.index))
            rgba = layer_colour(i)
            if target is None:
                slot.pixels[...] = rgba[writer.spec.format.rgba_order]
                continue
            for framebuffer in target.framebuffers(slot.index):
                gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, framebuffer.fbo)
                gl.glViewport(0, 0, writer.spec.width, writer.spec.height)
                gl.glClearColor(*(rgba / 255.0))
                gl.glClear(gl.GL_COLOR_BUFFER_BIT)
            drew = True
        if drew:
            gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
            wait_for_rendering()
        for writer, slot in zip(writers, slots, strict=True):
            writer.publish(slot, record.frame, record.sample.eyes, time.monotonic_ns())


def run_compositor_in_gpu_memory(
    layer_count: int, seconds: float, lead_ns: int, eye: tuple[int, int] = EYE
) -> dict:
    pose_fd = create_block_fd("bench-pose")
    layers = tuple((f"layer{i}", *eye) for i in range(layer_count))
    config = CompositorConfig(
        eye_width=eye[0], eye_height=eye[1], layers=layers, compose_lead_ns=lead_ns,
        gpu_images="on",  # on a CPU renderer too ("auto" keeps shared memory there)
    )  # fmt: skip
    handle = CompositorHandle.start(config, pose_fd)
    given = [
        (PassedFd(fd), spec, handle.gpu_images_for_child(i))
        for i, (fd, spec) in enumerate(handle.layers)
    ]
    producer = SPAWN.Process(target=produce_in_gpu_memory, args=(PassedFd(pose_fd), given, seconds))
    producer.start()
    producer.join(seconds + 60)
    stats = handle.stop()
    os.close(pose_fd)
    stats["rate_hz"] = stats["frames"] / stats["seconds"]
    return stats


def gpu_memory_runs(
    seconds: float, lead_ns: int, sizes: list[tuple[int, int]], counts: list[int]
) -> dict[str, dict]:
    """The "1 gpu" and "4 gpu" rows (``"4 gpu @1440x1600"`` at other sizes)."""
    return {
        f"{count} gpu" + ("" if eye == EYE else f" @{eye[0]}x{eye[1]}"): (
            run_compositor_in_gpu_memory(count, seconds, lead_ns, eye)
        )
        for eye in sizes
        for count in counts
    }


def image_paths(results: dict[str, dict]) -> list[str]:
    """One line per run: where its layers' images were, and why."""
    lines = []
    for name, r in results.items():
        layers = r.get("gl", {}).get("layer_images")
        if not layers:
            continue
        shown = sorted({str(layer["shown_from"]) for layer in layers})
        offered = sorted({f"{layer['offered']} ({layer['why']})" for layer in layers})
        lines.append(
            f"  {name:<10} shown from {' and '.join(shown)}; offered {'; '.join(offered)}; "
            f"{r['gl']['uploads']} uploads, {r['gl'].get('gpu_images_shown', 0)} GPU images "
            f"sampled in place"
        )
    return lines


# --- 3. crashes -----------------------------------------------------------------------

CRASH_PROJECT_SYSTEM = """
import engine

@engine.component
class Counter:
    value: int = 0

@engine.system
def count(world, dt):
    for _, c in world.get_component(Counter):
        c.value += 1
"""


CRASH_PROJECT_GAME = """
from systems.count import Counter

def setup(world):
    world.create_entity(Counter())
"""


def run_game(seconds: float, lead_ns: int, crash: bool) -> dict:
    """The supervisor with a game for ``seconds``; with ``crash``, killed again and again."""
    root = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    (root / "systems").mkdir()
    (root / "systems" / "count.py").write_text(CRASH_PROJECT_SYSTEM)
    (root / "game.py").write_text(CRASH_PROJECT_GAME)
    config = CompositorConfig(
        eye_width=GAME_EYE[0],
        eye_height=GAME_EYE[1],
        layers=(("game", *GAME_EYE),),
        compose_lead_ns=lead_ns,
    )
    # Induced crashes are the same fault every time: no crash-loop back-off here.
    policy = FailurePolicy(Settings(loop_faults=10**9))
    sup = Supervisor(root, compositor=config, policy=policy, report=lambda m: None, watch=False)
    sup.start()
    # Past the first game's probation (90 frames), so its modules are proven good and no
    # restart blames them.
    sup.run_until(lambda: sup.game_frames > 120, 60)
    end = time.monotonic() + seconds
    kills = 0
    while time.monotonic() < end:
        pid = sup.game_pid
        # Let the new game run 20 frames past its first and the next warm standby get
        # ready (a restart takes it: see bench/restart.py for both ways), then kill it.
        frames = sup.game_frames
        sup.run_until(lambda f=frames: sup.game_frames >= f + 20, 30)
        sup.run_until(lambda: sup.standby is not None and sup.standby.ready_ns is not None, 30)
        if crash and pid is not None and time.monotonic() < end:
            os.kill(pid, signal.SIGKILL)
            kills += 1
            sup.run_until(lambda n=kills: len(sup.restarts) >= n, 30)
    if crash:
        sup.run_until(lambda: sup.restarts[-1].first_frame_ms is not None, 30)
    stats = sup.stop()
    compositor = stats["compositor"]
    compositor["rate_hz"] = compositor["frames"] / compositor["seconds"]
    restarts = [r["first_frame_ms"] for r in stats["restarts"] if r["first_frame_ms"]]
    compositor["crashes"] = kills
    compositor["restart_ms"] = restarts
    compositor["checkpoint_ms_max"] = stats["game"]["checkpoint_ms_max"]
    compositor["checkpoint_bytes"] = stats["game"]["checkpoint_bytes_max"]
    return compositor


# --- the table ------------------------------------------------------------------------


def row(name: str, r: dict, floor: dict) -> str:
    """One line of the table; runs other than the floor get their difference from it."""
    refreshes = r["frames"] + r.get("skipped_slots", 0)
    missed_pct = 100.0 * r["missed"] / max(1, refreshes)
    line = (
        f"{name:<14} {r['frames']:>6} {r['rate_hz']:>7.2f} "
        f"{r['interval_error_ms_p50']:>7.3f} {r['interval_error_ms_p99']:>7.3f} "
        f"{r['missed']:>5} {missed_pct:>6.2f}% "
        f"{r.get('compose_ms_p50', 0):>7.2f} {r.get('compose_ms_p99', 0):>7.2f} "
        f"{r.get('pose_age_ms_p50', 0):>7.2f} {r.get('pose_age_ms_p99', 0):>7.2f}"
    )
    if r is floor:
        return line
    err, floor_err = r["interval_error_ms_p99"], floor["interval_error_ms_p99"]
    floor_missed = floor["missed"] * r["frames"] / max(1, floor["frames"])
    return (
        f"{line}   err p99 {err - floor_err:+.2f} ms (x{err / max(1e-3, floor_err):.0f}),"
        f" missed {r['missed'] - floor_missed:+.0f}"
    )


def miss_causes(misses: list[dict]) -> str:
    """Which misses the previous frame caused (it overran into their slot), which the OS
    (woke after their vsync), and which composed too slowly themselves."""
    half = [m for m in misses if m.get("half_rate") and m["late_ms"] == 0]
    misses = [m for m in misses if m not in half]
    overrun = [m for m in misses if m["previous_overran_ms"] > 0]
    woke = [
        m
        for m in misses
        if m not in overrun and (m["woke_late_ms"] >= m["lead_ms"] or m["skipped_slots"])
    ]
    slow = [m for m in misses if m not in overrun and m not in woke]
    text = (
        f"{len(half)} skipped at half rate, {len(overrun)} after an overrunning frame, "
        f"{len(woke)} woke after their vsync (OS), {len(slow)} composed too slowly"
    )
    if slow:
        compose = sorted(m["compose_ms"] for m in slow)
        text += f" (compose {compose[0]:.1f}..{compose[-1]:.1f} ms"
        text += f" against a lead of {slow[-1]['lead_ms']:.1f} ms)"
    frames = [m["frame"] for m in misses + half]
    return f"{text}; at frames {frames[:8]}{' ...' if len(frames) > 8 else ''}"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1280x720,1440x1600"`` -> ``[(1280, 720), (1440, 1600)]``."""
    sizes = []
    for part in text.split(","):
        w, _, h = part.strip().lower().partition("x")
        sizes.append((int(w), int(h)))
    return sizes


def run_name(count: int, eye: tuple[int, int]) -> str:
    base = f"{count} layer{'s' if count > 1 else ''}"
    return base if eye == EYE else f"{count} @{eye[0]}x{eye[1]}"


def layer_path(r: dict) -> str:
    """Which path a run's layers took, their format and how they were uploaded."""
    gl = r.get("gl", {})
    shown = [layer.get("shown_from") for layer in gl.get("layer_images") or []]
    path = gl.get("layer_path") or (shown[0] if shown and shown[0] else "shared memory")
    uploads = gl.get("uploads_as") or ["?"]
    return f"{path}, {uploads[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-gpu", action="store_true", help="skip the runs with layers in GPU memory"
    )
    parser.add_argument("--crash-seconds", type=float, default=10.0)
    parser.add_argument("--lead-ms", type=float, default=4.0, help="compose lead")
    parser.add_argument("--sizes", default=f"{EYE[0]}x{EYE[1]}", help="per-eye sizes, a,b")
    parser.add_argument("--layers", default="1,4", help="layer counts at each size")
    parser.add_argument("--before", action="store_true", help="add the untuned baseline runs")
    parser.add_argument("--no-linear", action="store_true", help="skip the '1 linear' run")
    parser.add_argument("--no-game", action="store_true", help="skip the game and crash runs")
    parser.add_argument(
        "--preview", action="store_true", help="add the preview layer and mirror view runs"
    )
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    lead = round(args.lead_ms * 1e6)
    sizes = parse_sizes(args.sizes)
    counts = [int(c) for c in args.layers.split(",")]
    t0 = time.monotonic()
    results = {"floor": run_floor(args.seconds, lead)}
    for eye in sizes:
        for count in counts:
            results[run_name(count, eye)] = run_compositor(count, args.seconds, lead, eye=eye)
            if args.before and eye == sizes[0]:
                name = f"{count} before"
                results[name] = run_compositor(count, args.seconds, lead, eye=eye, before=True)
            if count == 1 and eye == sizes[0] and not args.no_linear:
                results["1 linear"] = run_compositor(1, args.seconds, lead, "linear", eye=eye)
            if count == 1 and eye == sizes[0] and args.preview:
                for name, preview, mirror in PREVIEW_RUNS:
                    results[name] = run_compositor(
                        1, args.seconds, lead, eye=eye, preview=preview, mirror=mirror
                    )
    if not args.no_gpu:
        results.update(gpu_memory_runs(args.seconds, lead, sizes, counts))
    if not args.no_game:
        results["game"] = run_game(args.crash_seconds, lead, crash=False)
        results["crashes"] = run_game(args.crash_seconds, lead, crash=True)
    floor = results["floor"]
    first = next(r for name, r in results.items() if name != "floor")
    print(
        f"\ncompositor at {RATE_HZ:g} Hz, {first['priority']['cpu']}, GPU priority: "
        f"{first['priority']['gpu']} (reset: {first['priority'].get('gpu_reset', '?')}); "
        f"compose lead {args.lead_ms:g} ms; {os.cpu_count()} CPUs; "
        f"bench took {time.monotonic() - t0:.0f} s"
    )
    print(f"GL: {first.get('ready', {}).get('gl', '?')}")
    print(
        f"{'run':<14} {'frames':>6} {'Hz':>7} {'err p50':>7} {'err p99':>7} "
        f"{'missed':>5} {'':>7} {'cmp p50':>7} {'cmp p99':>7} {'age p50':>7} {'age p99':>7}"
        "   vs floor"
    )
    for name, r in results.items():
        print(row(name, r, floor))
    print(
        f"(game and crashes at 2 x {GAME_EYE[0]}x{GAME_EYE[1]}; '@WxH' runs at 2 x WxH, "
        f"the others at 2 x {EYE[0]}x{EYE[1]})"
    )
    print(
        "(ms; err = |interval between presents - period|; missed = refreshes without an "
        "on-time frame, % of refreshes; cmp = pose sample to frame drawn; "
        "age = pose age at present)"
    )
    print(
        "\neach run's layers, and a full frame timed at start-up (every layer uploaded and "
        "warped; how fast this VM was during each run):"
    )
    for name, r in results.items():
        timed = r.get("gl", {}).get("timed_frame_ms")
        if timed is not None:
            print(f"  {name:<14} {timed:6.2f} ms  {layer_path(r)}")
    print("\nwhere each run's layer images were:")
    print("\n".join(image_paths(results)))
    print("\nwhere the misses came from (the last 32 of each run):")
    for name, r in results.items():
        if name != "floor" and r.get("recent_misses"):
            print(f"  {name:<14} {miss_causes(r['recent_misses'])}")
    if args.preview:
        print("\nthe preview layer and the mirror view (same size, one game layer):")
        for name in ("1 layer", *(name for name, _, _ in PREVIEW_RUNS)):
            r = results.get(name)
            if r is None:
                continue
            mirror = r.get("mirror") or {}
            preview = r.get("preview") or {}
            drawn = r.get("gl", {}).get("preview_draws", 0)
            print(
                f"  {name:<16} compose p50 {r['compose_ms_p50']:6.2f} p99 "
                f"{r['compose_ms_p99']:6.2f} ms; mirror view "
                + (
                    f"p50 {mirror['mirror_ms_p50']:5.2f} p99 {mirror['mirror_ms_p99']:5.2f} ms"
                    if mirror
                    else "not drawn"
                )
                + f"; preview drawn {drawn} frames, shed "
                f"{preview.get('exclusions_time_short', 0)} times "
                f"({preview.get('shed_frames', 0)} frames)"
            )
        costs = run_compose_costs(sizes[0])
        results["compose costs"] = {"costs": costs}
        print(
            f"  measured in one process, interleaved, 2 x {sizes[0][0]}x{sizes[0][1]} "
            "(ms, both layers uploaded each frame):"
        )
        for name, c in costs.items():
            print(f"    {name:<18} p50 {c['p50_ms']:6.2f}  p99 {c['p99_ms']:6.2f}")
    crashes = results.get("crashes")
    restart_ms = crashes["restart_ms"] if crashes else []
    if crashes and restart_ms:
        print(
            f"\ncrashes: {crashes['crashes']} induced (SIGKILL), {len(restart_ms)} restarts timed: "
            f"detection -> first new game frame p50 {statistics.median(restart_ms):.0f} ms, "
            f"max {max(restart_ms):.0f} ms; compositor missed {crashes['missed']} of "
            f"{crashes['frames']} frames over the run; layer excluded "
            f"{crashes['layers']['game']['excluded_frames']} frames, reprojected "
            f"{crashes['layers']['game']['reprojected_frames']}; checkpoint "
            f"{crashes['checkpoint_bytes']} bytes, serialized in at most "
            f"{crashes['checkpoint_ms_max']:.2f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

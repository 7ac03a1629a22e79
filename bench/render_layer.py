"""How much does handing a rendered stereo frame to the compositor cost, each way?

For each eye size, renders a small scene (a floor, a ring of cubes, a few spheres) for
both eyes headless, reads each eye into a shared-memory layer image and publishes it, in
the layer format the compositor would choose on this driver (BGRA8 on Mesa, RGBA8 on
NVIDIA; ``--format`` overrides). Both readbacks run in the same loop, frame for frame
alternately, so a busy machine slows both alike:

* ``sync``: ``glFinish``, then ``glReadPixels`` straight into the layer image;
* ``pbo``: ``glReadPixels`` into a pixel-buffer object, a fence, ``glFlush``; then wait
  for the fence, map the buffer and copy it into the layer image.

Per-frame medians, in milliseconds:

* ``draw``: gathering the scene and issuing the draws (``sync``: and waiting for them;
  ``pbo``: and issuing the copies into the buffer);
* ``readback``: from then until both eyes are in the layer (``pbo``: ``wait`` of it is
  waiting for the fence, the GPU's drawing and copying);
* ``publish``: ``LayerWriter.acquire`` + ``publish`` (pose records and seqlocks);
* ``frame``: draw + readback + publish, the render thread's whole cost;
* ``floor``: a bare ``numpy`` copy of the same bytes into shared memory, the least any
  hand-off from private memory can cost;
* ``via copy`` (sync row): reading back into a private array, then copying;
* ``ratio``: (readback - wait + publish) / floor: the copying against the floor.
  Target: <= 1.2.

Then the two ways a frame can reach the compositor, per frame, both eyes (medians, ms):

* ``shared memory``: draw and ``glFinish``, ``glReadPixels`` into the layer block, publish,
  and the compositor's upload of both eyes (``glTexSubImage2D`` from the block, finished);
* ``gpu memory``: draw straight into the layer's GPU images (Vulkan-allocated, imported
  into GL), wait on a fence, publish; the compositor samples them in place (no upload).
  Skipped, with the reason, where Vulkan or the GL extensions are missing.

Both run in this process on one GL context (the compositor's half included), so the
columns add up to what one frame costs the two processes together; they alternate frame
by frame, so a busy machine slows both alike.

Run: ``python bench/render_layer.py [frames] [--format RGBA8|BGRA8] [--json PATH]``
(default 100 frames; well under a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import esper
import numpy as np

from engine.contracts.layer import LayerSpec, LayerWriter, PixelFormat, create_layer_fd
from engine.pose.simulated import SimulatedHeadset
from engine.render import Material, Mesh, Renderer, ShaderLibrary, Transform
from engine.render.context import gl_description

SIZES = [(1280, 720), (1440, 1600)]
READBACKS = ("sync", "pbo")


def build_scene() -> None:
    esper.switch_world("bench-render-layer")
    esper.create_entity(
        Transform((0.0, 0.0, -3.0), scale=(10.0, 1.0, 10.0)),
        Mesh("plane"),
        Material((0.3, 0.3, 0.35, 1)),
    )
    for i in range(12):
        angle = 2 * np.pi * i / 12
        position = (2.5 * np.sin(angle), 1.2 + 0.3 * np.sin(3 * angle), -3.0 - 2.5 * np.cos(angle))
        color = (0.5 + 0.5 * np.sin(angle), 0.5 + 0.5 * np.cos(angle), 0.6, 1.0)
        esper.create_entity(
            Transform(position, scale=(0.4, 0.4, 0.4)), Mesh("cube"), Material(color)
        )
    for x in (-1.0, 0.0, 1.0):
        esper.create_entity(
            Transform((x, 1.5, -4.0), scale=(0.6, 0.6, 0.6)),
            Mesh("sphere"),
            Material((0.9, 0.8, 0.2, 1)),
        )


def median_ms(samples: list[int]) -> float:
    return statistics.median(samples) / 1e6 if samples else 0.0


class Readback:
    """One readback way: its renderer, layer and samples."""

    def __init__(self, readback: str, width: int, height: int, fmt: PixelFormat) -> None:
        bgra = fmt is PixelFormat.BGRA8
        self.renderer = Renderer(width, height, ShaderLibrary(), bgra=bgra, readback=readback)
        self.spec = LayerSpec(width=width, height=height, eyes=2, format=fmt)
        self.fd = create_layer_fd(self.spec, name=f"bench-{readback}")
        self.writer = LayerWriter(self.fd, self.spec)
        self.samples: dict[str, list[int]] = {
            k: [] for k in ("draw", "readback", "wait", "publish", "frame")
        }

    def frame(self, n: int, headset: SimulatedHeadset) -> None:
        sample = headset.sample(n, n * 11_111_111)
        t0 = time.perf_counter_ns()
        slot = self.writer.acquire()
        t1 = time.perf_counter_ns()
        timings = self.renderer.render(esper, sample.eyes, (slot.address(0), slot.address(1)))
        t2 = time.perf_counter_ns()
        self.writer.publish(slot, frame=n, eyes=sample.eyes, completed_ns=t2)
        t3 = time.perf_counter_ns()
        s = self.samples
        s["draw"].append(timings.draw_ns)
        s["readback"].append(timings.readback_ns)
        s["wait"].append(timings.wait_ns)
        s["publish"].append((t1 - t0) + (t3 - t2))
        s["frame"].append(t3 - t0)

    def clear(self) -> None:
        for samples in self.samples.values():
            samples.clear()

    def close(self) -> None:
        self.renderer.close()
        self.writer.close()
        os.close(self.fd)


def bench_size(width: int, height: int, frames: int, fmt: PixelFormat) -> dict[str, dict]:
    paths = {readback: Readback(readback, width, height, fmt) for readback in READBACKS}
    headset = SimulatedHeadset()
    spec = paths["sync"].spec
    private = np.empty(spec.shape, dtype=np.uint8)
    floor, via_copy = [], []

    # Warm up: compile, upload, and touch every image of the ring once (first-touch page
    # faults are a start-up cost, not a per-frame one).
    for n in range(spec.images * 2):
        for path in paths.values():
            path.frame(n, headset)
        private[:] = paths["sync"].writer.acquire().pixels
    for path in paths.values():
        path.clear()

    sync = paths["sync"]
    for n in range(frames):
        for path in paths.values():
            path.frame(n, headset)
        # The floor: the same bytes, already in private memory, copied into a layer image.
        slot = sync.writer.acquire()
        t0 = time.perf_counter_ns()
        np.copyto(slot.pixels, private)
        floor.append(time.perf_counter_ns() - t0)
        # The avoided path: read back into private memory, then copy into the layer.
        sample = headset.sample(n, n * 11_111_111)
        timings = sync.renderer.render(esper, sample.eyes, (private[0], private[1]))
        t0 = time.perf_counter_ns()
        np.copyto(slot.pixels, private)
        via_copy.append(timings.readback_ns + time.perf_counter_ns() - t0)
        sync.writer.publish(slot, frame=n, eyes=sample.eyes, completed_ns=0)

    results = {}
    for readback, path in paths.items():
        result = {key: median_ms(samples) for key, samples in path.samples.items()}
        result["floor"] = median_ms(floor)
        result["via copy"] = median_ms(via_copy) if readback == "sync" else None
        copying = result["readback"] - result["wait"] + result["publish"]
        result["ratio"] = copying / result["floor"]
        results[readback] = result
        path.close()
    return results


def upload_both_eyes(textures: list[int], pixels: np.ndarray, width: int, height: int) -> None:
    """What the compositor does with a shared-memory image: upload each eye, finished."""
    import ctypes

    from engine.render.context import gl

    gl.glPixelStorei(gl.GL_UNPACK_ALIGNMENT, 1)
    for eye, texture in enumerate(textures):
        gl.glBindTexture(gl.GL_TEXTURE_2D, texture)
        gl.glTexSubImage2D(
            gl.GL_TEXTURE_2D, 0, 0, 0, width, height, gl.GL_RGBA, gl.GL_UNSIGNED_BYTE,
            ctypes.c_void_p(pixels[eye].ctypes.data),
        )  # fmt: skip
    gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
    gl.glFinish()


def bench_paths(width: int, height: int, frames: int, allocator: object | None) -> dict:
    """Per-frame medians of both paths at one eye size: ``{path: {column: ms}}``."""
    import ctypes

    from engine.contracts.layer import ImageStorage
    from engine.gpu.gl_memory import GpuLayerTargets, wait_for_rendering
    from engine.render.context import gl

    renderer = Renderer(width, height, ShaderLibrary())
    spec = LayerSpec(width=width, height=height, eyes=2)
    headset = SimulatedHeadset()
    textures = []
    for _ in range(2):
        name = gl.GLuint()
        gl.glGenTextures(1, ctypes.byref(name))
        gl.glBindTexture(gl.GL_TEXTURE_2D, name.value)
        gl.glTexImage2D(
            gl.GL_TEXTURE_2D, 0, gl.GL_RGBA8, width, height, 0, gl.GL_RGBA,
            gl.GL_UNSIGNED_BYTE, None,
        )  # fmt: skip
        textures.append(name.value)
    shm_fd = create_layer_fd(spec, name="bench-shm")
    shm = LayerWriter(shm_fd, spec)
    paths = {"shared memory": {"draw": [], "readback": [], "publish": [], "upload": []}}
    if allocator is not None:
        offer = allocator.allocate(spec)
        targets = GpuLayerTargets(offer.images, offer.fds)
        gpu_fd = create_layer_fd(spec, name="bench-gpu")
        gpu = LayerWriter(gpu_fd, spec, ImageStorage.GPU_MEMORY)
        paths["gpu memory"] = {"draw": [], "readback": [], "publish": [], "upload": []}

    def record(path: str, n: int, *values: int) -> None:
        if n >= 6:  # the first frames touch every ring image: not counted
            for key, value in zip(paths[path], values, strict=True):
                paths[path][key].append(value)

    # The two paths alternate frame by frame, so that a busy machine slows both alike.
    for n in range(frames + 6):
        sample = headset.sample(n, n * 11_111_111)
        slot = shm.acquire()
        timings = renderer.render(esper, sample.eyes, (slot.address(0), slot.address(1)))
        t0 = time.perf_counter_ns()
        shm.publish(slot, frame=n, eyes=sample.eyes, completed_ns=t0)
        t1 = time.perf_counter_ns()
        upload_both_eyes(textures, slot.pixels, width, height)
        t2 = time.perf_counter_ns()
        record("shared memory", n, timings.draw_ns, timings.readback_ns, t1 - t0, t2 - t1)
        if allocator is None:
            continue
        slot = gpu.acquire()
        t0 = time.perf_counter_ns()
        renderer.render_to_framebuffers(esper, sample.eyes, targets.framebuffers(slot.index))
        wait_for_rendering()
        t1 = time.perf_counter_ns()
        gpu.publish(slot, frame=n, eyes=sample.eyes, completed_ns=t1)
        t2 = time.perf_counter_ns()
        record("gpu memory", n, t1 - t0, 0, t2 - t1, 0)
    shm.close()
    os.close(shm_fd)
    if allocator is not None:
        gpu.close()
        os.close(gpu_fd)
        targets.delete()
    results = {
        path: {k: median_ms(v) for k, v in columns.items()} for path, columns in paths.items()
    }
    gl.glDeleteTextures(2, (gl.GLuint * 2)(*textures))
    renderer.close()
    for result in results.values():
        result["total"] = sum(result.values())
    return results


def compare_paths(frames: int) -> None:
    """The second table: shared memory against GPU memory, and which path could run."""
    from engine.compositor.gpu_images import open_allocator

    allocator, why = open_allocator("on")  # on a CPU renderer too: this compares them
    print(
        f"\nshared memory vs gpu memory: {frames} frames per size, medians in ms; "
        + (f"gpu memory: {why}" if allocator else f"gpu memory skipped: {why}")
    )
    columns = ["draw", "readback", "publish", "upload", "total"]
    print(f"{'eyes':>13} {'path':>14} " + " ".join(f"{c:>9}" for c in columns))
    for width, height in SIZES:
        for path, result in bench_paths(width, height, frames, allocator).items():
            cells = " ".join(f"{result[c]:9.2f}" for c in columns)
            print(f"{f'2x{width}x{height}':>13} {path:>14} {cells}")
    print("draw = issuing both eyes and waiting for them (glFinish; a fence for gpu memory)")
    if allocator is not None:
        allocator.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("frames", nargs="?", type=int, default=100)
    parser.add_argument("--format", choices=[f.name for f in PixelFormat])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    build_scene()
    if args.format:
        fmt, why = PixelFormat[args.format], "given"
    else:
        from engine.compositor.process import preferred_upload

        upload = preferred_upload()
        fmt, why = upload.layer_format, f"the compositor's choice here: {upload.describe()}"
    print(f"render_layer: {gl_description()}; {args.frames} frames per size, medians in ms")
    print(f"layer format {fmt.name} ({why})")
    columns = ["draw", "readback", "wait", "publish", "frame", "floor", "via copy", "ratio"]
    print(f"{'eyes':>13} {'MB':>5} {'path':>5} " + " ".join(f"{c:>9}" for c in columns))
    everything = {"gl": gl_description(), "format": fmt.name, "sizes": {}}
    for width, height in SIZES:
        results = bench_size(width, height, args.frames, fmt)
        everything["sizes"][f"2x{width}x{height}"] = results
        mb = 2 * width * height * 4 / 1e6
        for readback, result in results.items():
            cells = " ".join(
                f"{'':>9}" if result[c] is None else f"{result[c]:9.2f}" for c in columns
            )
            print(f"{f'2x{width}x{height}':>13} {mb:5.1f} {readback:>5} {cells}")
    print(
        "frame = draw + readback + publish (the render thread's cost); "
        "ratio = (readback - wait + publish) / floor; target <= 1.2"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1))
    compare_paths(args.frames)


if __name__ == "__main__":
    main()

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


if __name__ == "__main__":
    main()

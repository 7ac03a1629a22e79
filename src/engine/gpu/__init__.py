"""GPU memory shared between processes: layer images that live on the GPU, not in the CPU.

As OpenXR runtimes share swapchain images with applications, the compositor allocates each
layer's images with Vulkan as exportable memory, and both it and the game import them into
their own OpenGL contexts; the game renders straight into them, the compositor samples
them. No pixel crosses the CPU.

=============================  =========================================================
module                         what it holds
=============================  =========================================================
:mod:`~.vulkan`                the few Vulkan entry points and structures used (ctypes on
                               ``libvulkan.so.1``; why ctypes is said there)
:mod:`~.gl_memory`             the OpenGL side, used by both processes: which extensions
                               are offered, the context's device UUIDs, importing an
                               image's memory as a texture, a framebuffer on it, the fence
=============================  =========================================================

The allocator itself is the compositor's (:mod:`engine.compositor.gpu_images`); what is
handed over between processes (sizes, tiling, UUIDs, the fds) is a contract
(:mod:`engine.contracts.gpu_layer`). Where Vulkan, a matching device or a GL extension is
missing, layers stay in shared memory: every step here says *why* it cannot be used rather
than failing the process.
"""

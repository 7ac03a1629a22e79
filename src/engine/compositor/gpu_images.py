"""The compositor's allocator of layer images in GPU memory (Vulkan, exported as fds).

As an OpenXR runtime allocates an application's swapchain images, the compositor allocates
each layer's: one 2D image per ring image *and per eye* (3 x 2 for a stereo layer), each
``R8G8B8A8_UNORM``, optimal tiling, usable as a colour attachment and for sampling, in its
own dedicated allocation exported as an opaque fd (``VK_KHR_external_memory_fd``). Per
eye rather than one array or atlas image: the compositor's warp samples one plain 2D
texture per eye (llvmpipe samples those about a fifth faster than array layers), and the
game's renderer draws each eye into its own framebuffer as it does without GPU images.

The Vulkan device is the one the compositor's GL context runs on: the physical device
whose ``deviceUUID`` and ``driverUUID`` equal the context's (``GL_EXT_memory_object``).
Memory from any other device could not be imported.

:func:`offer_layer_images` is the whole decision for one layer: it returns the images and
their fds, or ``not_offered(reason)`` (Vulkan missing, no matching device, no exportable
format, the GL extensions missing, an import that fails) and the layer stays in shared
memory. Nothing here raises past it.

Example (needs a GL context; ``mesa-vulkan-drivers`` on a machine without a GPU):
    >>> allocator = VulkanImageAllocator.for_current_context()          # doctest: +SKIP
    >>> offer = allocator.allocate(LayerSpec(1280, 720))                # doctest: +SKIP
    >>> offer.images.sizes[0] >= 1280 * 720 * 4                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.contracts.gpu_layer import (
    GpuFormat,
    GpuImagesOffer,
    GpuLayerImages,
    Tiling,
    not_offered,
)
from engine.contracts.layer import LayerSpec
from engine.gpu import vulkan as vk

#: What a layer image is used for: drawn into (game), sampled (compositor), copied (tests).
IMAGE_USAGE = (
    vk.IMAGE_USAGE_COLOR_ATTACHMENT
    | vk.IMAGE_USAGE_SAMPLED
    | vk.IMAGE_USAGE_TRANSFER_SRC
    | vk.IMAGE_USAGE_TRANSFER_DST
)


class GpuImagesUnavailable(RuntimeError):
    """GPU images cannot be allocated here; the message is the reason to report."""


@dataclass
class _Allocation:
    image: int
    memory: int
    size: int
    fd: int


@dataclass(frozen=True)
class PhysicalDevice:
    """A Vulkan device as the allocator saw it (for reports)."""

    name: str
    kind: str
    device_uuid: bytes
    driver_uuid: bytes


@dataclass
class VulkanImageAllocator:
    """A Vulkan instance and device on the GL context's GPU, and the images made with it.

    Use :meth:`for_uuids` (or :meth:`for_current_context`) to make one. Each
    :meth:`allocate` returns an offer whose fds stay owned by the allocator: they are
    closed, and the images and memory freed, by :meth:`close`. GL imports of the memory
    hold their own references, so closing the allocator does not pull memory from under
    an importer.
    """

    loader: vk.Loader
    instance: int
    instance_fns: vk.Functions
    physical: int
    device: int
    device_fns: vk.Functions
    chosen: PhysicalDevice
    memory_properties: vk.PhysicalDeviceMemoryProperties
    dedicated_only: bool
    allocations: list[_Allocation] = field(default_factory=list)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def for_current_context(cls, library: str | None = None) -> VulkanImageAllocator:
        """An allocator on the device of the calling thread's current GL context.

        Raises :class:`GpuImagesUnavailable` if the context offers no memory objects or
        anything :meth:`for_uuids` refuses.
        """
        from engine.gpu.gl_memory import ImportRefused, context_uuids, import_problem

        problem = import_problem()
        if problem:
            raise GpuImagesUnavailable(problem)
        try:
            devices, driver = context_uuids()
        except ImportRefused as exc:
            raise GpuImagesUnavailable(str(exc)) from None
        return cls.for_uuids(devices, driver, library)

    @classmethod
    def for_uuids(
        cls, device_uuids: Sequence[bytes], driver_uuid: bytes, library: str | None = None
    ) -> VulkanImageAllocator:
        """An allocator on the physical device with one of ``device_uuids`` and
        ``driver_uuid``, from the Vulkan loader ``library`` (default ``libvulkan.so.1``).

        Raises :class:`GpuImagesUnavailable` when there is no loader or driver, no such
        device, no ``VK_KHR_external_memory_fd`` on it, or no exportable RGBA8 image.
        """
        try:
            return cls._create(device_uuids, driver_uuid, library)
        except (vk.VulkanUnavailable, vk.VulkanError) as exc:
            raise GpuImagesUnavailable(str(exc)) from None

    @classmethod
    def _create(
        cls, device_uuids: Sequence[bytes], driver_uuid: bytes, library: str | None
    ) -> VulkanImageAllocator:
        loader = vk.Loader(library)
        app = vk.ApplicationInfo(
            pApplicationName=b"all-source-engine compositor",
            pEngineName=b"all-source-engine",
            apiVersion=vk.API_VERSION_1_1,
        )
        info = vk.InstanceCreateInfo(
            pApplicationInfo=ctypes.cast(ctypes.pointer(app), ctypes.c_void_p)
        )
        instance = vk.Handle()
        result = loader.global_fns.vkCreateInstance(
            ctypes.byref(info), None, ctypes.byref(instance)
        )
        if result < 0:
            raise GpuImagesUnavailable(
                f"no Vulkan 1.1 driver (vkCreateInstance: {vk.result_name(result)})"
            )
        instance = instance.value
        fns = loader.instance_functions(instance)
        try:
            physical, chosen, seen = _find_device(fns, instance, device_uuids, driver_uuid)
            if physical is None:
                raise GpuImagesUnavailable(
                    "no Vulkan device matches the GL context "
                    f"(GL: device {', '.join(u.hex() for u in device_uuids)}, driver "
                    f"{driver_uuid.hex()}; Vulkan: {'; '.join(seen) or 'no devices'})"
                )
            if vk.KHR_EXTERNAL_MEMORY_FD not in _device_extensions(fns, physical):
                raise GpuImagesUnavailable(f"{chosen.name} lacks VK_KHR_external_memory_fd")
            features = _external_image_features(fns, physical)
            if not features & vk.EXTERNAL_MEMORY_FEATURE_EXPORTABLE:
                raise GpuImagesUnavailable(f"{chosen.name} cannot export RGBA8 images as fds")
            device = _create_device(fns, physical)
            device_fns = vk.device_functions(fns, device)
        except BaseException:
            _KEPT_UNTIL_EXIT.append(instance)  # never destroyed: see _KEPT_UNTIL_EXIT
            raise
        memory = vk.PhysicalDeviceMemoryProperties()
        fns.vkGetPhysicalDeviceMemoryProperties(physical, ctypes.byref(memory))
        return cls(
            loader, instance, fns, physical, device, device_fns, chosen, memory,
            dedicated_only=bool(features & vk.EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY),
        )  # fmt: skip

    # -- allocation -------------------------------------------------------------------
    def allocate(self, spec: LayerSpec) -> GpuImagesOffer:
        """Images for every ring image and eye of ``spec``, exported; the allocator keeps
        the fds (see the class doc).

        Raises :class:`GpuImagesUnavailable` if Vulkan refuses an image, its memory or the
        export (what was made for this call is freed first).
        """
        made: list[_Allocation] = []
        try:
            for _ in range(spec.images * spec.eyes):
                made.append(self._allocate_one(spec.width, spec.height))
        except vk.VulkanError as exc:
            for allocation in made:
                self._free(allocation)
            raise GpuImagesUnavailable(str(exc)) from None
        except BaseException:
            for allocation in made:
                self._free(allocation)
            raise
        self.allocations.extend(made)
        images = GpuLayerImages(
            spec.width, spec.height, spec.eyes, spec.images,
            tuple(a.size for a in made), self.chosen.device_uuid, self.chosen.driver_uuid,
            GpuFormat.RGBA8, Tiling.OPTIMAL, dedicated=True,
        )  # fmt: skip
        return GpuImagesOffer(images, tuple(a.fd for a in made), self.describe())

    def _allocate_one(self, width: int, height: int) -> _Allocation:
        fns, device = self.device_fns, self.device
        external = vk.ExternalMemoryImageCreateInfo(
            handleTypes=vk.EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
        )
        info = vk.ImageCreateInfo(
            imageType=vk.IMAGE_TYPE_2D,
            format=vk.FORMAT_R8G8B8A8_UNORM,
            extent=vk.Extent3D(width, height, 1),
            mipLevels=1,
            arrayLayers=1,
            samples=vk.SAMPLE_COUNT_1,
            tiling=vk.IMAGE_TILING_OPTIMAL,
            usage=IMAGE_USAGE,
            sharingMode=vk.SHARING_MODE_EXCLUSIVE,
            initialLayout=vk.IMAGE_LAYOUT_UNDEFINED,
        )
        vk.chain(info, external)
        image = vk.NonDispatchable()
        vk.check(
            "vkCreateImage",
            fns.vkCreateImage(device, ctypes.byref(info), None, ctypes.byref(image)),
        )
        allocation = _Allocation(image.value, 0, 0, -1)
        try:
            query = vk.ImageMemoryRequirementsInfo2(image=image.value)
            dedicated_needs = vk.MemoryDedicatedRequirements()
            needs = vk.MemoryRequirements2()
            vk.chain(needs, dedicated_needs)
            fns.vkGetImageMemoryRequirements2(device, ctypes.byref(query), ctypes.byref(needs))
            requirements = needs.memoryRequirements
            type_index = _memory_type(self.memory_properties, requirements.memoryTypeBits)
            if type_index is None:
                raise vk.VulkanError("choosing a memory type the image allows", -2)
            # Always dedicated: drivers that prefer it place the image best, and the
            # importer must be told (GL_DEDICATED_MEMORY_OBJECT_EXT) either way.
            export = vk.ExportMemoryAllocateInfo(
                handleTypes=vk.EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
            )
            dedicated = vk.MemoryDedicatedAllocateInfo(image=image.value)
            allocate = vk.MemoryAllocateInfo(
                allocationSize=requirements.size, memoryTypeIndex=type_index
            )
            vk.chain(allocate, export, dedicated)
            memory = vk.NonDispatchable()
            vk.check(
                "vkAllocateMemory",
                fns.vkAllocateMemory(device, ctypes.byref(allocate), None, ctypes.byref(memory)),
            )
            allocation.memory, allocation.size = memory.value, requirements.size
            vk.check(
                "vkBindImageMemory", fns.vkBindImageMemory(device, image.value, memory.value, 0)
            )
            get_fd = vk.MemoryGetFdInfo(
                memory=memory.value, handleType=vk.EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
            )
            fd = ctypes.c_int(-1)
            vk.check(
                "vkGetMemoryFdKHR",
                fns.vkGetMemoryFdKHR(device, ctypes.byref(get_fd), ctypes.byref(fd)),
            )
            allocation.fd = fd.value
            _set_cloexec(fd.value)
        except BaseException:
            self._free(allocation)
            raise
        return allocation

    def _free(self, allocation: _Allocation) -> None:
        if allocation.fd >= 0:
            os.close(allocation.fd)
        if allocation.image:
            self.device_fns.vkDestroyImage(self.device, allocation.image, None)
        if allocation.memory:
            self.device_fns.vkFreeMemory(self.device, allocation.memory, None)
        allocation.fd, allocation.image, allocation.memory = -1, 0, 0

    def close(self) -> None:
        """Close every fd and free every image and its memory. Idempotent.

        The device and instance are kept until the process exits: destroying a Vulkan
        instance ends the process's EGL context on NVIDIA (see :data:`_KEPT_UNTIL_EXIT`).
        """
        for allocation in self.allocations:
            self._free(allocation)
        self.allocations = []
        if self.instance:
            _KEPT_UNTIL_EXIT.append((self.instance, self.device))
            self.instance = self.device = 0

    def describe(self) -> str:
        """One line naming the device, for logs and the stats JSON."""
        return f"Vulkan on {self.chosen.name} ({self.chosen.kind})"


#: Vulkan instances (and devices) never destroyed, only let go of at exit. On NVIDIA (driver
#: 580, EGL headless), ``vkDestroyInstance`` in a process that holds an EGL context ends that
#: context: ``eglGetCurrentContext`` returns nothing afterwards, every GL call is ignored,
#: and making it current again does not help. A compositor that refused a device, or a
#: test that closed an allocator, would lose its GL. They cost a little memory each.
_KEPT_UNTIL_EXIT: list[object] = []


def _set_cloexec(fd: int) -> None:
    # Exported fds are inherited by nothing unless passed on explicitly, as memfds are.
    os.set_inheritable(fd, False)


def _find_device(
    fns: vk.Functions, instance: int, device_uuids: Sequence[bytes], driver_uuid: bytes
) -> tuple[int | None, PhysicalDevice | None, list[str]]:
    count = ctypes.c_uint32()
    vk.check(
        "vkEnumeratePhysicalDevices",
        fns.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None),
    )
    handles = (vk.Handle * count.value)()
    vk.check(
        "vkEnumeratePhysicalDevices",
        fns.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), handles),
    )
    seen = []
    for handle in handles[: count.value]:
        ids = vk.PhysicalDeviceIDProperties()
        properties = vk.PhysicalDeviceProperties2()
        vk.chain(properties, ids)
        fns.vkGetPhysicalDeviceProperties2(handle, ctypes.byref(properties))
        head = properties.properties
        found = PhysicalDevice(
            head.deviceName.decode(errors="replace"),
            vk.PHYSICAL_DEVICE_TYPE_NAMES.get(head.deviceType, str(head.deviceType)),
            bytes(ids.deviceUUID),
            bytes(ids.driverUUID),
        )
        seen.append(
            f"{found.name}: device {found.device_uuid.hex()}, driver {found.driver_uuid.hex()}"
        )
        if found.device_uuid in device_uuids and found.driver_uuid == driver_uuid:
            return handle, found, seen
    return None, None, seen


def _device_extensions(fns: vk.Functions, physical: int) -> set[bytes]:
    count = ctypes.c_uint32()
    vk.check(
        "vkEnumerateDeviceExtensionProperties",
        fns.vkEnumerateDeviceExtensionProperties(physical, None, ctypes.byref(count), None),
    )
    properties = (vk.ExtensionProperties * count.value)()
    vk.check(
        "vkEnumerateDeviceExtensionProperties",
        fns.vkEnumerateDeviceExtensionProperties(physical, None, ctypes.byref(count), properties),
    )
    return {p.extensionName for p in properties[: count.value]}


def _external_image_features(fns: vk.Functions, physical: int) -> int:
    """``VkExternalMemoryFeatureFlags`` of an RGBA8 optimal layer image as an opaque fd."""
    external_info = vk.PhysicalDeviceExternalImageFormatInfo(
        handleType=vk.EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD
    )
    info = vk.PhysicalDeviceImageFormatInfo2(
        format=vk.FORMAT_R8G8B8A8_UNORM,
        type=vk.IMAGE_TYPE_2D,
        tiling=vk.IMAGE_TILING_OPTIMAL,
        usage=IMAGE_USAGE,
    )
    vk.chain(info, external_info)
    external = vk.ExternalImageFormatProperties()
    properties = vk.ImageFormatProperties2()
    vk.chain(properties, external)
    result = fns.vkGetPhysicalDeviceImageFormatProperties2(
        physical, ctypes.byref(info), ctypes.byref(properties)
    )
    if result == vk.ERROR_FORMAT_NOT_SUPPORTED:
        return 0
    vk.check("vkGetPhysicalDeviceImageFormatProperties2", result)
    return external.externalMemoryProperties.externalMemoryFeatures


def _create_device(fns: vk.Functions, physical: int) -> int:
    # One queue: a device needs one, though nothing is submitted to it (the images are
    # only allocated here; GL in both processes does all the drawing).
    priority = ctypes.c_float(1.0)
    queue = vk.DeviceQueueCreateInfo(
        queueFamilyIndex=0, queueCount=1, pQueuePriorities=ctypes.pointer(priority)
    )
    names, count = vk.string_array([vk.KHR_EXTERNAL_MEMORY_FD])
    info = vk.DeviceCreateInfo(
        queueCreateInfoCount=1,
        pQueueCreateInfos=ctypes.cast(ctypes.pointer(queue), ctypes.c_void_p),
        enabledExtensionCount=count,
        ppEnabledExtensionNames=ctypes.cast(names, ctypes.c_void_p),
    )
    device = vk.Handle()
    vk.check(
        "vkCreateDevice",
        fns.vkCreateDevice(physical, ctypes.byref(info), None, ctypes.byref(device)),
    )
    return device.value


def _memory_type(properties: vk.PhysicalDeviceMemoryProperties, allowed: int) -> int | None:
    """The first memory type in ``allowed`` that is device-local, else the first allowed."""
    allowed_types = [i for i in range(properties.memoryTypeCount) if allowed & (1 << i)]
    for i in allowed_types:
        if properties.memoryTypes[i].propertyFlags & vk.MEMORY_PROPERTY_DEVICE_LOCAL:
            return i
    return allowed_types[0] if allowed_types else None


def offer_layer_images(
    allocator: VulkanImageAllocator | None, spec: LayerSpec, filter: int | None = None
) -> tuple[GpuImagesOffer, object | None]:
    """Allocate ``spec``'s images and import them into the current GL context.

    Returns ``(offer, imported)``: the offer to send (the allocator keeps its fds) and the
    compositor's own :class:`~engine.gpu.gl_memory.ImportedImages`; or
    ``(not_offered(reason), None)`` when there is no allocator (``None``) or anything
    fails. Never raises for a driver's refusal.
    """
    from engine.gpu.gl_memory import ImportedImages, ImportRefused

    if allocator is None:
        return not_offered("no Vulkan allocator"), None
    try:
        offer = allocator.allocate(spec)
    except GpuImagesUnavailable as exc:
        return not_offered(f"allocation refused: {exc}"), None
    assert offer.images is not None
    try:
        imported = ImportedImages(offer.images, offer.fds, filter)
    except ImportRefused as exc:
        return not_offered(f"the compositor's GL cannot import the images: {exc}"), None
    return offer, imported


#: Why ``"auto"`` keeps layers in shared memory on a CPU renderer. Measured here (Mesa
#: 22.3, 2 x 1280x720, the mesh warp): llvmpipe's fast ("linear") path samples BGRA
#: textures only, GL imports GPU memory only as a sized format (GL_RGBA8; GL_BGRA8_EXT is
#: refused), and a copy into a BGRA texture is refused or goes through a slow blit; the
#: warp from the imported RGBA8 image cost 2-5x the one from an uploaded BGRA copy (4 ms
#: against 9-25 ms on a busy 2-core machine), far more than the readback and upload it
#: saves (about 1.6 ms together).
CPU_RENDERER_REASON = (
    "a CPU renderer: llvmpipe samples the RGBA8 images GL can import off its fast path "
    "(2-5x the warp from an uploaded BGRA copy); gpu_images='on' uses them anyway"
)


def open_allocator(
    mode: str = "auto", software_renderer: bool = False
) -> tuple[VulkanImageAllocator | None, str]:
    """The allocator for the current GL context, or ``None`` and why not.

    ``mode`` is ``"auto"`` (GPU memory where Vulkan and GL allow it and the renderer is a
    GPU: on a CPU renderer, see :data:`CPU_RENDERER_REASON`), ``"on"`` (wherever Vulkan
    and GL allow it) or ``"off"`` (shared memory always). Never raises for a missing
    driver, device or extension; raises ``ValueError`` for another ``mode``.
    """
    if mode == "off":
        return None, "turned off (gpu_images='off')"
    if mode not in ("auto", "on"):
        raise ValueError(f"gpu_images must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "auto" and software_renderer:
        return None, CPU_RENDERER_REASON
    try:
        allocator = VulkanImageAllocator.for_current_context()
    except GpuImagesUnavailable as exc:
        return None, str(exc)
    return allocator, allocator.describe()

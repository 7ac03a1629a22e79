"""The part of Vulkan the layer allocator uses: ctypes on ``libvulkan.so.1``.

Why ctypes rather than the ``vulkan`` package on PyPI (cffi, generated from the registry):

* that package's last release is 1.3.275.1 of February 2024, and its upstream has had no
  release since (a fork on PyPI says as much); Vulkan has moved on to 1.4;
* it would add two dependencies (it and ``cffi``) and about 3 MB of generated Python to
  the compositor for about twenty entry points;
* the structures this module needs are few, fixed by the Vulkan ABI, and written out here
  with their exact sizes checked (``_check_sizes``), so nothing is generated at import.

The loader (``libvulkan.so.1``, Debian's ``libvulkan1``) finds the drivers; on a machine
without a GPU Mesa's ``lavapipe`` (``mesa-vulkan-drivers``) is one. Every function is
looked up through ``vkGetInstanceProcAddr`` / ``vkGetDeviceProcAddr``, so an old loader
that does not export a 1.1 function by name is no obstacle.

Errors: :class:`VulkanUnavailable` when the library or a required entry point is missing
(the caller falls back to shared memory and reports the reason); :class:`VulkanError`
when a call returns a negative ``VkResult``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable
from typing import Any, ClassVar

# --- constants (from the Vulkan registry, vk.xml) ---------------------------------------

API_VERSION_1_1 = (1 << 22) | (1 << 12)

SUCCESS = 0
INCOMPLETE = 5
ERROR_FORMAT_NOT_SUPPORTED = -11

FORMAT_R8G8B8A8_UNORM = 37
IMAGE_TYPE_2D = 1
IMAGE_TILING_OPTIMAL = 0
IMAGE_TILING_LINEAR = 1
SAMPLE_COUNT_1 = 1
SHARING_MODE_EXCLUSIVE = 0
IMAGE_LAYOUT_UNDEFINED = 0
IMAGE_USAGE_TRANSFER_SRC = 0x1
IMAGE_USAGE_TRANSFER_DST = 0x2
IMAGE_USAGE_SAMPLED = 0x4
IMAGE_USAGE_COLOR_ATTACHMENT = 0x10
MEMORY_PROPERTY_DEVICE_LOCAL = 0x1
EXTERNAL_MEMORY_HANDLE_TYPE_OPAQUE_FD = 0x1
EXTERNAL_MEMORY_FEATURE_DEDICATED_ONLY = 0x1
EXTERNAL_MEMORY_FEATURE_EXPORTABLE = 0x2
EXTERNAL_MEMORY_FEATURE_IMPORTABLE = 0x4
RESULT_NAMES = {
    -1: "VK_ERROR_OUT_OF_HOST_MEMORY",
    -2: "VK_ERROR_OUT_OF_DEVICE_MEMORY",
    -3: "VK_ERROR_INITIALIZATION_FAILED",
    -4: "VK_ERROR_DEVICE_LOST",
    -7: "VK_ERROR_EXTENSION_NOT_PRESENT",
    -9: "VK_ERROR_INCOMPATIBLE_DRIVER",
    -11: "VK_ERROR_FORMAT_NOT_SUPPORTED",
    -1000072003: "VK_ERROR_INVALID_EXTERNAL_HANDLE",
}
PHYSICAL_DEVICE_TYPE_NAMES = {0: "other", 1: "integrated", 2: "discrete", 3: "virtual", 4: "cpu"}

KHR_EXTERNAL_MEMORY_FD = b"VK_KHR_external_memory_fd"

UUID_SIZE = 16

# --- structures -------------------------------------------------------------------------

Handle = ctypes.c_void_p  # dispatchable: VkInstance, VkPhysicalDevice, VkDevice
NonDispatchable = ctypes.c_uint64  # VkImage, VkDeviceMemory, ...
DeviceSize = ctypes.c_uint64


class _Chained(ctypes.Structure):
    """A structure that starts with ``sType`` and ``pNext``; ``sType`` is filled in."""

    STYPE: ClassVar[int] = 0

    def __init__(self, **fields: Any) -> None:
        super().__init__(sType=self.STYPE, **fields)


def _chained(name: str, stype: int, fields: list[tuple[str, Any]]) -> type[_Chained]:
    head = [("sType", ctypes.c_int32), ("pNext", ctypes.c_void_p)]
    return type(name, (_Chained,), {"STYPE": stype, "_fields_": head + fields})


class Extent3D(ctypes.Structure):
    _fields_ = [("width", ctypes.c_uint32), ("height", ctypes.c_uint32), ("depth", ctypes.c_uint32)]


class MemoryRequirements(ctypes.Structure):
    _fields_ = [
        ("size", DeviceSize),
        ("alignment", DeviceSize),
        ("memoryTypeBits", ctypes.c_uint32),
    ]


class MemoryType(ctypes.Structure):
    _fields_ = [("propertyFlags", ctypes.c_uint32), ("heapIndex", ctypes.c_uint32)]


class MemoryHeap(ctypes.Structure):
    _fields_ = [("size", DeviceSize), ("flags", ctypes.c_uint32)]


class PhysicalDeviceMemoryProperties(ctypes.Structure):
    _fields_ = [
        ("memoryTypeCount", ctypes.c_uint32),
        ("memoryTypes", MemoryType * 32),
        ("memoryHeapCount", ctypes.c_uint32),
        ("memoryHeaps", MemoryHeap * 16),
    ]


class QueueFamilyProperties(ctypes.Structure):
    _fields_ = [
        ("queueFlags", ctypes.c_uint32),
        ("queueCount", ctypes.c_uint32),
        ("timestampValidBits", ctypes.c_uint32),
        ("minImageTransferGranularity", Extent3D),
    ]


class ExtensionProperties(ctypes.Structure):
    _fields_ = [("extensionName", ctypes.c_char * 256), ("specVersion", ctypes.c_uint32)]


class PhysicalDeviceProperties(ctypes.Structure):
    """The head of ``VkPhysicalDeviceProperties``; the limits are kept as opaque bytes."""

    _fields_ = [
        ("apiVersion", ctypes.c_uint32),
        ("driverVersion", ctypes.c_uint32),
        ("vendorID", ctypes.c_uint32),
        ("deviceID", ctypes.c_uint32),
        ("deviceType", ctypes.c_int32),
        ("deviceName", ctypes.c_char * 256),
        ("pipelineCacheUUID", ctypes.c_uint8 * UUID_SIZE),
        ("limitsAndSparseProperties", ctypes.c_uint64 * 66),  # 504 + 20, padded to 8
    ]


class ImageFormatProperties(ctypes.Structure):
    _fields_ = [
        ("maxExtent", Extent3D),
        ("maxMipLevels", ctypes.c_uint32),
        ("maxArrayLayers", ctypes.c_uint32),
        ("sampleCounts", ctypes.c_uint32),
        ("maxResourceSize", DeviceSize),
    ]


class ExternalMemoryProperties(ctypes.Structure):
    _fields_ = [
        ("externalMemoryFeatures", ctypes.c_uint32),
        ("exportFromImportedHandleTypes", ctypes.c_uint32),
        ("compatibleHandleTypes", ctypes.c_uint32),
    ]


ApplicationInfo = _chained(
    "ApplicationInfo",
    0,
    [
        ("pApplicationName", ctypes.c_char_p),
        ("applicationVersion", ctypes.c_uint32),
        ("pEngineName", ctypes.c_char_p),
        ("engineVersion", ctypes.c_uint32),
        ("apiVersion", ctypes.c_uint32),
    ],
)
InstanceCreateInfo = _chained(
    "InstanceCreateInfo",
    1,
    [
        ("flags", ctypes.c_uint32),
        ("pApplicationInfo", ctypes.c_void_p),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
    ],
)
DeviceQueueCreateInfo = _chained(
    "DeviceQueueCreateInfo",
    2,
    [
        ("flags", ctypes.c_uint32),
        ("queueFamilyIndex", ctypes.c_uint32),
        ("queueCount", ctypes.c_uint32),
        ("pQueuePriorities", ctypes.POINTER(ctypes.c_float)),
    ],
)
DeviceCreateInfo = _chained(
    "DeviceCreateInfo",
    3,
    [
        ("flags", ctypes.c_uint32),
        ("queueCreateInfoCount", ctypes.c_uint32),
        ("pQueueCreateInfos", ctypes.c_void_p),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
        ("pEnabledFeatures", ctypes.c_void_p),
    ],
)
MemoryAllocateInfo = _chained(
    "MemoryAllocateInfo",
    5,
    [("allocationSize", DeviceSize), ("memoryTypeIndex", ctypes.c_uint32)],
)
ImageCreateInfo = _chained(
    "ImageCreateInfo",
    14,
    [
        ("flags", ctypes.c_uint32),
        ("imageType", ctypes.c_int32),
        ("format", ctypes.c_int32),
        ("extent", Extent3D),
        ("mipLevels", ctypes.c_uint32),
        ("arrayLayers", ctypes.c_uint32),
        ("samples", ctypes.c_uint32),
        ("tiling", ctypes.c_int32),
        ("usage", ctypes.c_uint32),
        ("sharingMode", ctypes.c_int32),
        ("queueFamilyIndexCount", ctypes.c_uint32),
        ("pQueueFamilyIndices", ctypes.c_void_p),
        ("initialLayout", ctypes.c_int32),
    ],
)
PhysicalDeviceProperties2 = _chained(
    "PhysicalDeviceProperties2", 1000059001, [("properties", PhysicalDeviceProperties)]
)
PhysicalDeviceIDProperties = _chained(
    "PhysicalDeviceIDProperties",
    1000071004,
    [
        ("deviceUUID", ctypes.c_uint8 * UUID_SIZE),
        ("driverUUID", ctypes.c_uint8 * UUID_SIZE),
        ("deviceLUID", ctypes.c_uint8 * 8),
        ("deviceNodeMask", ctypes.c_uint32),
        ("deviceLUIDValid", ctypes.c_uint32),
    ],
)
PhysicalDeviceImageFormatInfo2 = _chained(
    "PhysicalDeviceImageFormatInfo2",
    1000059004,
    [
        ("format", ctypes.c_int32),
        ("type", ctypes.c_int32),
        ("tiling", ctypes.c_int32),
        ("usage", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ],
)
PhysicalDeviceExternalImageFormatInfo = _chained(
    "PhysicalDeviceExternalImageFormatInfo", 1000071000, [("handleType", ctypes.c_uint32)]
)
ImageFormatProperties2 = _chained(
    "ImageFormatProperties2", 1000059003, [("imageFormatProperties", ImageFormatProperties)]
)
ExternalImageFormatProperties = _chained(
    "ExternalImageFormatProperties",
    1000071001,
    [("externalMemoryProperties", ExternalMemoryProperties)],
)
ExternalMemoryImageCreateInfo = _chained(
    "ExternalMemoryImageCreateInfo", 1000072001, [("handleTypes", ctypes.c_uint32)]
)
ExportMemoryAllocateInfo = _chained(
    "ExportMemoryAllocateInfo", 1000072002, [("handleTypes", ctypes.c_uint32)]
)
MemoryDedicatedRequirements = _chained(
    "MemoryDedicatedRequirements",
    1000127000,
    [
        ("prefersDedicatedAllocation", ctypes.c_uint32),
        ("requiresDedicatedAllocation", ctypes.c_uint32),
    ],
)
MemoryDedicatedAllocateInfo = _chained(
    "MemoryDedicatedAllocateInfo",
    1000127001,
    [("image", NonDispatchable), ("buffer", NonDispatchable)],
)
ImageMemoryRequirementsInfo2 = _chained(
    "ImageMemoryRequirementsInfo2", 1000146001, [("image", NonDispatchable)]
)
MemoryRequirements2 = _chained(
    "MemoryRequirements2", 1000146003, [("memoryRequirements", MemoryRequirements)]
)
MemoryGetFdInfo = _chained(
    "MemoryGetFdInfo",
    1000074002,
    [("memory", NonDispatchable), ("handleType", ctypes.c_uint32)],
)

# Sizes on a 64-bit ABI, as the C headers define them: a mistyped field fails import here
# rather than corrupting the driver's writes.
_SIZES = {
    PhysicalDeviceProperties: 824,
    PhysicalDeviceProperties2: 840,
    PhysicalDeviceIDProperties: 64,
    ImageCreateInfo: 88,
    PhysicalDeviceMemoryProperties: 520,
    ImageFormatProperties2: 48,
    ExternalImageFormatProperties: 32,
    DeviceCreateInfo: 72,
    MemoryRequirements2: 40,
}


def _check_sizes() -> None:
    if ctypes.sizeof(ctypes.c_void_p) != 8:
        return  # the sizes above are for 64-bit processes; nothing else is checked
    for structure, size in _SIZES.items():
        if ctypes.sizeof(structure) != size:
            raise ImportError(
                f"{structure.__name__} is {ctypes.sizeof(structure)} bytes, not {size}"
            )


_check_sizes()

# --- errors -----------------------------------------------------------------------------


class VulkanUnavailable(RuntimeError):
    """Vulkan cannot be used here: no loader, no driver, or a missing entry point."""


class VulkanError(RuntimeError):
    """A Vulkan call returned an error; ``result`` is its ``VkResult``."""

    def __init__(self, call: str, result: int) -> None:
        super().__init__(f"{call} failed: {result_name(result)}")
        self.call = call
        self.result = result


# --- entry points -----------------------------------------------------------------------

_P = ctypes.c_void_p
_U32 = ctypes.c_uint32
_U32P = ctypes.POINTER(ctypes.c_uint32)
_RESULT = ctypes.c_int32
_VOID = None

#: name -> (return type, argument types). Looked up per instance or per device.
_GLOBAL = {
    "vkCreateInstance": (_RESULT, [_P, _P, ctypes.POINTER(Handle)]),
}
_INSTANCE = {
    "vkDestroyInstance": (_VOID, [Handle, _P]),
    "vkEnumeratePhysicalDevices": (_RESULT, [Handle, _U32P, _P]),
    "vkGetPhysicalDeviceProperties2": (_VOID, [Handle, _P]),
    "vkGetPhysicalDeviceQueueFamilyProperties": (_VOID, [Handle, _U32P, _P]),
    "vkGetPhysicalDeviceMemoryProperties": (_VOID, [Handle, _P]),
    "vkGetPhysicalDeviceImageFormatProperties2": (_RESULT, [Handle, _P, _P]),
    "vkEnumerateDeviceExtensionProperties": (_RESULT, [Handle, ctypes.c_char_p, _U32P, _P]),
    "vkCreateDevice": (_RESULT, [Handle, _P, _P, ctypes.POINTER(Handle)]),
    "vkGetDeviceProcAddr": (_P, [Handle, ctypes.c_char_p]),
}
_DEVICE = {
    "vkDestroyDevice": (_VOID, [Handle, _P]),
    "vkCreateImage": (_RESULT, [Handle, _P, _P, ctypes.POINTER(NonDispatchable)]),
    "vkDestroyImage": (_VOID, [Handle, NonDispatchable, _P]),
    "vkGetImageMemoryRequirements2": (_VOID, [Handle, _P, _P]),
    "vkAllocateMemory": (_RESULT, [Handle, _P, _P, ctypes.POINTER(NonDispatchable)]),
    "vkFreeMemory": (_VOID, [Handle, NonDispatchable, _P]),
    "vkBindImageMemory": (_RESULT, [Handle, NonDispatchable, NonDispatchable, DeviceSize]),
    "vkGetMemoryFdKHR": (_RESULT, [Handle, _P, ctypes.POINTER(ctypes.c_int)]),
}


def _bind(address: int | None, name: str, signature: tuple[Any, list[Any]]) -> Any:
    if not address:
        raise VulkanUnavailable(f"Vulkan entry point {name} is missing")
    restype, argtypes = signature
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


class Functions:
    """Entry points as attributes (``fns.vkCreateImage(...)``), bound for one instance or
    device. Raises :class:`VulkanUnavailable` for a missing one."""

    def __init__(self, lookup: Any, handle: Any, table: dict[str, tuple[Any, list[Any]]]) -> None:
        for name, signature in table.items():
            setattr(self, name, _bind(lookup(handle, name.encode()), name, signature))


class Loader:
    """``libvulkan.so.1`` and its ``vkGetInstanceProcAddr``.

    Raises :class:`VulkanUnavailable` if the library cannot be loaded (install Debian's
    ``libvulkan1``; on a machine without a GPU, ``mesa-vulkan-drivers`` too).
    """

    def __init__(self, library: str | None = None) -> None:
        name = library or "libvulkan.so.1"
        try:
            self.lib = ctypes.CDLL(name)
        except OSError as exc:
            found = ctypes.util.find_library("vulkan")
            if library is not None or found is None:
                raise VulkanUnavailable(f"no Vulkan loader ({name}: {exc})") from None
            self.lib = ctypes.CDLL(found)
        self.get_instance_proc_addr = self.lib.vkGetInstanceProcAddr
        self.get_instance_proc_addr.restype = _P
        self.get_instance_proc_addr.argtypes = [Handle, ctypes.c_char_p]
        self.global_fns = Functions(self.get_instance_proc_addr, None, _GLOBAL)

    def instance_functions(self, instance: Any) -> Functions:
        return Functions(self.get_instance_proc_addr, instance, _INSTANCE)


def device_functions(instance_fns: Functions, device: Any) -> Functions:
    """The device-level entry points of ``device`` (``vkGetMemoryFdKHR`` included)."""
    return Functions(instance_fns.vkGetDeviceProcAddr, device, _DEVICE)


def result_name(result: int) -> str:
    """A ``VkResult`` as its name where known, else as its number."""
    return RESULT_NAMES.get(result, f"VkResult {result}")


def check(call: str, result: int) -> None:
    """Raise :class:`VulkanError` for a negative ``VkResult`` (positive ones are not errors)."""
    if result < 0:
        raise VulkanError(call, result)


def string_array(values: Iterable[bytes]) -> tuple[ctypes.Array, int]:
    """A ``const char* const*`` for ``values`` and its length (the array keeps them alive)."""
    items = list(values)
    array = (ctypes.c_char_p * max(1, len(items)))(*items)
    return array, len(items)


def chain(*structures: ctypes.Structure) -> None:
    """Link ``structures`` through their ``pNext`` fields, first to last (the caller keeps
    them alive while the chain is used)."""
    for first, second in zip(structures, structures[1:], strict=False):
        first.pNext = ctypes.cast(ctypes.pointer(second), ctypes.c_void_p)


def uuid_hex(data: Any) -> str:
    """A 16-byte UUID (any sequence of ints) as 32 hex digits."""
    return bytes(data).hex()

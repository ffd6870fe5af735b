"""What NVML would say about the node's one GPU: `/health`'s `gpu` and `/api/v1/gpu/*`.

The fields are those of the real `GPUDevice` and `DriverInfo`; memory use follows the GPU lock,
so a version that holds the GPU shows it as used on every version of the node. `holder` is the
mock's own addition (who holds the lock), which the real NVML view cannot know.
"""

from __future__ import annotations

from typing import Any

from mock_mlnode.state import GpuLock

__all__ = ["DRIVER_INFO", "device", "devices_answer"]

DRIVER_INFO = {"driver_version": "570.124.06", "cuda_driver_version": "12.8", "nvml_version": "12.570.124"}
_USED_SHARE = 0.92  # vLLM's default gpu_memory_utilization, roughly


def device(gpu: GpuLock, name: str, total_mb: int) -> dict[str, Any]:
    holder = gpu.holder()
    used = int(total_mb * _USED_SHARE) if holder else 0
    return {
        "index": 0,
        "name": name,
        "total_memory_mb": total_mb,
        "free_memory_mb": total_mb - used,
        "used_memory_mb": used,
        "utilization_percent": 35 if holder else 0,
        "temperature_c": 61 if holder else 38,
        "is_available": True,
        "error_message": None,
        "holder": holder,
    }


def devices_answer(gpu: GpuLock, name: str, total_mb: int) -> dict[str, Any]:
    """`GET /api/v1/gpu/devices`."""
    return {"devices": [device(gpu, name, total_mb)], "count": 1}

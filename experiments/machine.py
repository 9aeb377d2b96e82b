"""What the benchmarks ran on, recorded with their figures."""

import os
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """
    The GPU's name, or the CPU's model name from /proc/cpuinfo with the vector
    instructions torch's kernels use on it (`AVX2`, `AVX512`, ...): the same
    model name can hide very different machines, and the ratios measured
    depend on them.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def machine_meta(device: torch.device) -> dict:
    """Device, torch version, threads and cores."""
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}

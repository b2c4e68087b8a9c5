"""``trainer.precision=auto``: bf16-mixed where the hardware runs bf16 fast, 32 elsewhere.

Fast bf16 is detected, not guessed from a model name: on a CPU, the AVX512-BF16 or AMX-BF16
instructions (oneDNN's bf16 matrix multiplies use them; without them bf16 is emulated and slower
than fp32); on a CUDA GPU, compute capability 8.0 or higher (Ampere and later have bf16 tensor
cores). 16-mixed is never chosen automatically: it needs a gradient scaler and a non-fused optimizer.
"""

from __future__ import annotations

from pathlib import Path

PRECISIONS = ("32", "bf16-mixed", "16-mixed", "auto")


def cpu_flags() -> set[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16() -> str | None:
    """The CPU's fast bf16 instruction set (``"AMX-BF16"`` or ``"AVX512-BF16"``), or None."""
    import torch

    def torch_says(check: str) -> bool:  # torch's own CPUID checks, where this build has them
        return bool(getattr(torch.cpu, check, lambda: False)())

    flags = cpu_flags()
    if torch_says("_is_amx_tile_supported") or "amx_bf16" in flags:
        return "AMX-BF16"
    if torch_says("_is_avx512_bf16_supported") or "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def uses_cuda(accelerator: str) -> bool:
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def choose_precision(accelerator: str) -> tuple[str, str]:
    """The precision ``auto`` stands for on this machine with ``trainer.accelerator``, and why."""
    import torch

    if uses_cuda(accelerator):
        if not torch.cuda.is_available():
            return "32", "no CUDA device is visible"
        major, minor = torch.cuda.get_device_capability()
        name = torch.cuda.get_device_name()
        if (major, minor) >= (8, 0):
            return "bf16-mixed", f"{name} has compute capability {major}.{minor} (>= 8.0: bf16 tensor cores)"
        return "32", f"{name} has compute capability {major}.{minor} (< 8.0: no fast bf16)"
    if accelerator not in ("cpu", "auto"):
        return "32", f"trainer.accelerator={accelerator}: bf16 is chosen automatically on CPUs and CUDA GPUs only"
    isa = cpu_bf16()
    if isa:
        return "bf16-mixed", f"the CPU has {isa} instructions"
    return "32", "the CPU has neither AVX512-BF16 nor AMX-BF16 instructions (bf16 would be emulated, slower)"

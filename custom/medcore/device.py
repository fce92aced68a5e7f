"""Device and mixed-precision choices, made automatically from the hardware.

* CUDA GPU: float16 autocast with a gradient scaler (the Clara models' AMP);
* CPU that computes bfloat16 natively (oneDNN's check: AVX-512 or AMX on x86, BF16 on Arm): bfloat16 autocast
  (about 2x faster SegResNet training than float32 on CPUs with AVX-512 BF16), no scaler (bfloat16 has float32's
  exponent range);
* any other CPU: float32. There bfloat16 is emulated: on an AVX2-only AMD EPYC a training step under bfloat16
  autocast took 21 (ResNet18) to 52 (SegResNet) times as long as in float32 (``benchmarks/results/cpu_amp.md``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import ContextManager

import torch

from .errors import UserError

__all__ = ["DEVICE_NAMES", "check_device_name", "select_device", "cpu_has_native_bf16", "amp_dtype", "autocast",
           "grad_scaler"]

#: What a device setting or ``--device`` option accepts.
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device_name(name: object) -> str | None:
    """``None`` when ``name`` is a device this project accepts, else :data:`DEVICE_NAMES` (a settings check)."""
    return None if isinstance(name, str) and _DEVICE_PATTERN.fullmatch(name) else DEVICE_NAMES


def select_device(preference: str = "auto") -> torch.device:
    """``"auto"`` gives the first CUDA GPU when there is one, else the CPU; ``"cpu"``/``"cuda[:n]"`` force one.

    Raises:
        UserError: ``preference`` is not a device name, or names a CUDA GPU this machine does not have.
    """
    if check_device_name(preference) is not None:
        raise UserError(f"device {preference!r}: expected {DEVICE_NAMES}")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= available:
            raise UserError(f"device {preference!r}: requested, but this machine has {available} CUDA GPU(s)")
    return device


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware, as oneDNN decides (AVX-512 or AMX on x86, BF16 on Arm)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: go by the vector extensions torch uses
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type of ``device``: float16 on CUDA, bfloat16 on a CPU that computes it natively, None
    (float32) on any other CPU."""
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """Mixed-precision context for forward passes (:func:`amp_dtype`), nothing when disabled or float32."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, enabled: bool = True) -> torch.amp.GradScaler:
    """Loss scaler for fp16 training on CUDA; a disabled (pass-through) scaler elsewhere."""
    return torch.amp.GradScaler(device.type, enabled=enabled and device.type == "cuda")

"""Whether this CPU computes bfloat16 natively, and the warning ``bf16`` training gets where it does not.

bf16 autocast on a CPU pays off only where the matmuls run in bf16 hardware: AVX512-BF16
(Cooper Lake and later Xeons, Zen 4) or AMX (Sapphire Rapids and later). Elsewhere oneDNN
emulates bf16 with fp32 arithmetic plus conversions, and ``bf16-mixed`` trains *slower* than ``32``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

# /proc/cpuinfo flags of the instructions that do bf16 arithmetic in hardware.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_cpu(cpuinfo: str | None = None) -> bool | None:
    """True when the CPU has AVX512-BF16 or AMX-BF16, False when it has neither, None when unknown.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read from the machine when None; None off Linux).

    >>> native_bf16_cpu("flags\\t: fpu sse2 avx2 avx512f avx512_bf16\\n")
    True
    >>> native_bf16_cpu("flags\\t: fpu sse2 avx2\\n"), native_bf16_cpu("")
    (False, None)
    """
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


class CPUPrecisionCheck(Callback):
    """Warns at the start of a CPU run in bf16 when this CPU would only emulate bf16."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        precision = str(trainer.precision)
        if precision.startswith("bf16") and isinstance(trainer.accelerator, CPUAccelerator):
            if native_bf16_cpu() is False:
                rank_zero_warn(
                    f"--trainer.precision {precision} on a CPU without AVX512-BF16 or AMX: bf16 is emulated"
                    " here and trains slower than --trainer.precision 32"
                )

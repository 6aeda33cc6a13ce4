"""Throughput accounting for the training loop: FLOPs per step (counted once), steady-state
samples/s, model FLOPs utilization against the device's peak, and the data-wait fraction.

FLOPs are counted on the first step only. Where the work varies per batch (open_clip text
batches are cut after their longest text), that step's count stands for every step, so MFU
and TFLOP/s are estimates to within the variation of text lengths."""
from __future__ import annotations

import contextlib

import torch

# Dense peak TFLOPS per device: (bf16 tensor cores, fp32 matmuls). The fp32 column is the TF32
# tensor-core peak where the card has one, since the trainer allows TF32 on CUDA (V100 and
# older: plain FP32). Vendor datasheet numbers halved where the sheet quotes them with 2:4
# sparsity (NVIDIA's H100, H200, A100, L4, L40S and A10 pages: "with sparsity"); V100 and T4
# from their datasheets. None where the card has no bf16 tensor cores (V100 and T4 have fp16
# ones only; bf16 there runs far below any peak, so no MFU is reported for it). Matched as a
# substring of ``torch.cuda.get_device_name()``, longest key first: "H100 NVL" (835 bf16, NVIDIA
# H100 page: 1,671 with sparsity) and "H100 PCIe" (756) before the SXM "H100" (989).
PEAK_TFLOPS: dict[str, tuple[float | None, float]] = {
    "H200": (989.0, 494.0), "H100 NVL": (835.0, 418.0), "H100 PCIe": (756.0, 378.0), "H100": (989.0, 494.0),
    "A100": (312.0, 156.0), "A10G": (125.0, 62.5), "A10": (125.0, 62.5), "L40S": (362.0, 183.0),
    "L4": (121.0, 60.0), "V100": (None, 15.7), "T4": (None, 8.1), "RTX 4090": (165.0, 82.6),
    "RTX 3090": (71.0, 35.6),
}


def peak_flops(device: torch.device | str, precision: str) -> float | None:
    """Peak FLOP/s of ``device`` for ``precision`` ("bf16" | "fp32"), None where unknown (CPUs,
    cards missing from the table, bf16 on a card without bf16 tensor cores: MFU is then not
    reported)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            peak = PEAK_TFLOPS[key][0 if precision == "bf16" else 1]
            return None if peak is None else peak * 1e12
    return None


@contextlib.contextmanager
def count_flops(sink: dict):
    """Count the FLOPs (matmuls, convolutions, attention) of the enclosed code into
    ``sink["flops"]`` with ``torch.utils.flop_counter``; the numerics are untouched."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        yield
    sink["flops"] = float(counter.get_total_flops())


class Throughput:
    """Step timing of one rank. Each step: ``wait`` seconds blocked on the loader, ``total``
    seconds from the previous step's end to this one's. The first ``skip`` steps after a
    (re)start (compilation, allocator warm-up, the FLOP-counting step) are left out of the
    steady-state figures."""

    def __init__(self, global_batch: int, peak: float | None, skip: int = 2):
        self.global_batch, self.peak, self.skip = global_batch, peak, skip
        self.steps = 0
        self.steady_steps, self.steady_time, self.steady_wait = 0, 0.0, 0.0

    def update(self, wait: float, total: float, flops_per_step: float | None) -> dict:
        self.steps += 1
        total = max(total, 1e-9)
        if self.steps > self.skip:
            self.steady_steps += 1
            self.steady_time += total
            self.steady_wait += wait
        out = {"samples_per_s": self.global_batch / total, "data_wait_frac": wait / total}
        if self.steady_steps:
            out["samples_per_s_steady"] = self.global_batch * self.steady_steps / self.steady_time
            out["data_wait_frac_steady"] = self.steady_wait / self.steady_time
            if flops_per_step:
                achieved = flops_per_step * self.steady_steps / self.steady_time
                out["tflops_per_s"] = achieved / 1e12
                if self.peak:
                    out["mfu"] = achieved / self.peak
        return out

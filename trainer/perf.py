"""Throughput accounting for the training loop: FLOPs per step (counted once), steady-state
samples/s, model FLOPs utilization against the device's peak, and the data-wait fraction.

MFU counts the model's FLOPs: forward + backward, each op once. With gradient checkpointing the
hardware also runs the checkpointed forward again inside the backward; those FLOPs are counted
apart (``recompute_flops``) and give HFU, hardware FLOPs utilization, which is never the MFU.
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
    """Count the FLOPs (matmuls, convolutions, attention) of the enclosed forward + backward with
    ``torch.utils.flop_counter`` into ``sink["flops"]``: the model's FLOPs, each op once, and
    ``sink["recompute_flops"]``: the forward FLOPs that gradient checkpointing runs a second time
    inside the backward (the hardware did ``flops + recompute_flops``). A module's forward that
    starts while autograd is running a backward is such a recomputation. On the counted step
    checkpoints recompute their whole segment (no early stop, which would end a segment's
    forward before its modules return), so the model's FLOPs are exact and the recompute is at
    most the tail of a segment above what early stopping runs. The numerics are untouched."""
    from torch.utils.checkpoint import set_checkpoint_early_stop
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    recompute = {"depth": 0, "start": 0, "flops": 0}

    def enter(module, args) -> None:
        # torch._C._current_graph_task_id() is -1 outside a backward (torch's ModuleTracker reads it too)
        if recompute["depth"] or torch._C._current_graph_task_id() != -1:
            if not recompute["depth"]:
                recompute["start"] = counter.get_total_flops()
            recompute["depth"] += 1

    def leave(module, args, output) -> None:
        if recompute["depth"]:
            recompute["depth"] -= 1
            if not recompute["depth"]:
                recompute["flops"] += counter.get_total_flops() - recompute["start"]

    hooks = [torch.nn.modules.module.register_module_forward_pre_hook(enter),
             torch.nn.modules.module.register_module_forward_hook(leave)]
    try:
        with counter, set_checkpoint_early_stop(False):
            yield
    finally:
        for hook in hooks:
            hook.remove()
    sink["recompute_flops"] = float(recompute["flops"])
    sink["flops"] = float(counter.get_total_flops()) - sink["recompute_flops"]


class Throughput:
    """Step timing of one rank. ``step(wait, total)`` records one step's host-side seconds:
    ``wait`` blocked on the loader, ``total`` from the previous step's end to this one's; it
    never touches the device. ``report(...)`` is called on logging steps right after the step's
    values were read back from the device, which waits for the device to finish: so the seconds
    summed since the last report are the device's too, while the steps in between ran without
    a host sync. The first ``skip`` steps after a (re)start (compilation, allocator warm-up,
    the FLOP-counting step) are left out of the steady-state figures."""

    def __init__(self, global_batch: int, peak: float | None, skip: int = 2):
        self.global_batch, self.peak, self.skip = global_batch, peak, skip
        self.steps = 0
        self.interval_steps, self.interval_time, self.interval_wait = 0, 0.0, 0.0
        self.steady_steps, self.steady_time, self.steady_wait = 0, 0.0, 0.0

    def step(self, wait: float, total: float) -> None:
        self.steps += 1
        self.interval_steps += 1
        self.interval_time += total
        self.interval_wait += wait
        if self.steps > self.skip:
            self.steady_steps += 1
            self.steady_time += total
            self.steady_wait += wait

    def report(self, model_flops: float | None, recompute_flops: float = 0.0) -> dict:
        """Rates since the last report and over the steady state so far. ``model_flops``: one
        step's forward + backward FLOPs (MFU's numerator); ``recompute_flops``: the forward run
        again by gradient checkpointing (hardware FLOPs utilization, HFU, adds them)."""
        elapsed = max(self.interval_time, 1e-9)
        out = {"samples_per_s": self.global_batch * self.interval_steps / elapsed,
               "data_wait_frac": self.interval_wait / elapsed}
        self.interval_steps, self.interval_time, self.interval_wait = 0, 0.0, 0.0
        if self.steady_steps:
            steady_time = max(self.steady_time, 1e-9)
            out["samples_per_s_steady"] = self.global_batch * self.steady_steps / steady_time
            out["data_wait_frac_steady"] = self.steady_wait / steady_time
            if model_flops:
                achieved = model_flops * self.steady_steps / steady_time
                out["tflops_per_s"] = achieved / 1e12
                if self.peak:
                    out["mfu"] = achieved / self.peak
                    if recompute_flops:
                        out["hfu"] = (model_flops + recompute_flops) * self.steady_steps / steady_time / self.peak
        return out

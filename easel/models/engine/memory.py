"""`batch_size: auto`: the largest batch the device's free memory holds, per batch settings.

A batch's peak memory is, to within a few percent, fixed + n x per image (the weights and
workspace, then the latents, activations and decoded pixels of each image; attention at a
given size is quadratic in tokens but linear in the batch). Two probe generations, of 1 and
2 images with the batch's own settings but the fewest denoising steps it runs with (a
step's activations do not depend on how many follow), measure both terms; the prediction
is then measured once more and lowered until it fits `MEMORY_FRACTION` of the memory free
before the probes. Once per process, model and distinct settings (a worker's later tasks
reuse the size). On a device without memory statistics (CPU) `auto` means the default
batch size.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from easel.data.batching import settings_problem
from easel.data.limits import BATCH_SIZE, MAX_BATCH

log = logging.getLogger(__name__)
_SIZES: dict[tuple, int] = {}  # (model digest, device, performance, settings) -> batch size
MEMORY_FRACTION = 0.85  # of the free memory a batch may plan to use: allocator slack


def largest_batch(peak_bytes, budget_bytes: int, limit: int = MAX_BATCH) -> int:
    """The largest n <= `limit` whose peak `peak_bytes(n)` fits `budget_bytes`: predicted
    from n = 1 and 2 as fixed + n x per image, then measured at the prediction and lowered
    in proportion until it fits (a peak may grow faster than linearly). 1 if even that does
    not fit: its own out-of-memory error then fails the batch's rows, naming it."""
    measured: dict[int, float] = {}

    def measure(n: int) -> float:
        if n not in measured:
            measured[n] = peak_bytes(n)
        return measured[n]

    per_image = max(measure(2) - measure(1), 1)
    fixed = measure(1) - per_image
    n = int(min(limit, max(1, (budget_bytes - fixed) // per_image)))
    while n > 1 and (peak := measure(n)) > budget_bytes:
        shrunk = n // 2 if peak == float("inf") else n * (budget_bytes - fixed) / (peak - fixed)
        n = max(1, min(n - 1, int(shrunk)))
    return n


def device_budget(device: str) -> int | None:
    """Bytes a batch may use on `device` (free memory plus what PyTorch holds unused, times
    `MEMORY_FRACTION`), or None where the device keeps no statistics."""
    if not device.startswith("cuda"):
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    unused_by_torch = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(MEMORY_FRACTION * (free + unused_by_torch))


def probe(generate, device: str):
    """`peak_bytes(n)` for `largest_batch`: the peak allocation of `generate(n)` above what
    was allocated before it (unbounded when it runs out of memory)."""

    def peak_bytes(n: int) -> float:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            generate(n)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return float("inf")
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before

    return peak_bytes


def fitted_batch_size(loaded, settings, request, device: str, generate_fn) -> int:
    """The batch size for `settings` on `loaded` (`generate_fn(loaded, settings, requests)`
    makes the probe images: copies of `request` with other seeds)."""
    budget = device_budget(device)
    if budget is None:
        return BATCH_SIZE
    key = (loaded.model.digest, device, loaded.performance, repr(settings))
    if key not in _SIZES:
        _SIZES[key] = _measured_batch_size(loaded, settings, request, device, generate_fn, budget)
    return _SIZES[key]


def _measured_batch_size(loaded, settings, request, device: str, generate_fn, budget) -> int:
    """Probe generations at the fewest steps, then `largest_batch`; 1 if a probe fails."""
    short = probe_settings(loaded, settings)

    def generate(n: int) -> None:
        generate_fn(loaded, short, [replace(request, seed=request.seed + k) for k in range(n)])

    try:
        return largest_batch(probe(generate, device), budget)
    except Exception as error:  # noqa: BLE001 - out of memory at 2, or a bad first request
        log.warning("batch size probe failed (%s): batches of 1", error)
        return 1


def probe_settings(loaded, settings):
    """`settings` with the fewest denoising steps the model runs them with (its scheduler's
    minimum; for img2img at least one step after `strength`)."""
    facts = loaded.facts
    resolved = replace(settings, scheduler=settings.scheduler or facts.default_scheduler)
    for steps in range(2, settings.num_inference_steps):
        short = replace(resolved, num_inference_steps=steps)
        if settings_problem(short, facts, "") is None:
            return replace(settings, num_inference_steps=steps)
    return settings

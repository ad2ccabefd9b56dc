"""Random-number-generator states as plain data (tensors, ints, lists) for weights_only checkpoints.

Lightning does not save them; an exact resume needs the same dropout masks. A checkpoint holds a list
of states indexed by global rank, and each rank restores its own entry.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist


def rng_states(device: torch.device | None = None) -> dict:
    """This process's torch CPU, Python and NumPy generator states, and ``device``'s CUDA one if any."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device is not None and device.type == "cuda" else None,
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
    }


def set_rng_states(states: dict, device: torch.device | None = None) -> None:
    """Restore what ``rng_states`` returned; the CUDA state goes to ``device`` if it is a CUDA device."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
    python = states["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = states["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["kind"], keys, numpy["position"], numpy["has_gauss"], numpy["cached"]))


def gather_rng_states(device: torch.device | None = None) -> list[dict]:
    """Every process's ``rng_states``, indexed by global rank (one entry without torch.distributed).
    A collective: every rank calls it, as Lightning does with ``on_save_checkpoint``."""
    states = rng_states(device)
    if not (dist.is_available() and dist.is_initialized()):
        return [states]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, states)
    return gathered


def restore_rng_states(
    saved: list[dict] | dict, rank: int = 0, world_size: int = 1, device: torch.device | None = None
) -> str | None:
    """Restore this rank's entry of ``saved`` (a single dict, from older checkpoints, is rank 0's).
    With another number of processes, a rank without an entry keeps fresh streams and a line says so."""
    per_rank = [saved] if isinstance(saved, dict) else list(saved)
    if rank < len(per_rank):
        set_rng_states(per_rank[rank], device)
    if len(per_rank) == world_size:
        return None
    return (
        f"the checkpoint holds the random-number-generator states of {len(per_rank)} process(es) and "
        f"this run has {world_size}: a resume with another number of processes does not repeat the "
        "uninterrupted run exactly"
    )

#!/usr/bin/env python
"""Per-GPU training memory of the `official` preset: weights, gradients and AdamW states (no activations).

    python training/estimate_memory.py [--num-gpus 1 2 8] [--lora-rank 16]

Builds `UniPathPipeline.from_preset("official", device="meta")` (nothing is allocated), counts the parameters of each
component and the LoRA parameters on the transformer's attention projections, and prints the memory per GPU of full
training and LoRA under DDP, ZeRO-2 / FSDP SHARD_GRAD_OP and ZeRO-3 / FSDP FULL_SHARD. The byte counts follow
`train_unipath.py`: the MLLM and the VAE are cast to bf16 and never handed to `accelerator.prepare` (so every strategy
replicates them); the prepared module (transformer, DST encoder, prototype adapter) keeps fp32 weights and runs under
bf16 autocast; each trained parameter also has an fp32 gradient and two fp32 AdamW moments.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.io_utils import human_bytes
from unipath_pipeline.lora import DEFAULT_TARGET_MODULES

GIB = 1024**3
FROZEN_BF16_BYTES = 2  # MLLM and VAE weights
WEIGHT_BYTES = 4  # fp32 weights of the prepared module (trained or not)
GRAD_BYTES = 4  # fp32 gradient per trained parameter
ADAMW_BYTES = 8  # fp32 exp_avg + exp_avg_sq per trained parameter
EMA_BYTES = 4  # fp32 shadow copy per trained parameter with --use_ema
PREPARED = ("transformer", "dst_encoder", "prototype_adapter")
FROZEN = ("mllm", "vae")
STRATEGIES = {
    "ddp": "single GPU / DDP (all replicated)",
    "zero2": "ZeRO-2 / FSDP SHARD_GRAD_OP (grads + AdamW sharded)",
    "zero3": "ZeRO-3 / FSDP FULL_SHARD (weights too)",
}


@dataclass(frozen=True)
class TrainingMode:
    """Parameter counts of one way of training, grouped by how they are stored on a GPU."""

    name: str
    frozen_bf16: int  # outside the prepared module: replicated under every strategy
    frozen_fp32: int  # inside the prepared module without gradients (LoRA's base weights)
    trained: int


def count_parameters(module: torch.nn.Module) -> int:
    """The number of parameter elements of `module` (works on the `meta` device)."""
    return sum(p.numel() for p in module.parameters())


def is_lora_target(module_name: str, targets: Sequence[str]) -> bool:
    """peft's rule for a list of target names: the module's full name equals or ends with `.target`."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def count_lora_parameters(transformer: torch.nn.Module, rank: int, targets: Sequence[str] = DEFAULT_TARGET_MODULES) -> tuple[int, int]:
    """`(LoRA parameters, adapted Linear layers)`: `rank * (in + out)` per targeted Linear (A: r x in, B: out x r)."""
    linears = [m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear) and is_lora_target(n, targets)]
    return sum(rank * (m.in_features + m.out_features) for m in linears), len(linears)


def training_modes(counts: Dict[str, int], lora_parameters: int) -> List[TrainingMode]:
    """Full training (everything in the prepared module trained) and LoRA (only the adapters trained)."""
    frozen = sum(counts[c] for c in FROZEN)
    prepared = sum(counts[c] for c in PREPARED)
    return [
        TrainingMode("full", frozen_bf16=frozen, frozen_fp32=0, trained=prepared),
        TrainingMode("lora", frozen_bf16=frozen, frozen_fp32=prepared, trained=lora_parameters),
    ]


def bytes_per_gpu(mode: TrainingMode, strategy: str, num_gpus: int) -> float:
    """Model-state bytes on one of `num_gpus` GPUs under `strategy` (a key of `STRATEGIES`)."""
    weight_shards = num_gpus if strategy == "zero3" else 1
    state_shards = 1 if strategy == "ddp" else num_gpus
    frozen = mode.frozen_bf16 * FROZEN_BF16_BYTES
    prepared_weights = (mode.frozen_fp32 + mode.trained) * WEIGHT_BYTES / weight_shards
    grads_and_optimizer = mode.trained * (GRAD_BYTES + ADAMW_BYTES) / state_shards
    return frozen + prepared_weights + grads_and_optimizer


def gib(nbytes: float) -> str:
    """Bytes as GiB with one decimal, for the table's columns."""
    return f"{nbytes / GIB:.1f}"


def parameter_table(counts: Dict[str, int], lora_parameters: int, lora_layers: int, rank: int) -> List[str]:
    """Rows of parameter counts per component and for the LoRA adapters."""
    lines = [f"{'component':<20} {'parameters':>15}  in training"]
    for name in (*PREPARED, *FROZEN):
        role = "trained (full) / frozen fp32 (LoRA)" if name in PREPARED else "frozen, bf16"
        lines.append(f"{name:<20} {counts[name]:>15,}  {role}")
    lines.append(f"{f'LoRA rank {rank}':<20} {lora_parameters:>15,}  trained (LoRA): {lora_layers} Linear layers "
                 f"({', '.join(DEFAULT_TARGET_MODULES)})")
    return lines


def memory_table(modes: List[TrainingMode], num_gpus: Sequence[int]) -> List[str]:
    """Rows of GiB per GPU: one per (mode, strategy), one column per GPU count."""
    header = f"{'mode':<5} {'strategy':<52}" + "".join(f"{f'{n} GPU' + ('s' if n > 1 else ''):>10}" for n in num_gpus)
    lines = [header]
    for mode in modes:
        for key, label in STRATEGIES.items():
            lines.append(f"{mode.name:<5} {label:<52}" + "".join(f"{gib(bytes_per_gpu(mode, key, n)):>10}" for n in num_gpus))
    return lines


def notes(modes: List[TrainingMode]) -> List[str]:
    """What the table counts and what it leaves out."""
    full = next(m for m in modes if m.name == "full")
    return [
        "GiB per GPU of model states only: weights, gradients, AdamW moments. Activations are NOT included.",
        f"Bytes per parameter: MLLM + VAE {FROZEN_BF16_BYTES} (bf16, replicated under every strategy: "
        f"{human_bytes(full.frozen_bf16 * FROZEN_BF16_BYTES)}); prepared module {WEIGHT_BYTES} (fp32, bf16 autocast); "
        f"each trained parameter + {GRAD_BYTES} (fp32 grad) + {ADAMW_BYTES} (AdamW).",
        f"--use_ema adds {EMA_BYTES} B per trained parameter on every GPU: "
        + ", ".join(f"{m.name} {human_bytes(m.trained * EMA_BYTES)}" for m in modes) + ".",
        "Activations (not measured) grow with batch size and resolution; in full training they include the frozen "
        "MLLM's forward pass, since gradients flow through it to the DST queries. --gradient_checkpointing "
        "recomputes the transformer's blocks only.",
    ]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Per-GPU training memory of the official UniPath preset (no activations).")
    p.add_argument("--num-gpus", type=int, nargs="+", default=[1, 2, 8], help="GPU counts to tabulate")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank on to_q, to_k, to_v, to_out.0")
    args = p.parse_args(argv)
    if any(n < 1 for n in args.num_gpus):
        p.error(f"--num-gpus values must be >= 1 (got {args.num_gpus})")
    if args.lora_rank < 1:
        p.error(f"--lora-rank must be >= 1 (got {args.lora_rank})")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    pipe = UniPathPipeline.from_preset("official", device="meta")
    counts = {name: count_parameters(getattr(pipe, name)) for name in (*PREPARED, *FROZEN)}
    lora_parameters, lora_layers = count_lora_parameters(pipe.transformer, args.lora_rank)
    modes = training_modes(counts, lora_parameters)
    print("\n".join(parameter_table(counts, lora_parameters, lora_layers, args.lora_rank)))
    print()
    print("\n".join(memory_table(modes, args.num_gpus)))
    print()
    print("\n".join(f"- {line}" for line in notes(modes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

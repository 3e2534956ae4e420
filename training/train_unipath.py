#!/usr/bin/env python
"""Train UniPath (full or LoRA) with flow matching, on CPU or GPUs, one or many processes.

    accelerate launch training/train_unipath.py \\
        --pretrained_model_name_or_path preset:tiny --train_data_dir tiles/ --resolution 32 \\
        --train_batch_size 4 --max_train_steps 20 --checkpointing_steps 10 --output_dir runs/tiny

Trained: the transformer, the DST queries (and down-projection), the prototype adapter (or, with `--lora_rank`, LoRA
adapters on the transformer's attention projections only). Frozen and in eval mode: the MLLM and the VAE.
Several processes: `accelerate launch --multi_gpu --num_processes 2 ...` (gloo on CPU). See training/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.model_sources import load_pipeline
from unipath_pipeline.conditioning import STREAMS
from unipath_pipeline.data import DataError, ImageCaptionCollator, StepBatchSampler, add_data_arguments, open_from_args
from unipath_pipeline.dst_encoder import DSTTokens
from unipath_pipeline.io_utils import atomic_write_json
from unipath_pipeline.latents import normalize_latents
from unipath_pipeline.lora import DEFAULT_TARGET_MODULES, save_lora_weights
from unipath_pipeline.training_cache import CachedSamples, collate_cached
from unipath_pipeline.training_utils import (
    TIMESTEP_SAMPLING, ConditionDropout, UniPathTrainable, flow_matching_inputs, sample_sigmas, step_generator,
    unpad_prototype_features,
)

logger = get_logger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
LOSS_LOG = "train_loss.jsonl"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train UniPath (full or LoRA).")
    # Model
    p.add_argument("--pretrained_model_name_or_path", required=True, help="pipeline folder, Hub id, or preset:tiny")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--seed", type=int, default=0)
    # Data (exactly one source)
    add_data_arguments(p)
    p.add_argument("--cache_dir", help="a training cache from training/precompute.py (instead of a data source)")
    p.add_argument("--random_flip", action="store_true")
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    # Optimisation
    p.add_argument("--train_batch_size", type=int, default=4, help="per process")
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_train_steps", type=int, default=1000)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--lr_scheduler", default="constant", choices=["constant", "constant_with_warmup", "linear", "cosine"])
    p.add_argument("--lr_warmup_steps", type=int, default=0)
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: accelerate config")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--use_ema", action="store_true")
    p.add_argument("--ema_decay", type=float, default=0.9999)
    # Flow matching and conditions
    p.add_argument("--weighting_scheme", choices=TIMESTEP_SAMPLING, default="logit_normal", help="timestep sampling")
    p.add_argument("--logit_mean", type=float, default=0.0)
    p.add_argument("--logit_std", type=float, default=1.0)
    p.add_argument("--cond_dropout", type=float, default=0.1, help="probability of dropping all streams at once")
    p.add_argument("--text_dropout", type=float, default=0.05)
    p.add_argument("--dst_dropout", type=float, default=0.05)
    p.add_argument("--prototype_dropout", type=float, default=0.05)
    # LoRA
    p.add_argument("--lora_rank", type=int, default=0, help="> 0: train LoRA adapters only")
    p.add_argument("--lora_alpha", type=float, default=None, help="default: the rank")
    p.add_argument("--lora_target_modules", default=",".join(DEFAULT_TARGET_MODULES))
    # Checkpoints, validation, logging, Hub
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    p.add_argument("--validation_prompts", nargs="*", default=[])
    p.add_argument("--validation_steps", type=int, default=500, help="validate every N steps (and at the end)")
    p.add_argument("--validation_inference_steps", type=int, default=20)
    p.add_argument("--report_to", default="none", help="tensorboard, wandb, all or none")
    p.add_argument("--logging_dir", default="logs")
    p.add_argument("--push_to_hub", action="store_true")
    p.add_argument("--hub_model_id")
    args = p.parse_args(argv)

    sources = [s for s in ("train_data_dir", "dataset_name", "train_shards", "cache_dir") if getattr(args, s)]
    if len(sources) != 1:
        p.error(f"give exactly one data source: --train_data_dir, --dataset_name, --train_shards or --cache_dir (got {sources or 'none'})")
    positive = ("train_batch_size", "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                "validation_steps", "validation_inference_steps")
    for name in positive:
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    if args.resolution is not None and args.resolution < 1:
        p.error(f"--resolution must be a positive multiple of the model's size multiple (got {args.resolution})")
    if not args.learning_rate > 0:
        p.error(f"--learning_rate must be > 0 (got {args.learning_rate})")
    for name in ("cond_dropout", "text_dropout", "dst_dropout", "prototype_dropout"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            p.error(f"--{name} must be in [0, 1] (got {getattr(args, name)})")
    if args.lora_rank < 0:
        p.error(f"--lora_rank must be >= 0 (got {args.lora_rank})")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        p.error(f"--checkpoints_total_limit must be >= 1 (got {args.checkpoints_total_limit})")
    if args.cache_dir and args.random_flip:
        p.error("--random_flip cannot be combined with --cache_dir (latents are cached unflipped)")
    if args.streaming and not args.dataset_name:
        p.error("--streaming applies to --dataset_name only")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest" and not os.path.isdir(args.resume_from_checkpoint):
        p.error(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is neither 'latest' nor a folder")
    return args


# ------------------------------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary folder and renamed, so a kill during a save leaves the previous one intact.
# ------------------------------------------------------------------------------------------------------------------


def list_checkpoints(output_dir: str) -> List[tuple[int, str]]:
    """Complete checkpoints as `(step, path)`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, d)) for d in os.listdir(output_dir) if (m := CHECKPOINT_RE.match(d))]
    return sorted(found)


def save_checkpoint(accelerator: Accelerator, args: argparse.Namespace, step: int) -> None:
    final = os.path.join(args.output_dir, f"checkpoint-{step}")
    tmp = os.path.join(args.output_dir, f".tmp-checkpoint-{step}")
    if accelerator.is_main_process and os.path.isdir(tmp):
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp)
    if accelerator.is_main_process:
        atomic_write_json({"global_step": step}, os.path.join(tmp, "unipath_training_state.json"))
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        if args.checkpoints_total_limit:
            for _, old in list_checkpoints(args.output_dir)[: -args.checkpoints_total_limit]:
                shutil.rmtree(old)
        logger.info(f"Saved {final}")
    accelerator.wait_for_everyone()


def resolve_resume(args: argparse.Namespace) -> Optional[str]:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    checkpoints = list_checkpoints(args.output_dir)
    return checkpoints[-1][1] if checkpoints else None


# ------------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------------


def build_dataloader(args, accelerator: Accelerator, resolution: int, start_micro_step: int):
    """An infinite iterator of this process's micro-batches, positioned at `start_micro_step`."""
    rank, world, batch = accelerator.process_index, accelerator.num_processes, args.train_batch_size
    if args.cache_dir:
        dataset, collate = CachedSamples(args.cache_dir), collate_cached
    else:
        dataset = open_from_args(args, rank, world, skip=start_micro_step * batch)
        collate = ImageCaptionCollator(resolution, args.center_crop)

    if isinstance(dataset, torch.utils.data.IterableDataset):
        if args.dataloader_num_workers:
            logger.warning("Streaming sources are read in the main process (--dataloader_num_workers ignored).")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, collate_fn=collate, drop_last=True)
        return _repeat_forever(loader), None
    sampler = StepBatchSampler(len(dataset), batch, args.seed, rank, world, start_step=start_micro_step)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.dataloader_num_workers)
    return iter(loader), len(dataset)


def _repeat_forever(loader):
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DataError("The streaming source yielded no complete batch.")


class BatchInputs:
    """Turns a micro-batch into model inputs, with all randomness a function of (seed, micro-step, position)."""

    def __init__(self, args, accelerator: Accelerator, pipe: UniPathPipeline, streams: tuple, resolution: int):
        self.args, self.pipe, self.streams = args, pipe, streams
        self.rank, self.batch = accelerator.process_index, args.train_batch_size
        self.global_batch = self.batch * accelerator.num_processes
        self.device = accelerator.device
        self.latent_shape = (pipe.transformer.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor)
        self.dropout = ConditionDropout(args.cond_dropout, args.text_dropout, args.dst_dropout, args.prototype_dropout)

    def __call__(self, batch: Dict[str, Any], micro_step: int) -> Dict[str, Any]:
        args, pipe = self.args, self.pipe
        generator = step_generator(args.seed, micro_step)
        sigmas = sample_sigmas(self.global_batch, args.weighting_scheme, generator, args.logit_mean, args.logit_std)
        noise = torch.randn(self.global_batch, *self.latent_shape, generator=generator)
        posterior_noise = torch.randn(self.global_batch, *self.latent_shape, generator=generator)
        flips = torch.rand(self.global_batch, generator=generator) < 0.5
        drop_all, drop_stream = self.dropout.sample(self.global_batch, generator)
        positions = [self.rank * self.batch + p for p in batch["positions"]]
        index = torch.tensor(positions, dtype=torch.long)

        if "pixel_values" in batch:
            pixels = batch["pixel_values"]
            if args.random_flip:
                pixels = torch.where(flips[index][:, None, None, None], pixels.flip(-1), pixels)
            with torch.no_grad():
                posterior = pipe.vae.encode(pixels.to(self.device, pipe.vae.dtype)).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
            tokens = pipe.dst_encoder.tokenize(pipe.tokenizer, batch["captions"])
            text_embeds = None
            prototype_features = self.retrieve_prototypes(batch, micro_step, positions)
        else:
            mean, std = batch["latent_mean"].float(), batch["latent_std"].float()
            tokens = DSTTokens(batch["text_input_ids"], batch["text_attention_mask"], batch["prefix_input_ids"], batch["prefix_lengths"])
            text_embeds = batch["text_embeds"].to(self.device, pipe.mllm.dtype)
            prototype_features = unpad_prototype_features(batch["prototype_features"], batch["prototype_mask"])

        latents = mean.to(self.device) + std.to(self.device) * posterior_noise[index].to(self.device)
        latents = normalize_latents(pipe.vae, latents, pipe.config.latent_convention)
        noisy, target = flow_matching_inputs(latents, noise[index].to(self.device), sigmas[index])
        return dict(
            noisy_latents=noisy, sigmas=sigmas[index].to(self.device), target=target, tokens=tokens,
            text_embeds=text_embeds, prototype_features=[f.to(self.device) for f in prototype_features],
            drop_all=drop_all[index], drop_stream={s: d[index] for s, d in drop_stream.items()},
        )

    def retrieve_prototypes(self, batch: Dict[str, Any], micro_step: int, positions: List[int]) -> List[torch.Tensor]:
        """Per sample: the bank's retrieval from its caption (as at inference), never the sample's own entry."""
        bank, dim = self.pipe.prototype_bank, self.pipe.prototype_adapter.config.feature_dim
        if "prototype" not in self.streams:
            return [torch.zeros(0, dim) for _ in positions]
        slots = self.pipe.prototype_adapter.config.max_prototypes
        features = []
        for caption, own, position in zip(batch["captions"], batch["bank_ids"], positions):
            chosen = bank.retrieve(
                caption, limit=slots, exclude=[own] if own is not None else [],
                generator=step_generator(self.args.seed, micro_step, salt=1 + position),
            )
            features.append(bank.select([p.id for p in chosen]))
        return features


# ------------------------------------------------------------------------------------------------------------------
# Model set-up, validation, final save
# ------------------------------------------------------------------------------------------------------------------


def add_lora(transformer: torch.nn.Module, args: argparse.Namespace) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=args.lora_rank, lora_alpha=args.lora_alpha or args.lora_rank, init_lora_weights="gaussian",
        target_modules=[m.strip() for m in args.lora_target_modules.split(",") if m.strip()],
    )
    inject_adapter_in_model(config, transformer)


def lora_state_dict(transformer: torch.nn.Module) -> Dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer)


def log_validation(pipe: UniPathPipeline, args, accelerator: Accelerator, step: int) -> None:
    if not args.validation_prompts:
        return
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(args.seed)
    images = pipe(args.validation_prompts, num_inference_steps=args.validation_inference_steps, generator=generator).images
    folder = os.path.join(args.output_dir, "validation", f"step-{step:06d}")
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(images):
        image.save(os.path.join(folder, f"{i:02d}.png"))
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_images("validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(im, caption=c) for im, c in zip(images, args.validation_prompts)]}, step=step)
    logger.info(f"Validation images written to {folder}")


def write_model_card(args, folder: str, lora: bool) -> None:
    """A README.md with Hub metadata and how the weights were trained (full cards: `unipath card`)."""
    from huggingface_hub import ModelCard, ModelCardData

    base = args.pretrained_model_name_or_path
    data = ModelCardData(
        library_name="diffusers", pipeline_tag="text-to-image", license="apache-2.0",
        base_model=None if base.startswith("preset:") or os.path.isdir(base) else base,
        tags=["unipath", "pathology", "histology", "h-and-e", "diffusers", "lora" if lora else "full-finetune"],
    )
    source = args.train_data_dir or args.dataset_name or args.train_shards or args.cache_dir
    usage = (
        f'pipe = UniPathPipeline.from_pretrained("{base}")\npipe.load_lora_weights("{args.hub_model_id or folder}")'
        if lora else f'pipe = UniPathPipeline.from_pretrained("{args.hub_model_id or folder}")'
    )
    text = f"""---
{data.to_yaml()}
---

# UniPath {'LoRA' if lora else 'fine-tune'} of `{base}`

Trained with `training/train_unipath.py` (flow matching) for {args.max_train_steps} steps at {args.resolution} px,
batch {args.train_batch_size} x {args.gradient_accumulation_steps} accumulation per process, learning rate {args.learning_rate},
on `{os.path.basename(os.path.normpath(source))}`. The licence of the weights follows the training data's licence and the base model's.

```python
from unipath_pipeline import UniPathPipeline

{usage}
image = pipe("describe the tissue here").images[0]
```

Research use only; not for diagnosis.
"""
    card = ModelCard(text)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(str(card))


def trained_copy(accelerator: Accelerator, trainable, pipe: UniPathPipeline, args, ema: Optional[EMAModel],
                 trained_names: List[str]) -> Optional[UniPathTrainable]:
    """Full-weight copies of the trained modules (EMA weights when kept) on the main process, else `None`.

    Call it on every process: under FSDP or ZeRO-3 `get_state_dict` gathers the shards. The live model is untouched.
    """
    state = accelerator.get_state_dict(trainable)
    if not accelerator.is_main_process:
        return None
    copy = UniPathTrainable(*(type(m).from_config(m.config) for m in (pipe.transformer, pipe.dst_encoder, pipe.prototype_adapter)))
    if args.lora_rank:
        add_lora(copy.transformer, args)
    copy.load_state_dict(state)
    if ema is not None:
        ema.copy_to([copy.get_parameter(name) for name in trained_names])
    return copy.to(accelerator.device).eval()


def pipeline_with(pipe: UniPathPipeline, model: UniPathTrainable) -> UniPathPipeline:
    """`pipe` with its trained components replaced by `model`'s."""
    return UniPathPipeline(
        **{**pipe.components, "transformer": model.transformer, "dst_encoder": model.dst_encoder,
           "prototype_adapter": model.prototype_adapter},
        latent_convention=pipe.config.latent_convention, integer_timesteps=pipe.config.integer_timesteps,
    )


def save_final(args, pipe: UniPathPipeline, model: UniPathTrainable) -> None:
    if args.lora_rank:
        save_lora_weights(lora_state_dict(model.transformer), args.output_dir, args.lora_rank, args.lora_alpha or args.lora_rank)
    else:
        staging = os.path.join(args.output_dir, ".tmp-pipeline")
        shutil.rmtree(staging, ignore_errors=True)
        pipeline_with(pipe, model).save_pretrained(staging)
        for name in sorted(os.listdir(staging), key=lambda n: n == "model_index.json"):  # the index last
            target = os.path.join(args.output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(os.path.join(staging, name), target)
        os.rmdir(staging)
    write_model_card(args, args.output_dir, lora=bool(args.lora_rank))
    if args.push_to_hub:
        from huggingface_hub import create_repo, upload_folder

        repo_id = create_repo(args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir)), exist_ok=True).repo_id
        upload_folder(repo_id=repo_id, folder_path=args.output_dir, ignore_patterns=["checkpoint-*", ".tmp-*", "logs/*"])


def follow_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, optimizer: torch.optim.Optimizer) -> None:
    """After resuming, set the learning rate from this run's schedule (the checkpoint's optimizer holds the rate of
    the run that wrote it, whose `--max_train_steps` may have been smaller)."""
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ------------------------------------------------------------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)

    pipe = load_pipeline(args.pretrained_model_name_or_path)
    resolution = args.resolution or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    args.resolution = resolution
    if resolution % pipe.spatial_multiple:
        raise DataError(f"--resolution must be a multiple of {pipe.spatial_multiple} for this model (got {resolution}).")
    if pipe.mllm is None or pipe.tokenizer is None:
        raise DataError("Training needs the pipeline's mllm and tokenizer (the DST queries are read through the MLLM).")
    streams = STREAMS
    if pipe.prototype_bank is None and not args.cache_dir:
        logger.warning("No prototype bank in this pipeline: the prototype stream is dropped from training.")
        streams = ("text", "dst")
        pipe.prototype_adapter.requires_grad_(False)  # unused: keep it out of the optimizer and of DDP

    resume = resolve_resume(args)
    global_step = int(CHECKPOINT_RE.match(os.path.basename(os.path.normpath(resume))).group(1)) if resume else 0
    batches, num_samples = build_dataloader(args, accelerator, resolution, global_step * args.gradient_accumulation_steps)

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    pipe.mllm.requires_grad_(False).eval().to(accelerator.device, weight_dtype)
    pipe.vae.requires_grad_(False).eval().to(accelerator.device, weight_dtype)
    trainable = UniPathTrainable(pipe.transformer, pipe.dst_encoder, pipe.prototype_adapter).to(accelerator.device)
    if args.lora_rank:
        trainable.requires_grad_(False)
        add_lora(trainable.transformer, args)  # only the LoRA parameters require gradients
        trainable.transformer.requires_grad_(False)
        for name, parameter in trainable.transformer.named_parameters():
            parameter.requires_grad_("lora_" in name)
    if args.gradient_checkpointing:
        trainable.transformer.enable_gradient_checkpointing()
    trainable.train()
    trained_names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    params = [trainable.get_parameter(n) for n in trained_names]
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if args.use_ema and sharded:
        raise DataError("--use_ema is not supported with FSDP or DeepSpeed yet (the EMA would see parameter shards).")
    ema = EMAModel(params, decay=args.ema_decay) if args.use_ema else None
    if accelerator.state.deepspeed_plugin is not None:  # no DataLoader goes through prepare(), so say it here
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    trainable, optimizer, lr_scheduler = accelerator.prepare(trainable, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    if resume:
        accelerator.load_state(resume)
        follow_schedule(lr_scheduler.scheduler, optimizer.optimizer)
        logger.info(f"Resumed from {resume} at step {global_step}")
    if accelerator.is_main_process:
        accelerator.init_trackers("unipath", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    inputs_for = BatchInputs(args, accelerator, pipe, streams, resolution)
    logger.info(
        f"Training {sum(p.numel() for p in params):,} parameters ({'LoRA' if args.lora_rank else 'full'}) on "
        f"{num_samples if num_samples is not None else 'a stream of'} samples, {accelerator.num_processes} process(es), "
        f"global batch {args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps}"
    )
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    micro_step, skipped, losses = global_step * args.gradient_accumulation_steps, 0, []
    step_started = time.perf_counter()
    while global_step < args.max_train_steps:
        batch = next(batches)
        skipped += batch["skipped"]
        with accelerator.accumulate(trainable):
            inputs = inputs_for(batch, micro_step)
            with accelerator.autocast():
                prediction = trainable(
                    pipe.mllm, inputs["noisy_latents"], inputs["sigmas"], inputs["tokens"], inputs["prototype_features"],
                    inputs["drop_all"], inputs["drop_stream"], streams, inputs["text_embeds"],
                )
            loss = F.mse_loss(prediction.float(), inputs["target"].float())
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        micro_step += 1
        losses.append(accelerator.gather(loss.detach()).mean().item())
        if not accelerator.sync_gradients:
            continue

        global_step += 1
        if ema is not None:
            ema.step(params)
        step_loss, losses = sum(losses) / len(losses), []
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        accelerator.log({"train_loss": step_loss, "lr": lr_scheduler.get_last_lr()[0], "skipped_images": skipped}, step=global_step)
        if accelerator.is_main_process:
            seconds, step_started = time.perf_counter() - step_started, time.perf_counter()
            with open(os.path.join(args.output_dir, LOSS_LOG), "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": global_step, "loss": step_loss, "seconds": round(seconds, 6)}) + "\n")
        if global_step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args, global_step)
        if args.validation_prompts and (global_step % args.validation_steps == 0 or global_step == args.max_train_steps):
            model = trained_copy(accelerator, trainable, pipe, args, ema, trained_names)
            if model is not None:
                log_validation(pipeline_with(pipe, model), args, accelerator, global_step)
            del model

    progress.close()
    if skipped:
        logger.warning(f"Skipped {skipped} unreadable image(s) during training.")
    accelerator.wait_for_everyone()
    model = trained_copy(accelerator, trainable, pipe, args, ema, trained_names)
    if model is not None:
        save_final(args, pipe, model)
    accelerator.end_training()


if __name__ == "__main__":
    try:
        main()
    except DataError as error:
        print(f"train_unipath.py: error: {error}", file=sys.stderr)
        sys.exit(2)

"""The `unipath` command line: `unipath generate ...`, `unipath info ...`, `unipath convert ...`, `unipath card ...`,
`unipath push ...`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DTYPES = ("float32", "bfloat16", "float16")


def _int_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,5; got {text!r}") from None


def _weights(text: str) -> Dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STREAM=WEIGHT pairs such as dst=2,prototype=1; got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {value}")
    return value


def output_paths(out: str, count: int) -> List[str]:
    """`out` itself for one image with an image suffix; numbered files beside it or inside folder `out` otherwise."""
    stem, suffix = os.path.splitext(out)
    if suffix.lower() in IMAGE_SUFFIXES:
        return [out] if count == 1 else [f"{stem}-{i:03d}{suffix}" for i in range(count)]
    return [os.path.join(out, f"unipath-{i:03d}.png") for i in range(count)]


def save_image_atomically(image, path: str) -> None:
    """Writes a PIL image through a temporary file, so an interrupted run never leaves a half-written image."""
    from .io_utils import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format=image.format or os.path.splitext(path)[1].lstrip(".").upper().replace("JPG", "JPEG"))


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .encoders import load_encoder
    from .model_sources import load_pipeline
    from .prototype_bank import PrototypeBank

    reference = Image.open(args.prototype_image).convert("RGB") if args.prototype_image else None
    pipe = load_pipeline(args.model, args.device, args.dtype)
    if args.bank:
        pipe.register_modules(prototype_bank=PrototypeBank.from_pretrained(args.bank))
    if args.encoder:
        pipe.prototype_encoder = load_encoder(args.encoder, args.device)
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    out = pipe(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        stream_guidance=args.stream_guidance,
        streams=tuple(args.streams.split(",")),
        prototype_ids=args.prototype_ids,
        prototype_keywords=[k for k in args.prototype_keywords.split(",") if k.strip()] if args.prototype_keywords else None,
        prototype_image=reference,
        retrieve=args.retrieve,
        append_attributes=args.append_attributes,
        num_images_per_prompt=args.num_images,
        generator=generator,
    )
    attributes = out.attributes[0]
    print("attributes: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in attributes.items() if isinstance(v, list) and v))
    for prototype in out.prototypes[0]:
        print(f"prototype {prototype.id}: {'; '.join(prototype.reasons)}")
    for image, path in zip(out.images, output_paths(args.out, len(out.images))):
        save_image_atomically(image, path)
        print(f"{path}  ({image.width}x{image.height})")
    return 0


def describe_pipeline(pipe) -> str:
    """A human-readable table of components, parameters, bf16 memory and streams."""
    import torch

    from .io_utils import human_bytes

    lines = [f"{'component':<18} {'class':<38} {'parameters':>14} {'bf16 memory':>12}"]
    total = 0
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            params = sum(p.numel() for p in component.parameters())
            total += params
            lines.append(f"{name:<18} {type(component).__name__:<38} {params:>14,} {human_bytes(2 * params):>12}")
        elif component is None:
            lines.append(f"{name:<18} {'-':<38} {'(not loaded)':>14}")
        else:
            detail = f"{len(component)} entries" if hasattr(component, "entries") else ""
            lines.append(f"{name:<18} {type(component).__name__:<38} {detail:>14}")
    lines.append(f"{'total':<18} {'':<38} {total:>14,} {human_bytes(2 * total):>12}")
    dst, adapter = pipe.dst_encoder.config, pipe.prototype_adapter.config
    native = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    lines += [
        "",
        "streams (condition tokens, width "
        f"{pipe.transformer.config.caption_channels}):",
        f"  text       up to {dst.max_text_length} prompt tokens from the MLLM's embedding table",
        f"  dst        {dst.num_queries} diagnostic semantic tokens (one MLLM forward)",
        f"  prototype  up to {adapter.max_prototypes} prototypes, features {adapter.feature_dim}-d"
        + (f", bank of {len(pipe.prototype_bank)} entries" if pipe.prototype_bank is not None else ", no bank"),
        f"native size {native}x{native} px; sizes must be multiples of {pipe.spatial_multiple}; "
        f"latent convention {pipe.config.latent_convention!r}",
    ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from .model_sources import load_pipeline
    from .pipeline_unipath import UniPathPipeline

    if args.preset:
        pipe = UniPathPipeline.from_preset(args.preset, device="meta" if args.preset == "official" else "cpu")
    else:
        pipe = load_pipeline(args.model)
    print(describe_pipeline(pipe))
    return 0


def cmd_bank_build(args: argparse.Namespace) -> int:
    from .bank_builder import BankBuildConfig, build_bank
    from .encoders import load_encoder

    config = BankBuildConfig(
        size=args.size, min_tissue=args.min_tissue, min_blur=args.min_blur, dedup_distance=args.dedup_distance,
        shard_size=args.shard_size, batch_size=args.batch_size, min_keyword_count=args.min_keyword_count,
        max_vocabulary=args.max_vocabulary, seed=args.seed,
    )
    encoder = load_encoder(args.encoder, args.device)
    extractor = load_encoder(args.feature_extractor, args.device) if args.feature_extractor else None
    bank = build_bank(args.images, args.captions, args.out, encoder, extractor, config, work_dir=args.work_dir)
    print(f"{args.out}: {bank}")
    with open(os.path.join(args.out, "build_report.json"), encoding="utf-8") as f:
        print(f.read().strip())
    return 0


def cmd_bank_retrieve(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from .encoders import load_encoder
    from .prototype_bank import PrototypeBank

    bank = PrototypeBank.from_pretrained(args.bank)
    encoder = load_encoder(args.encoder) if args.encoder else None
    chosen = bank.retrieve(
        args.prompt, ids=args.ids or (), keywords=[k for k in (args.keywords or "").split(",") if k.strip()],
        reference_image=Image.open(args.image).convert("RGB") if args.image else None, encoder=encoder,
        limit=args.limit, generator=torch.Generator().manual_seed(args.seed),
    )
    for item in chosen:
        entry = bank.entries[item.id]
        print(f"{item.id:>6}  {'; '.join(item.reasons)}\n        {entry.description[:100]}  [{', '.join(entry.keywords[:6])}]")
    if not chosen:
        print("no prototype chosen")
    return 0


def cmd_bank_info(args: argparse.Namespace) -> int:
    from .prototype_bank import PrototypeBank

    bank = PrototypeBank.from_pretrained(args.bank)
    print(bank)
    counts = sorted(bank.keyword_index.items(), key=lambda kv: -len(kv[1]))
    print("most common keywords: " + ", ".join(f"{k} ({len(v)})" for k, v in counts[:15]))
    return 0


def cmd_terms_normalize(args: argparse.Namespace) -> int:
    from .lexicon import Lexicon

    lexicon = Lexicon.default()
    matches = lexicon.find(args.text)
    print(f"{lexicon.name} {lexicon.version}: {len(matches)} concept mention(s)")
    for match in matches:
        print(f"  {match.text!r:32} -> {match.concept.name} [{match.concept.category}] ({match.concept.id})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.images import ImageSet
    from .evaluation.suite import EvaluationConfig, evaluate, generate_set
    from .prototype_bank import PrototypeBank

    if bool(args.generated) == bool(args.model):
        raise ValueError("Give --generated DIR, or --model M with --prompts FILE to generate first (not both).")
    if args.model and not args.prompts:
        raise ValueError("--model needs --prompts FILE (jsonl with prompt, optional label, group, prototype_ids).")
    config = EvaluationConfig(
        extractors=tuple(args.extractors.split(",")), batch_size=args.batch_size, seed=args.seed,
        alignment_encoder=args.alignment_encoder, device=args.device, cache_dir=args.cache_dir,
        calibration_noise=tuple(float(x) for x in args.calibration.split(",")) if args.calibration else (),
    )
    real = ImageSet(args.real, args.resize_to, name="real")
    training = ImageSet(args.training, args.resize_to, name="training") if args.training else None
    if args.model:
        generated = generate_set(args.model, args.prompts, os.path.join(args.out, "generated"), args.images_per_prompt,
                                 args.steps, args.guidance, args.seed, args.resize_to, args.device)
        generated.resize_to = args.resize_to
    else:
        generated = ImageSet(args.generated, args.resize_to, name="generated")
    bank = PrototypeBank.from_pretrained(args.bank) if args.bank else None
    results = evaluate(real, generated, args.out, config, training, bank)
    for key, value in results["summary"].items():
        print(f"{key:<48} {value:10.4f}")
    print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint_io import DEFAULT_MAX_SHARD_SIZE
    from .io_utils import human_bytes

    only = {"official": ("vae", "no_vae", "tokenizer", "trigger_token", "shift", "attention_heads", "max_text_length",
                         "max_prototypes"),
            "pixcell": ("base", "caption_channels", "out_channels", "seed")}
    for source, options in only.items():
        given = [o for o in options if getattr(args, o) not in (None, False)]
        if source != args.source and given:
            flags = ", ".join("--" + o.replace("_", "-") for o in given)
            raise ValueError(f"{flags} apply only to --from {source}.")
    common = dict(sample_size=args.sample_size, interpolation_scale=args.interpolation_scale, dtype=args.dtype,
                  max_shard_size=args.max_shard_size or DEFAULT_MAX_SHARD_SIZE, overwrite=args.overwrite,
                  progress=args.progress)
    if args.source == "official":
        from .convert_official import convert_official

        report = convert_official(
            args.checkpoint, args.out, vae=args.vae, no_vae=args.no_vae, tokenizer=args.tokenizer,
            trigger_token=args.trigger_token, shift=1.0 if args.shift is None else args.shift,
            attention_heads=args.attention_heads, max_text_length=args.max_text_length or 128,
            max_prototypes=args.max_prototypes or 16, **common,
        )
        for component, files in report.files.items():
            print(f"{component:<18} {report.tensors[component]:>6} tensors  -> {', '.join(files)}")
        print(f"{report.out}: {human_bytes(report.total_bytes)} converted; at most {human_bytes(report.peak_buffered_bytes)} "
              "of tensors held at once")
    else:
        from .convert_pixcell import convert_pixcell

        report = convert_pixcell(args.checkpoint, args.out, base=args.base, caption_channels=args.caption_channels,
                                 out_channels=args.out_channels, seed=args.seed or 0, **common)
        print(f"{report.out}: {len(report.copied)} tensors copied, {len(report.adapted)} adapted, "
              f"{len(report.reinitialised)} re-initialised, {len(report.dropped)} dropped")
        for key, why in {**report.adapted, **report.reinitialised}.items():
            print(f"  {key}: {why}")
    for note in report.notes if hasattr(report, "notes") else []:
        print(f"note: {note}")
    return 0


def _model_folder(model: str) -> str:
    """`default` -> the bundled default model's folder (a clear error while its weights are not built)."""
    if model == "default":
        from . import default_model

        if not default_model.default_model_available():
            raise FileNotFoundError("The bundled default model has not been built into this installation yet: run "
                                    "training/recipes/unipath_tiny.sh (its weights go to unipath_pipeline/default_model).")
        return default_model.DEFAULT_MODEL_DIR
    return model


def cmd_card(args: argparse.Namespace) -> int:
    from .model_card import write_card

    folder = _model_folder(args.model) if args.model else args.bank
    path = write_card(
        folder, out=args.out, overwrite=args.overwrite, fill=args.fill, kind="bank" if args.bank else None, evaluation=args.eval,
        repo_id=args.repo_id, base_model=args.base_model, license=args.license, mllm=args.mllm,
        datasets=args.dataset or (),
    )
    print(f"wrote {path}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub_publish import push_to_hub

    folder = _model_folder(args.model) if args.model else args.bank
    plan = push_to_hub(
        folder, args.repo_id, repo_type="dataset" if args.bank else "model", private=args.private, gated=args.gated,
        token=args.token, revision=args.revision, commit_message=args.commit_message, dry_run=args.dry_run,
        base_model=args.base_model, license=args.license, mllm=args.mllm,
    )
    print(plan.describe())
    print("dry run: nothing was uploaded" if args.dry_run else f"uploaded to https://huggingface.co/"
          f"{'datasets/' if args.bank else ''}{args.repo_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unipath", description="UniPath pathology image generation.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("--model", default=None, help="a saved pipeline folder, a Hub repo id, preset:tiny (random weights); default: the bundled default model")
    gen.add_argument("--prompt", required=True, help="the description of the tissue")
    gen.add_argument("--prototype-ids", type=_int_list, default=None, help="prototype bank ids, e.g. 1,2")
    gen.add_argument("--prototype-keywords", default=None, help="bank keywords, e.g. necrosis,glands")
    gen.add_argument("--prototype-image", default=None, help="a reference image: its nearest bank entries")
    gen.add_argument("--retrieve", action=argparse.BooleanOptionalAction, default=None,
                     help="retrieve prototypes from the prompt (default: when nothing explicit is chosen)")
    gen.add_argument("--bank", default=None, help="use this prototype bank folder instead of the model's")
    gen.add_argument("--encoder", default=None, help="the bank's retrieval encoder spec (default: offline default)")
    gen.add_argument("--append-attributes", action="store_true", help="append the attribute bundle to the text stream")
    gen.add_argument("--streams", default="text,dst,prototype", help="condition streams to use (default: all)")
    gen.add_argument("--steps", type=_positive, default=30, help="denoising steps (default 30)")
    gen.add_argument("--guidance", type=float, default=3.0, help="joint guidance scale >= 0 (default 3.0)")
    gen.add_argument("--stream-guidance", type=_weights, default=None, help="per-stream weights, e.g. dst=2")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None, help="default: the model's native size")
    gen.add_argument("--width", type=int, default=None, help="default: the model's native size")
    gen.add_argument("--num-images", type=_positive, default=1)
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--dtype", choices=DTYPES, default="float32")
    gen.add_argument("--out", required=True, help="an image file (.png/.jpg/.webp) or a folder")
    gen.set_defaults(func=cmd_generate)

    info = sub.add_parser("info", help="list a pipeline's components, parameter counts and streams")
    what = info.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a saved pipeline folder, a Hub repo id, or preset:NAME")
    what.add_argument("--preset", help="a preset name (official is built on the meta device)")
    info.set_defaults(func=cmd_info)

    bank = sub.add_parser("bank", help="build and query prototype banks").add_subparsers(dest="bank_command", required=True)
    build = bank.add_parser("build", help="build a prototype bank from tiles and captions")
    build.add_argument("--images", required=True, help="folder of tiles")
    build.add_argument("--captions", required=True, help=".jsonl or .csv with file_name and text")
    build.add_argument("--out", required=True, help="the bank folder to write")
    build.add_argument("--size", type=_positive, default=None, help="entries to keep by K-means sampling (default: all)")
    build.add_argument("--encoder", default="default", help="retrieval encoder: default, clip:ID, open_clip:NAME[:W], timm:NAME")
    build.add_argument("--feature-extractor", default=None, help="prototype-feature encoder (default: the encoder's images)")
    build.add_argument("--min-tissue", type=float, default=0.5)
    build.add_argument("--min-blur", type=float, default=20.0)
    build.add_argument("--dedup-distance", type=int, default=4, help="perceptual-hash bits (-1: no de-duplication)")
    build.add_argument("--shard-size", type=_positive, default=1024)
    build.add_argument("--batch-size", type=_positive, default=32)
    build.add_argument("--min-keyword-count", type=_positive, default=2)
    build.add_argument("--max-vocabulary", type=_positive, default=None)
    build.add_argument("--work-dir", default=None, help="pass-1 shards (default OUT.work); keep it to resume")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--device", default="cpu")
    build.set_defaults(func=cmd_bank_build)
    retrieve = bank.add_parser("retrieve", help="show which prototypes a prompt, keywords or an image choose")
    retrieve.add_argument("--bank", required=True)
    retrieve.add_argument("--prompt", default=None)
    retrieve.add_argument("--ids", type=_int_list, default=None)
    retrieve.add_argument("--keywords", default=None, help="comma-separated bank keywords")
    retrieve.add_argument("--image", default=None, help="a reference image")
    retrieve.add_argument("--encoder", default=None, help="the bank's encoder spec (default: the offline default)")
    retrieve.add_argument("--limit", type=_positive, default=16)
    retrieve.add_argument("--seed", type=int, default=0)
    retrieve.set_defaults(func=cmd_bank_retrieve)
    bank_info = bank.add_parser("info", help="summarise a bank")
    bank_info.add_argument("--bank", required=True)
    bank_info.set_defaults(func=cmd_bank_info)

    ev = sub.add_parser("evaluate", help="the four-tier evaluation of generated against real images")
    ev.add_argument("--real", required=True, help="folder of real images (metadata.jsonl/csv optional: text, label)")
    ev.add_argument("--generated", default=None, help="folder of generated images (metadata: text, label, group, prototype_ids)")
    ev.add_argument("--model", default=None, help="generate first with this model (folder, Hub id, preset:NAME)")
    ev.add_argument("--prompts", default=None, help="jsonl: prompt, optional label, group, prototype_ids")
    ev.add_argument("--images-per-prompt", type=_positive, default=1)
    ev.add_argument("--steps", type=_positive, default=30)
    ev.add_argument("--guidance", type=float, default=3.0)
    ev.add_argument("--out", required=True, help="report folder (report.json, report.html, report.md, plots, grids)")
    ev.add_argument("--extractors", default="inception,capricorn-densenet121",
                    help="feature extractors: inception, capricorn-densenet121, clip:ID, open_clip:NAME[:W], timm:NAME[:CKPT]")
    ev.add_argument("--training", default=None, help="training images, for memorisation (default: the real set)")
    ev.add_argument("--bank", default=None, help="prototype bank, for prototype adherence")
    ev.add_argument("--alignment-encoder", default=None, help="a joint text-image encoder for tier 2 (else a linear probe)")
    ev.add_argument("--resize-to", type=_positive, default=None, help="resize protocol for sets with mixed sizes")
    ev.add_argument("--calibration", default=None, help="noise levels for a FID-vs-noise calibration curve, e.g. 8,16,32")
    ev.add_argument("--batch-size", type=_positive, default=32)
    ev.add_argument("--cache-dir", default=None, help="reference feature cache (default: ~/.cache/unipath/eval)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="cpu")
    ev.set_defaults(func=cmd_evaluate)

    conv = sub.add_parser("convert", help="convert the official UniPath checkpoint, or initialise from PixCell-256")
    conv.add_argument("--from", dest="source", required=True, choices=["official", "pixcell"],
                      help="official: the authors' transformers checkpoint -> a pipeline; pixcell: PixCell-256 -> a transformer (or, with --base, a pipeline)")
    conv.add_argument("--checkpoint", required=True, help="the source folder (or its Hub id)")
    conv.add_argument("--out", required=True, help="the folder to write (must not exist or be empty)")
    conv.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    conv.add_argument("--dtype", choices=("keep",) + DTYPES, default="keep", help="dtype of the written weights")
    conv.add_argument("--max-shard-size", default=None, help="largest output shard, e.g. 2GB (bounds memory; default 2GB)")
    conv.add_argument("--sample-size", type=_positive, default=None, help="the DiT's latent size (default 48: 384 px)")
    conv.add_argument("--interpolation-scale", type=float, default=None, help="the DiT's position-table scale (default 0.5)")
    conv.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    official = conv.add_argument_group("--from official")
    official.add_argument("--vae", default=None, help="the SD3.5 16-channel VAE: a VAE folder, a pipeline folder with vae/, or a Hub id")
    official.add_argument("--no-vae", action="store_true", help="write the pipeline without a VAE (pass vae= when loading)")
    official.add_argument("--tokenizer", default=None, help="tokenizer folder or Hub id, when the checkpoint has none")
    official.add_argument("--trigger-token", default=None, help="the DST trigger token (the official one is unknown: none)")
    official.add_argument("--shift", type=float, default=None, help="flow-matching shift of the sampler (unknown upstream; default 1.0)")
    official.add_argument("--attention-heads", type=_positive, default=None, help="the DiT's head count (default: width / 72)")
    official.add_argument("--max-text-length", type=_positive, default=None, help="raw-text tokens (default 128)")
    official.add_argument("--max-prototypes", type=_positive, default=None, help="prototype slots (default 16)")
    pixcell = conv.add_argument_group("--from pixcell")
    pixcell.add_argument("--base", default=None, help="a UniPath pipeline folder: its transformer is the target, and the result a pipeline")
    pixcell.add_argument("--caption-channels", type=_positive, default=None, help="condition width (default 3584, the MLLM's)")
    pixcell.add_argument("--out-channels", type=_positive, default=None, help="default: the latent channels")
    pixcell.add_argument("--seed", type=int, default=None, help="seed of re-initialised tensors (default 0)")
    conv.set_defaults(func=cmd_convert)

    card = sub.add_parser("card", help="write a Hub README.md for a pipeline, LoRA or prototype-bank folder")
    card_what = card.add_mutually_exclusive_group(required=True)
    card_what.add_argument("--model", help="a pipeline or LoRA folder, or 'default' (the bundled default model)")
    card_what.add_argument("--bank", help="a prototype bank folder (a dataset card)")
    card.add_argument("--eval", default=None, help="report.json of `unipath evaluate`, for the evaluation table")
    card.add_argument("--out", default=None, help="the file to write (default: README.md in the folder)")
    card.add_argument("--repo-id", default=None, help="the Hub repo the card is for (its usage code loads it; default: the folder)")
    card.add_argument("--base-model", default=None, help="Hub id of the base model; for a LoRA the pipeline it was trained on (or preset:NAME)")
    card.add_argument("--license", default=None, help="Hub licence id (default: the most restrictive component licence)")
    card.add_argument("--mllm", default=None, help="for pipelines saved without their MLLM: a Hub id or PyPI package it comes from")
    card.add_argument("--dataset", action="append", default=None, help="a Hub dataset id the weights were trained on (repeatable)")
    card.add_argument("--overwrite", action="store_true", help="replace a README.md that `unipath card` did not write")
    card.add_argument("--fill", action="store_true",
                      help="keep the folder's hand-written README.md and only fill its EVALUATION_TABLE line (with --eval)")
    card.set_defaults(func=cmd_card)

    push = sub.add_parser("push", help="upload a pipeline, LoRA or prototype-bank folder to the Hugging Face Hub")
    push_what = push.add_mutually_exclusive_group(required=True)
    push_what.add_argument("--model", help="a pipeline or LoRA folder, or 'default' (a model repo)")
    push_what.add_argument("--bank", help="a prototype bank folder (a dataset repo)")
    push.add_argument("--repo-id", required=True, help="OWNER/NAME")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--gated", choices=["auto", "manual"], default=None, help="gate access to the repo")
    push.add_argument("--token", default=None, help="a Hub token (default: the saved login)")
    push.add_argument("--revision", default=None, help="a branch to upload to (created if needed)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--dry-run", action="store_true", help="print the upload plan; upload nothing")
    push.add_argument("--base-model", default=None, help="for the card when README.md is missing (see `unipath card`)")
    push.add_argument("--license", default=None, help="for the card when README.md is missing")
    push.add_argument("--mllm", default=None, help="for the card when README.md is missing")
    push.set_defaults(func=cmd_push)

    terms = sub.add_parser("terms", help="pathology terminology").add_subparsers(dest="terms_command", required=True)
    normalize = terms.add_parser("normalize", help="print the lexicon concepts found in a text")
    normalize.add_argument("text")
    normalize.set_defaults(func=cmd_terms_normalize)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .encoders import EncoderUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, EncoderUnavailable) as error:
        print(f"unipath {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

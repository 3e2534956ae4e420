"""The four-tier evaluation, from image folders to `report.json` + `report.html` (see DESIGN section 4).

1. Pixel fidelity: FID, KID, precision/recall per feature extractor (Inception; pathology DenseNet "Patho-FID";
   any UNI/CONCH-style encoder you have), memorisation against the training (or real) set.
2. Semantic consistency: text-image alignment and prompt retrieval among distractors, with a joint text-image
   encoder when given (`clip:...`, CONCH), else with a linear alignment probe fitted on the real set's image-caption
   pairs (image features -> MiniLM text features) and reported beside the same probe on held-out real images.
3. Diagnostic utility: a linear probe trained on generated features and tested on real ones, and the reverse.
4. Fine-grained controllability: a probe trained on real images, accuracy on generated images as % of its accuracy
   on held-out real images; paraphrase robustness; prototype adherence.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from . import metrics
from .extractors import DEFAULT_EXTRACTORS, FeatureExtractor, load_extractor
from .images import PROTOCOL, ImageSet
from .report import ImageGrid, write_report

logger = logging.getLogger(__name__)


@dataclass
class EvaluationConfig:
    """Settings of `evaluate`."""

    extractors: Sequence[str] = DEFAULT_EXTRACTORS
    batch_size: int = 32
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    distractors: int = 9
    seed: int = 0
    cache_dir: Optional[str] = None  # reference features by content hash; default: $XDG_CACHE_HOME/unipath/eval
    alignment_encoder: Optional[str] = None  # a joint text-image encoder spec (clip:..., open_clip:...)
    calibration_noise: Sequence[float] = ()  # e.g. (8, 16, 32): FID of real against real plus Gaussian noise
    grids: int = 6
    device: str = "cpu"
    notes: List[str] = field(default_factory=list)


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "unipath", "eval")


def extract(images: ImageSet, extractor: FeatureExtractor, batch_size: int, noise_std: float = 0.0, seed: int = 0) -> np.ndarray:
    """Features of a whole set, streamed in batches (optionally with Gaussian pixel noise, for calibration)."""
    rng = np.random.default_rng(seed)
    out = []
    for _, batch in tqdm(images.batches(batch_size), total=-(-len(images) // batch_size), desc=f"{extractor.name}: {images.name}", leave=False):
        if noise_std:
            batch = np.clip(batch + rng.normal(0, noise_std, batch.shape), 0, 255).astype(np.uint8)
        out.append(np.asarray(extractor(batch), dtype=np.float32))
    return np.concatenate(out)


def cached_features(images: ImageSet, extractor: FeatureExtractor, config: EvaluationConfig) -> np.ndarray:
    """`extract`, cached by the set's content hash and the extractor name (reference sets are reused across runs)."""
    from ..io_utils import atomic_save_safetensors, load_safetensors_with_metadata
    import torch

    folder = config.cache_dir or default_cache_dir()
    path = os.path.join(folder, f"{images.content_hash()[:24]}-{extractor.name.replace('/', '_').replace(':', '_')}.safetensors")
    if os.path.isfile(path):
        return load_safetensors_with_metadata(path)[0]["features"].numpy()
    features = extract(images, extractor, config.batch_size)
    atomic_save_safetensors({"features": torch.from_numpy(features)}, path, {"extractor": extractor.name, "count": len(features)})
    return features


def _split(n: int, seed: int, labels: Optional[List[str]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Halves of `range(n)` (per label when given, so each half holds every class with >= 2 images)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(np.array(labels) == c) for c in sorted(set(labels))]
    first, second = [], []
    for group in groups:
        group = rng.permutation(group)
        first.append(group[: len(group) // 2])
        second.append(group[len(group) // 2 :])
    return np.concatenate(first), np.concatenate(second)


def pixel_fidelity(real: Dict[str, np.ndarray], generated: Dict[str, np.ndarray], reference: Optional[Dict[str, np.ndarray]], config: EvaluationConfig) -> dict:
    tier: Dict[str, dict] = {}
    for name in real:
        kid_mean, kid_std = metrics.kid(real[name], generated[name], config.kid_subsets, config.kid_subset_size, seed=config.seed)
        precision, recall = metrics.precision_recall(real[name], generated[name], k=config.pr_k)
        tier[name] = {"fid": metrics.fid_from_features(real[name], generated[name]), "kid_mean": kid_mean, "kid_std": kid_std,
                      "precision": precision, "recall": recall}
    first = next(iter(real))
    against = reference[first] if reference is not None else real[first]
    memo = metrics.memorisation(generated[first], against)
    memo.pop("nearest_indices", None)
    tier["memorisation"] = {**memo, "against": "training set" if reference is not None else "real set", "features": first}
    return tier


def _ridge(x: np.ndarray, y: np.ndarray, l2: float = 1.0):
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    weights = np.linalg.solve(z.T @ z + l2 * len(z) * np.eye(z.shape[1]), z.T @ y)
    return lambda q: ((q - mean) / std) @ weights


def _alignment_scores(image_embeds: np.ndarray, prompts: List[str], text: Dict[str, np.ndarray], distractors: int, seed: int) -> dict:
    image_embeds = image_embeds / (np.linalg.norm(image_embeds, axis=1, keepdims=True) + 1e-8)
    own = np.array([text[p] for p in prompts])
    unique = sorted(text)
    rng = random.Random(seed)
    hits = []
    for embed, prompt in zip(image_embeds, prompts):
        others = [p for p in unique if p != prompt]
        pool = [prompt] + rng.sample(others, min(distractors, len(others)))
        scores = [float(embed @ text[p]) for p in pool]
        hits.append(int(np.argmax(scores) == 0))
    return {"alignment": float(np.mean(np.sum(image_embeds * own, axis=1))), "retrieval_top1": float(np.mean(hits)),
            "candidates": min(distractors, len(unique) - 1) + 1}


def semantic_consistency(real_set: ImageSet, generated_set: ImageSet, real: Dict[str, np.ndarray], generated: Dict[str, np.ndarray], config: EvaluationConfig) -> dict:
    real_prompts = [r.prompt for r in real_set.records]
    generated_prompts = [r.prompt for r in generated_set.records]
    if not all(generated_prompts) or len(set(generated_prompts)) < 2:
        return {"skipped": "the generated metadata needs a prompt (text) per image, with at least 2 distinct prompts"}
    if config.alignment_encoder:
        from ..encoders import load_encoder

        encoder = load_encoder(config.alignment_encoder, config.device)
        if not encoder.joint_space:
            raise ValueError(f"--alignment-encoder {config.alignment_encoder!r} has no joint text-image space.")
        text = dict(zip(sorted(set(generated_prompts)), encoder.encode_text(sorted(set(generated_prompts))).numpy()))
        images = np.concatenate([encoder.encode_image([PIL.Image.fromarray(b) for b in batch]).numpy() for _, batch in generated_set.batches(config.batch_size)])
        return {f"{encoder.name} (joint space)": _alignment_scores(images, generated_prompts, text, config.distractors, config.seed)}
    if not all(real_prompts) or len(set(real_prompts)) < 2:
        return {"skipped": "no joint text-image encoder given and the real metadata has no prompts to fit the alignment probe"}
    from ..encoders import SentenceEncoder

    prompts = sorted(set(real_prompts) | set(generated_prompts))
    text = dict(zip(prompts, SentenceEncoder().encode_text(prompts).numpy()))
    name = list(real)[-1]
    fit, held = _split(len(real_prompts), config.seed)
    probe = _ridge(real[name][fit], np.array([text[real_prompts[i]] for i in fit]))
    held_text = {p: text[p] for p in {real_prompts[i] for i in held}}
    generated_text = {p: text[p] for p in set(generated_prompts)}
    return {
        f"linear probe ({name} -> MiniLM), held-out real": _alignment_scores(probe(real[name][held]), [real_prompts[i] for i in held], held_text, config.distractors, config.seed),
        f"linear probe ({name} -> MiniLM), generated": _alignment_scores(probe(generated[name]), generated_prompts, generated_text, config.distractors, config.seed),
    }


def _labels(image_set: ImageSet) -> Optional[List[str]]:
    labels = [r.label for r in image_set.records]
    return labels if all(labels) else None


def diagnostic_utility_and_control(real_set, generated_set, real, generated, config: EvaluationConfig) -> tuple[dict, dict]:
    real_labels, generated_labels = _labels(real_set), _labels(generated_set)
    if real_labels is None or generated_labels is None or len(set(real_labels)) < 2 or len(set(generated_labels)) < 2:
        note = {"skipped": "both metadata files need a label per image, with at least 2 classes"}
        return note, dict(note)
    small = sorted(c for c in set(real_labels) if real_labels.count(c) < 2)
    if small:
        note = {"skipped": f"real classes {small} have fewer than 2 images: no train/test split possible"}
        return note, dict(note)
    utility, control = {}, {}
    fit, held = _split(len(real_labels), config.seed, real_labels)
    for name in real:
        r, g = real[name], generated[name]
        real_train = [real_labels[i] for i in fit]
        real_test = [real_labels[i] for i in held]
        real_on_real = metrics.linear_probe(r[fit], real_train, r[held], real_test, seed=config.seed)
        real_on_generated = metrics.linear_probe(r[fit], real_train, g, generated_labels, seed=config.seed)
        utility[name] = {
            "train generated, test real": metrics.linear_probe(g, generated_labels, r, real_labels, seed=config.seed),
            "train real, test generated": real_on_generated,
            "train real, test real (reference)": real_on_real,
        }
        control[name] = {"accuracy on generated": real_on_generated, "accuracy on held-out real": real_on_real,
                         "controllability (% of real)": 100.0 * real_on_generated / max(real_on_real, 1e-8)}
    return utility, control


def paraphrase_robustness(generated_set: ImageSet, generated: Dict[str, np.ndarray]) -> dict:
    groups: Dict[str, Dict[str, List[int]]] = {}
    for i, record in enumerate(generated_set.records):
        if record.group:
            groups.setdefault(record.group, {}).setdefault(record.prompt, []).append(i)
    usable = {g: p for g, p in groups.items() if len(p) >= 2}
    if not usable:
        return {"skipped": "no metadata group with >= 2 paraphrased prompts"}
    out = {}
    for name, features in generated.items():
        grouped = {g: [features[ix] for ix in p.values()] for g, p in usable.items()}
        out[name] = {"paraphrase agreement": metrics.paraphrase_agreement(grouped), "groups": len(usable)}
        if len(grouped) >= 2:
            separation = metrics.paraphrase_separation(grouped)
            out[name].update({"centred agreement within concepts": separation["within"],
                              "centred agreement across concepts": separation["across"],
                              "paraphrase margin": separation["margin"]})
    return out


def prototype_adherence(generated_set: ImageSet, config: EvaluationConfig, bank) -> dict:
    from ..encoders import DEFAULT_ENCODER_NAME, default_encoder

    rows = [(i, r.prototype_ids) for i, r in enumerate(generated_set.records) if r.prototype_ids]
    if bank is None or not rows:
        return {"skipped": "needs --bank and prototype_ids in the generated metadata"}
    if bank.image_features is None or bank.encoder != DEFAULT_ENCODER_NAME:
        return {"skipped": f"needs a bank with image features from the default encoder (this one: {bank.encoder!r})"}
    encoder = default_encoder()
    images = [PIL.Image.fromarray(generated_set.load(generated_set.records[i])) for i, _ in rows]
    features = encoder.encode_image(images).numpy()
    pool = bank.image_features.numpy()
    return metrics.prototype_adherence(features, [pool[ids] for _, ids in rows], pool, seed=config.seed)


def image_grids(real_set: ImageSet, generated_set: ImageSet, count: int) -> List[ImageGrid]:
    by_prompt: Dict[str, List[int]] = {}
    for i, record in enumerate(generated_set.records):
        by_prompt.setdefault(record.prompt or record.label or "generated", []).append(i)
    grids = []
    for prompt, indices in list(by_prompt.items())[:count]:
        label = generated_set.records[indices[0]].label
        real_ix = [i for i, r in enumerate(real_set.records) if (label and r.label == label) or (r.prompt and r.prompt == prompt)][:4]
        grids.append(ImageGrid(
            prompt, [PIL.Image.fromarray(real_set.load(real_set.records[i])) for i in real_ix],
            [PIL.Image.fromarray(generated_set.load(generated_set.records[i])) for i in indices[:4]],
            f"label: {label}" if label else "",
        ))
    return grids


def evaluate(real_set: ImageSet, generated_set: ImageSet, out_dir: str, config: Optional[EvaluationConfig] = None,
             training_set: Optional[ImageSet] = None, bank=None) -> dict:
    """Runs the four tiers and writes the report into `out_dir`; returns the results dict."""
    config = config or EvaluationConfig()
    for image_set in (real_set, generated_set):
        if len(image_set) < 2:
            raise ValueError(f"The {image_set.name} set has {len(image_set)} image(s); at least 2 are needed for a covariance.")
    extractors = [load_extractor(spec, config.device) for spec in config.extractors]
    real = {e.name: cached_features(real_set, e, config) for e in extractors}
    generated = {e.name: extract(generated_set, e, config.batch_size) for e in extractors}
    reference = {e.name: cached_features(training_set, e, config) for e in extractors[:1]} if training_set else None

    tier1 = pixel_fidelity(real, generated, reference, config)
    tier2 = semantic_consistency(real_set, generated_set, real, generated, config)
    tier3, tier4 = diagnostic_utility_and_control(real_set, generated_set, real, generated, config)
    tier4 = {**tier4, "paraphrase robustness": paraphrase_robustness(generated_set, generated),
             "prototype adherence": prototype_adherence(generated_set, config, bank)}
    curves = {}
    if config.calibration_noise:
        first = extractors[0]
        levels = [0.0, *config.calibration_noise]
        curves[f"FID of real vs noisy real ({first.name})"] = {
            "x": levels, "xlabel": "Gaussian pixel noise (std, uint8 units)", "ylabel": "FID",
            "series": {first.name: [0.0] + [metrics.fid_from_features(real[first.name], extract(real_set, first, config.batch_size, s, config.seed)) for s in config.calibration_noise]},
        }
    summary = {f"FID ({name})": tier1[name]["fid"] for name in real}
    for name, values in tier4.items():
        if isinstance(values, dict) and "controllability (% of real)" in values:
            summary[f"controllability % of real ({name})"] = values["controllability (% of real)"]
    results = {
        "summary": summary,
        "protocol": {**PROTOCOL, "extractors": ", ".join(config.extractors), "kid": f"{config.kid_subsets} subsets of {config.kid_subset_size}",
                     "precision/recall": f"k = {config.pr_k}"},
        "sets": {s.name: {"path": s.folder, "count": len(s)} for s in (real_set, generated_set, training_set) if s is not None},
        "tiers": {"1. Pixel fidelity": tier1, "2. Semantic consistency": tier2, "3. Diagnostic utility": tier3,
                  "4. Fine-grained controllability": tier4},
        "config": {k: v for k, v in asdict(config).items() if k != "notes"},
        "notes": list(config.notes),
        "curves": curves,
    }
    write_report(out_dir, results, image_grids(real_set, generated_set, config.grids), curves or None)
    return results


def generate_set(model: str, prompts_file: str, out_folder: str, images_per_prompt: int = 1, steps: int = 30,
                 guidance: float = 3.0, seed: int = 0, resolution: Optional[int] = None, device: str = "cpu") -> ImageSet:
    """Generates images for a prompts file (jsonl: prompt, optional label, group, attributes, prototype_ids) into
    `out_folder` with a `metadata.jsonl` that records prompt, label, group and the prototypes used."""
    import torch

    from ..model_sources import load_pipeline

    with open(prompts_file, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows or any("prompt" not in r for r in rows):
        raise ValueError(f"{prompts_file} must be jsonl with a 'prompt' in every row.")
    pipe = load_pipeline(model, device)
    pipe.set_progress_bar_config(disable=True)
    os.makedirs(out_folder, exist_ok=True)
    metadata = []
    for n, row in enumerate(tqdm(rows, desc="generating")):
        out = pipe(row["prompt"], num_inference_steps=steps, guidance_scale=guidance, prototype_ids=row.get("prototype_ids"),
                   num_images_per_prompt=images_per_prompt, height=resolution, width=resolution,
                   generator=torch.Generator().manual_seed(seed + n))
        for k, (image, ids) in enumerate(zip(out.images, out.prototype_ids)):
            name = f"{n:05d}-{k}.png"
            image.save(os.path.join(out_folder, name))
            metadata.append({"file_name": name, "text": row["prompt"], "label": row.get("label"), "group": row.get("group"), "prototype_ids": ids})
    from ..io_utils import atomic_path

    with atomic_path(os.path.join(out_folder, "metadata.jsonl")) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(m) + "\n" for m in metadata))
    return ImageSet(out_folder, name="generated")

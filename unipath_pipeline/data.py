"""Image-caption data for training: folders (imagefolder convention), Hugging Face `datasets`, WebDataset shards.

Every source yields `ImageCaption` records. An unreadable or truncated image yields a record with `image=None`;
`collate_image_captions` drops such records and counts them, so a bad file is never fatal. An empty source or a
missing column is a `DataError` raised when the source is opened, before any training starts.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import PIL.Image
import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


class DataError(ValueError):
    """The data cannot be used for training (empty, missing column, unreadable metadata)."""


@dataclass
class ImageCaption:
    """One training pair. `image` is `None` when the file could not be decoded."""

    image: Optional[PIL.Image.Image]
    caption: str
    key: str
    bank_id: Optional[int] = None


def decode_image(source: Any, key: str) -> Optional[PIL.Image.Image]:
    """A fully decoded RGB image from a path, bytes, a PIL image or a `datasets` image dict; `None` if unreadable."""
    try:
        if isinstance(source, dict):
            source = source.get("bytes") or source.get("path")
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        image = source if isinstance(source, PIL.Image.Image) else PIL.Image.open(source)
        image.load()  # decode now: truncated files fail here, not later in a worker
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        logger.debug("Skipping unreadable image %s: %s", key, error)
        return None


def _check_columns(available: Sequence[str], needed: Dict[str, str], where: str) -> None:
    for argument, column in needed.items():
        if column not in available:
            raise DataError(f"{where} has no column {column!r} (set by {argument}); available columns: {sorted(available)}.")


def read_metadata_file(path: str) -> List[Dict[str, Any]]:
    """Rows of a `.jsonl` or `.csv` metadata file."""
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith(".csv"):
            return list(csv.DictReader(f))
        rows = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}, line {number}: not valid JSON ({error}).") from None
        return rows


def read_metadata(folder: str) -> List[Dict[str, Any]]:
    """Rows of `metadata.jsonl` or `metadata.csv` in `folder` (Hugging Face imagefolder convention)."""
    for name in METADATA_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return read_metadata_file(os.path.join(folder, name))
    raise DataError(f"{folder} has no {' or '.join(METADATA_FILES)}; see the imagefolder convention (file_name, text).")


class ImageCaptionFolder(Dataset):
    """A folder of images with `metadata.jsonl` / `metadata.csv` (columns `file_name` and a caption column).

    As with `datasets`' imagefolder loader, the `file_name` column is exposed as the image column named `image_column`.

    Args:
        root: the folder.
        image_column: name under which the image is exposed (`"image"`; `"file_name"` is accepted too).
        caption_column: the caption column.
        bank_id_column: optional column with the sample's own prototype bank entry id.
    """

    def __init__(self, root: str, image_column: str = "image", caption_column: str = "text", bank_id_column: Optional[str] = None):
        if not os.path.isdir(root):
            raise DataError(f"--train_data_dir {root!r} is not a folder.")
        rows = read_metadata(root)
        if not rows:
            raise DataError(f"{root}: the metadata file lists no images; the dataset is empty.")
        columns = set(rows[0]) | {image_column}
        _check_columns(columns, {"the imagefolder convention": "file_name", "--caption_column": caption_column}, root)
        if bank_id_column:
            _check_columns(columns, {"--bank_id_column": bank_id_column}, root)
        self.root, self.rows = root, rows
        self.caption_column, self.bank_id_column = caption_column, bank_id_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ImageCaption:
        row = self.rows[index]
        key = row["file_name"]
        bank_id = row.get(self.bank_id_column) if self.bank_id_column else None
        return ImageCaption(
            decode_image(os.path.join(self.root, key), key), str(row[self.caption_column]), key,
            int(bank_id) if bank_id not in (None, "") else None,
        )


class HFImageCaptions(Dataset):
    """A map-style Hugging Face `datasets.Dataset` seen as image-caption pairs."""

    def __init__(self, dataset, image_column: str = "image", caption_column: str = "text", bank_id_column: Optional[str] = None):
        if len(dataset) == 0:
            raise DataError("The Hugging Face dataset split is empty.")
        needed = {"--image_column": image_column, "--caption_column": caption_column}
        if bank_id_column:
            needed["--bank_id_column"] = bank_id_column
        _check_columns(dataset.column_names, needed, "The dataset")
        self.dataset, self.image_column, self.caption_column, self.bank_id_column = dataset, image_column, caption_column, bank_id_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> ImageCaption:
        return _record_from_row(self.dataset[index], index, self.image_column, self.caption_column, self.bank_id_column)


def _record_from_row(row: Dict[str, Any], index: int, image_column: str, caption_column: str, bank_id_column: Optional[str]) -> ImageCaption:
    key = str(row.get("__key__", index))
    bank_id = row.get(bank_id_column) if bank_id_column else None
    return ImageCaption(decode_image(row[image_column], key), str(row[caption_column]), key, None if bank_id is None else int(bank_id))


class StreamingImageCaptions(IterableDataset):
    """An iterable source (streaming `datasets`, WebDataset shards) split across processes, resumable by count.

    Args:
        rows: a callable returning an iterator over this process's rows (dicts with image and caption columns).
        skip: rows of this process already consumed (resume position).
    """

    def __init__(self, rows, image_column: str, caption_column: str, bank_id_column: Optional[str] = None, skip: int = 0):
        self.rows, self.skip = rows, skip
        self.image_column, self.caption_column, self.bank_id_column = image_column, caption_column, bank_id_column

    def __iter__(self) -> Iterator[ImageCaption]:
        for index, row in enumerate(self.rows()):
            if index >= self.skip:
                yield _record_from_row(row, index, self.image_column, self.caption_column, self.bank_id_column)


def expand_shards(spec: str) -> List[str]:
    """`"data/shard-{000..009}.tar"` or a glob -> the sorted list of tar files."""
    if "{" in spec and ".." in spec:
        head, rest = spec.split("{", 1)
        body, tail = rest.split("}", 1)
        first, last = body.split("..")
        return [f"{head}{i:0{len(first)}d}{tail}" for i in range(int(first), int(last) + 1)]
    return sorted(glob.glob(spec))


def iterate_webdataset(shards: Sequence[str], caption_key: str = "txt") -> Iterator[Dict[str, Any]]:
    """Rows of WebDataset tar shards: members grouped by key (`name.jpg` + `name.txt` / `name.json`)."""
    for shard in shards:
        with tarfile.open(shard, "r|*") as tar:
            current: Dict[str, Any] = {}
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                key, _, extension = base.partition(".")
                key = os.path.join(os.path.dirname(member.name), key)
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                data = tar.extractfile(member).read()
                extension = extension.lower()
                if extension in IMAGE_EXTENSIONS:
                    current["image"] = data
                elif extension == "json":
                    current.update(json.loads(data))
                elif extension == caption_key:
                    current["text"] = data.decode("utf-8").strip()
            if current:
                yield current


def open_webdataset(
    spec: str, process_index: int = 0, num_processes: int = 1, caption_column: str = "text",
    bank_id_column: Optional[str] = None, skip: int = 0,
) -> StreamingImageCaptions:
    """WebDataset shards matching `spec`, this process taking every `num_processes`-th shard."""
    shards = expand_shards(spec)
    missing = [s for s in shards if not os.path.isfile(s)]
    if not shards or missing:
        raise DataError(f"--train_shards {spec!r} matches no tar files" + (f" (missing: {missing[:3]})" if missing else "") + ".")
    mine = shards[process_index::num_processes]
    if not mine:
        raise DataError(f"{len(shards)} shard(s) cannot feed {num_processes} processes; write at least one shard per process.")
    first = next(iterate_webdataset(mine[:1]), None)
    if first is None:
        raise DataError(f"The first shard {mine[0]} holds no samples.")
    _check_columns(list(first) + ["image"], {"--caption_column": caption_column, "image": "image"}, f"Shard {mine[0]}")
    return StreamingImageCaptions(lambda: iterate_webdataset(mine), "image", caption_column, bank_id_column, skip)


def load_hf_dataset(
    name: str, config: Optional[str] = None, split: str = "train", streaming: bool = False,
    image_column: str = "image", caption_column: str = "text", bank_id_column: Optional[str] = None,
    process_index: int = 0, num_processes: int = 1, skip: int = 0,
):
    """A Hugging Face dataset: a Hub id (from the local cache when offline), a local dataset folder or files."""
    try:
        import datasets
    except ImportError as error:
        raise DataError("--dataset_name needs the `datasets` package: pip install 'unipath-pipeline[train]'.") from error
    dataset = datasets.load_dataset(name, config, split=split, streaming=streaming)
    if not streaming:
        return HFImageCaptions(dataset, image_column, caption_column, bank_id_column)
    from datasets.distributed import split_dataset_by_node

    needed = {"--image_column": image_column, "--caption_column": caption_column}
    first = next(iter(dataset), None)
    if first is None:
        raise DataError("The streaming dataset yields no rows.")
    _check_columns(list(first), needed, "The dataset")
    shard = split_dataset_by_node(dataset, rank=process_index, world_size=num_processes)
    return StreamingImageCaptions(lambda: iter(shard), image_column, caption_column, bank_id_column, skip)


def open_image_captions(
    train_data_dir: Optional[str] = None,
    dataset_name: Optional[str] = None,
    train_shards: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    dataset_split: str = "train",
    streaming: bool = False,
    image_column: str = "image",
    caption_column: str = "text",
    bank_id_column: Optional[str] = None,
    process_index: int = 0,
    num_processes: int = 1,
    skip: int = 0,
):
    """Opens exactly one image-caption source; raises `DataError` for an empty source or a missing column.

    Returns a map-style `Dataset` (folders, non-streaming datasets) or a `StreamingImageCaptions` already split
    across processes and positioned after `skip` rows of this process.
    """
    given = [n for n, v in (("--train_data_dir", train_data_dir), ("--dataset_name", dataset_name), ("--train_shards", train_shards)) if v]
    if len(given) != 1:
        raise DataError(f"Give exactly one of --train_data_dir, --dataset_name, --train_shards; got {given or 'none'}.")
    if train_data_dir:
        return ImageCaptionFolder(train_data_dir, image_column, caption_column, bank_id_column)
    if dataset_name:
        return load_hf_dataset(dataset_name, dataset_config_name, dataset_split, streaming, image_column, caption_column,
                               bank_id_column, process_index, num_processes, skip)
    return open_webdataset(train_shards, process_index, num_processes, caption_column, bank_id_column, skip)


def add_data_arguments(parser) -> None:
    """The data-source arguments of the training scripts (diffusers' names)."""
    parser.add_argument("--train_data_dir", help="image folder with metadata.jsonl / metadata.csv (imagefolder convention)")
    parser.add_argument("--dataset_name", help="Hugging Face dataset: Hub id (cached when offline) or local dataset path")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--dataset_split", default="train")
    parser.add_argument("--streaming", action="store_true", help="stream the Hugging Face dataset")
    parser.add_argument("--train_shards", help="WebDataset tar shards, e.g. 'data/shard-{0000..0099}.tar' or a glob")
    parser.add_argument("--image_column", default="image")
    parser.add_argument("--caption_column", default="text")
    parser.add_argument("--bank_id_column", help="column with each sample's own prototype bank id (never retrieved for it)")
    parser.add_argument("--resolution", type=int, default=None, help="training size (default: the model's native size)")
    parser.add_argument("--center_crop", action=argparse.BooleanOptionalAction, default=True)


def open_from_args(args, process_index: int = 0, num_processes: int = 1, skip: int = 0):
    """`open_image_captions` with the arguments of `add_data_arguments`."""
    return open_image_captions(
        args.train_data_dir, args.dataset_name, args.train_shards, args.dataset_config_name, args.dataset_split,
        args.streaming, args.image_column, args.caption_column, args.bank_id_column, process_index, num_processes, skip,
    )


class StepBatchSampler(Sampler):
    """Per-process batches of a map-style dataset, as a pure function of the micro-step: resumable and shardable.

    Micro-step `s` of epoch `e = s // steps_per_epoch` takes the global batch `perm_e[s' * G : (s' + 1) * G]` of a
    permutation seeded by `(seed, e)` (`G` = batch size x processes); process `r` gets slice `r`. So one process with
    batch `G` and `P` processes with batch `G / P` see the same samples at each step, and a resumed run continues
    exactly where the interrupted one stopped. Incomplete global batches at the end of an epoch are dropped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1, start_step: int = 0):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.process_index, self.num_processes, self.start_step = process_index, num_processes, start_step
        self.global_batch = batch_size * num_processes
        if num_samples < self.global_batch:
            raise DataError(
                f"The dataset has {num_samples} samples, fewer than one global batch ({batch_size} x {num_processes} processes)."
            )
        self.steps_per_epoch = num_samples // self.global_batch

    def indices(self, step: int) -> List[int]:
        """This process's sample indices at micro-step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        permutation = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        start = position * self.global_batch + self.process_index * self.batch_size
        return permutation[start : start + self.batch_size].tolist()

    def __iter__(self) -> Iterator[List[int]]:
        step = self.start_step
        while True:
            yield self.indices(step)
            step += 1


def resize_and_crop(image: PIL.Image.Image, resolution: int, center_crop: bool = True) -> PIL.Image.Image:
    """Resize the shorter side to `resolution` (bicubic) and crop a square (centre, or top-left)."""
    width, height = image.size
    scale = resolution / min(width, height)
    image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))), PIL.Image.BICUBIC)
    width, height = image.size
    left, top = ((width - resolution) // 2, (height - resolution) // 2) if center_crop else (0, 0)
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: PIL.Image.Image, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """`resize_and_crop`, then scale to [-1, 1]: `[3, R, R]`."""
    array = np.asarray(resize_and_crop(image, resolution, center_crop), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class ImageCaptionCollator:
    """Turns a list of `ImageCaption` into a batch dict, dropping unreadable images (counted in `"skipped"`)."""

    def __init__(self, resolution: int, center_crop: bool = True):
        self.resolution, self.center_crop = resolution, center_crop

    def __call__(self, records: List[ImageCaption]) -> Dict[str, Any]:
        positions = [i for i, r in enumerate(records) if r.image is not None]
        good = [records[i] for i in positions]
        pixels = [image_to_tensor(r.image, self.resolution, self.center_crop) for r in good]
        return {
            "pixel_values": torch.stack(pixels) if pixels else torch.zeros(0, 3, self.resolution, self.resolution),
            "captions": [r.caption for r in good],
            "keys": [r.key for r in good],
            "bank_ids": [r.bank_id for r in good],
            "positions": positions,
            "skipped": len(records) - len(good),
        }

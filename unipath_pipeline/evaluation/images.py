"""Image sets for evaluation and the fixed preprocessing protocol every metric sees.

Protocol (`PROTOCOL`): images are decoded from disk as stored (PNG losslessly, JPEG with its compression), converted
to RGB uint8; a set must have one image size, unless `resize_to` is given, in which case every image is resized with
PIL bicubic so its shorter side is `resize_to` and centre-cropped to a square. Each feature extractor then applies its
own documented resizing (e.g. 299 px bicubic for Inception). Mixed sizes without `resize_to` are an error, because
silent resizing is one of the reasons published numbers disagree.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import PIL.Image

from ..data import IMAGE_EXTENSIONS, METADATA_FILES, DataError, read_metadata, resize_and_crop

PROTOCOL = {
    "decode": "PIL, as stored on disk (PNG lossless, JPEG as compressed), converted to RGB",
    "quantisation": "uint8 [0, 255]",
    "sizes": "one size per set, else an error; with --resize-to N: bicubic shorter side to N, centre crop N x N",
    "extractor input": "each extractor resizes as documented (Inception: 299 px bicubic, (x - 128) / 128)",
}


@dataclass
class ImageRecord:
    """One image of a set with its optional metadata."""

    file_name: str
    prompt: str = ""
    label: Optional[str] = None
    group: Optional[str] = None
    prototype_ids: List[int] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)


class ImageSet:
    """A folder of images, with `metadata.jsonl` / `metadata.csv` (`file_name` and optional `text` or `prompt`,
    `label`, `group` (paraphrases of one concept), `prototype_ids`) or without metadata (every image file).

    Args:
        folder: the folder.
        resize_to: apply the protocol's resize to this size; `None` requires one image size.
        name: a label for messages and reports.
    """

    def __init__(self, folder: str, resize_to: Optional[int] = None, name: str = "images"):
        if not os.path.isdir(folder):
            raise DataError(f"The {name} folder {folder!r} does not exist.")
        self.folder, self.resize_to, self.name = folder, resize_to, name
        if any(os.path.isfile(os.path.join(folder, m)) for m in METADATA_FILES):
            self.records = [_record(row) for row in read_metadata(folder)]
            not_images = [r.file_name for r in self.records if r.file_name.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS]
            if not_images:
                raise DataError(f"The {name} metadata lists files that are not images: {not_images[:5]}.")
        else:
            names = sorted(os.listdir(folder))
            self.records = [ImageRecord(n) for n in names if n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
            others = [n for n in names if n.rsplit(".", 1)[-1].lower() not in IMAGE_EXTENSIONS and not n.startswith(".")]
            if others and not self.records:
                raise DataError(f"The {name} folder {folder!r} holds no images, only other files: {others[:5]}.")
        if not self.records:
            raise DataError(f"The {name} folder {folder!r} is empty: no images to evaluate.")
        missing = [r.file_name for r in self.records if not os.path.isfile(os.path.join(folder, r.file_name))]
        if missing:
            raise DataError(f"The {name} metadata lists missing files: {missing[:5]}.")

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: ImageRecord) -> np.ndarray:
        """One image under the protocol, `[H, W, 3]` uint8; a file that does not decode is a `DataError`."""
        path = os.path.join(self.folder, record.file_name)
        try:
            with PIL.Image.open(path) as image:
                image.load()
                image = image.convert("RGB")
        except (OSError, ValueError, SyntaxError) as error:
            raise DataError(f"{path} is not a readable image ({error}).") from None
        if self.resize_to:
            image = resize_and_crop(image, self.resize_to)
        return np.asarray(image, dtype=np.uint8)

    def batches(self, batch_size: int = 32) -> Iterator[Tuple[List[ImageRecord], np.ndarray]]:
        """`(records, [n, H, W, 3] uint8)` in order; raises `DataError` on a size mismatch (without `resize_to`)."""
        size = None
        for start in range(0, len(self.records), batch_size):
            records = self.records[start : start + batch_size]
            arrays = [self.load(r) for r in records]
            for record, array in zip(records, arrays):
                size = size or array.shape
                if array.shape != size:
                    raise DataError(
                        f"The {self.name} set mixes image sizes ({size[1]}x{size[0]} and {array.shape[1]}x{array.shape[0]} "
                        f"for {record.file_name}); pass --resize-to N to apply the documented resize protocol."
                    )
            yield records, np.stack(arrays)

    def content_hash(self) -> str:
        """SHA-256 of the file names and bytes (and the resize setting): the key of cached reference statistics."""
        digest = hashlib.sha256(f"resize={self.resize_to}".encode())
        for record in sorted(self.records, key=lambda r: r.file_name):
            digest.update(record.file_name.encode())
            with open(os.path.join(self.folder, record.file_name), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def _record(row: Dict[str, Any]) -> ImageRecord:
    if "file_name" not in row:
        raise DataError(f"Metadata rows need a file_name column; got {sorted(row)}.")
    ids = row.get("prototype_ids") or []
    if isinstance(ids, str):
        ids = [int(x) for x in ids.replace(";", ",").split(",") if x.strip()]
    known = {"file_name", "text", "prompt", "label", "group", "prototype_ids"}
    return ImageRecord(
        row["file_name"], str(row.get("prompt") or row.get("text") or ""),
        None if row.get("label") in (None, "") else str(row["label"]),
        None if row.get("group") in (None, "") else str(row["group"]),
        [int(i) for i in ids], {k: v for k, v in row.items() if k not in known},
    )

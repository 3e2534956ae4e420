"""Training data sources: folders (jsonl/csv), Hugging Face datasets (also streaming), WebDataset shards, and the
resumable step sampler."""

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from unipath_pipeline.data import (
    DataError, ImageCaptionCollator, ImageCaptionFolder, StepBatchSampler, expand_shards, open_image_captions,
)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(root, n=4, metadata="jsonl"):
    root.mkdir(parents=True, exist_ok=True)
    rows = [{"file_name": f"{i}.png", "text": f"caption {i}", "bank_id": i} for i in range(n)]
    for i in range(n):
        (root / f"{i}.png").write_bytes(_png(i))
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(root / "metadata.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


@pytest.mark.parametrize("metadata", ["jsonl", "csv"])
def test_image_folder_reads_jsonl_and_csv_metadata(tmp_path, metadata):
    data = ImageCaptionFolder(str(_folder(tmp_path / "d", metadata=metadata)), bank_id_column="bank_id")
    assert len(data) == 4
    record = data[2]
    assert record.caption == "caption 2" and record.bank_id == 2 and record.image.size == (30, 20)


def test_truncated_images_become_none_and_are_dropped_by_the_collator(tmp_path):
    root = _folder(tmp_path / "d", n=3)
    (root / "1.png").write_bytes(_png(1)[:60])  # truncated
    data = ImageCaptionFolder(str(root))
    assert data[1].image is None
    batch = ImageCaptionCollator(16)([data[i] for i in range(3)])
    assert batch["skipped"] == 1 and batch["positions"] == [0, 2] and batch["pixel_values"].shape == (2, 3, 16, 16)
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="no metadata.jsonl or metadata.csv"):
        ImageCaptionFolder(str(tmp_path))
    root = _folder(tmp_path / "d")
    with pytest.raises(DataError, match="no column 'caption'.*--caption_column"):
        ImageCaptionFolder(str(root), caption_column="caption")
    with pytest.raises(DataError, match="exactly one"):
        open_image_captions(str(root), train_shards="x")


def test_hugging_face_datasets_map_style_and_streaming(tmp_path):
    root = _folder(tmp_path / "d")
    data = open_image_captions(dataset_name=str(root))  # the imagefolder builder, from local files
    assert len(data) == 4 and {data[i].caption for i in range(4)} == {f"caption {i}" for i in range(4)}
    assert data[0].image.size == (30, 20)
    streams = [open_image_captions(dataset_name=str(root), streaming=True, process_index=r, num_processes=2) for r in (0, 1)]
    captions = [[r.caption for r in s] for s in streams]
    assert sorted(captions[0] + captions[1]) == sorted(f"caption {i}" for i in range(4)) and all(captions)
    resumed = open_image_captions(dataset_name=str(root), streaming=True, skip=3)
    assert len(list(resumed)) == 1
    with pytest.raises(DataError, match="no column 'words'"):
        open_image_captions(dataset_name=str(root), caption_column="words")


def _shard(path, start, n):
    with tarfile.open(path, "w") as tar:
        for i in range(start, start + n):
            for name, data in ((f"s{i:04d}.png", _png(i)), (f"s{i:04d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_are_split_across_processes_and_resumable(tmp_path):
    for k in range(3):
        _shard(tmp_path / f"shard-{k:03d}.tar", 10 * k, 3)
    spec = str(tmp_path / "shard-{000..002}.tar")
    assert expand_shards(spec) == [str(tmp_path / f"shard-{k:03d}.tar") for k in range(3)]
    assert expand_shards(str(tmp_path / "shard-*.tar")) == expand_shards(spec)
    rank0 = [r.caption for r in open_image_captions(train_shards=spec, process_index=0, num_processes=2)]
    rank1 = [r.caption for r in open_image_captions(train_shards=spec, process_index=1, num_processes=2)]
    assert rank0 == ["caption 0", "caption 1", "caption 2", "caption 20", "caption 21", "caption 22"]
    assert rank1 == ["caption 10", "caption 11", "caption 12"]
    record = next(iter(open_image_captions(train_shards=spec)))
    assert record.image.size == (30, 20) and record.key.endswith("s0000")
    assert [r.caption for r in open_image_captions(train_shards=spec, skip=4)][0] == "caption 11"
    with pytest.raises(DataError, match="matches no tar files"):
        open_image_captions(train_shards=str(tmp_path / "none-*.tar"))
    with pytest.raises(DataError, match="cannot feed 4 processes"):
        open_image_captions(train_shards=spec, process_index=3, num_processes=4)


def test_step_sampler_shards_one_global_batch_and_resumes_exactly():
    one = StepBatchSampler(10, 4, seed=3)
    two = [StepBatchSampler(10, 2, seed=3, process_index=r, num_processes=2) for r in (0, 1)]
    for step in range(6):  # crosses epochs (2 global batches of 4 per epoch of 10)
        assert one.indices(step) == two[0].indices(step) + two[1].indices(step)
    assert len(set(one.indices(0) + one.indices(1))) == 8  # no repeats within an epoch
    assert one.indices(0) != one.indices(2)  # a new permutation each epoch
    resumed = iter(StepBatchSampler(10, 4, seed=3, start_step=3))
    assert next(resumed) == one.indices(3)
    with pytest.raises(DataError, match="fewer than one global batch"):
        StepBatchSampler(3, 2, seed=0, num_processes=2)


def test_image_to_tensor_crops_to_a_square(tmp_path):
    from unipath_pipeline.data import image_to_tensor

    tensor = image_to_tensor(Image.new("RGB", (60, 30), (255, 0, 0)), 16)
    assert tensor.shape == (3, 16, 16)
    torch.testing.assert_close(tensor[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))

"""Publishing pipeline, LoRA and prototype-bank folders to the Hugging Face Hub (`unipath push`).

`plan_upload` decides, locally and without network, exactly which files go up; `push_to_hub` creates the repo
(`HfApi.create_repo`), sets gating, and uploads those files in one commit (`HfApi.upload_folder` with the plan's file
list as `allow_patterns`). A folder without a README.md gets its card rendered first (`unipath card`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

from .convert_official import PROVENANCE_FILE
from .io_utils import human_bytes

logger = logging.getLogger(__name__)

#: Never uploaded: staging and temporary files, caches, training leftovers, the package module of the bundled model.
IGNORE_PATTERNS = [
    ".tmp*", "*/.tmp*", "*.tmp", ".*.tmp-*", ".*.old-*", "__pycache__/*", "*/__pycache__/*", "*.pyc", "__init__.py",
    ".DS_Store", "*/.DS_Store", ".cache/*", ".git/*", ".gitattributes", "checkpoint-*", "logs/*", "*.lock",
]


@dataclass
class UploadPlan:
    """What `push_to_hub` will do."""

    folder: str
    repo_id: str
    repo_type: str
    files: List[str]
    sizes: List[int]
    ignored: List[str]
    private: bool = False
    gated: Optional[str] = None
    revision: Optional[str] = None
    card: str = "present"  #: "present", or "generated" when README.md is rendered before the upload
    notes: List[str] = field(default_factory=list)

    def describe(self) -> str:
        """A human-readable plan (printed by `unipath push --dry-run`)."""
        lines = [
            f"repo: {self.repo_id} ({self.repo_type}{', private' if self.private else ''}"
            f"{f', gated={self.gated}' if self.gated else ''}{f', revision {self.revision}' if self.revision else ''})",
            f"from: {self.folder}",
            f"README.md: {self.card}",
            f"{len(self.files)} file(s), {human_bytes(sum(self.sizes))}:",
        ]
        lines += [f"  {name}  ({human_bytes(size)})" for name, size in zip(self.files, self.sizes)]
        if self.ignored:
            lines.append(f"not uploaded: {', '.join(self.ignored)}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def folder_files(folder: str) -> List[str]:
    """Every file under `folder`, as sorted POSIX paths relative to it."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(found)


def plan_upload(
    folder: str,
    repo_id: str,
    repo_type: str = "model",
    private: bool = False,
    gated: Optional[str] = None,
    revision: Optional[str] = None,
) -> UploadPlan:
    """The files of `folder` that go to `repo_id`, after `IGNORE_PATTERNS` (the same filter `upload_folder` applies).

    Raises `ValueError` for an empty folder, a folder of the wrong kind for `repo_type`, and for the official UniPath
    weights published neither private nor gated (their licence is CC BY-NC-ND 4.0 and the upstream is gated).
    """
    from huggingface_hub.utils import filter_repo_objects

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: no such folder.")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"--repo-id must look like OWNER/NAME; got {repo_id!r}.")
    if gated not in (None, "auto", "manual"):
        raise ValueError(f"--gated must be auto or manual; got {gated!r}.")
    from .model_card import detect_kind

    kind = detect_kind(folder)
    if (kind == "bank") != (repo_type == "dataset"):
        option = "--bank" if kind == "bank" else "--model"
        raise ValueError(f"{folder} is a {kind} folder: push it with {option} (repo type "
                         f"{'dataset' if kind == 'bank' else 'model'}).")
    everything = folder_files(folder)
    files = list(filter_repo_objects(everything, ignore_patterns=IGNORE_PATTERNS))
    if not files:
        raise ValueError(f"{folder} has nothing to upload.")
    plan = UploadPlan(
        folder=os.path.abspath(folder), repo_id=repo_id, repo_type=repo_type, files=files,
        sizes=[os.path.getsize(os.path.join(folder, f)) for f in files],
        ignored=[f for f in everything if f not in files], private=private, gated=gated, revision=revision,
    )
    if "README.md" not in files:
        plan.card = "generated"
        plan.files = sorted(files + ["README.md"])
        plan.sizes = [os.path.getsize(os.path.join(folder, f)) if f != "README.md" else 0 for f in plan.files]
    provenance = os.path.join(folder, PROVENANCE_FILE)
    if os.path.isfile(provenance):
        with open(provenance, encoding="utf-8") as f:
            data = json.load(f)
        official = "official" in (data.get("source"), (data.get("base_provenance") or {}).get("source"))
        if official and not (private or gated):
            raise ValueError("This folder holds the official UniPath weights (CC BY-NC-ND 4.0, gated upstream): publish "
                             "them only with --private or --gated manual.")
        if official:
            plan.notes.append("official UniPath weights: keep the repo gated or private (CC BY-NC-ND 4.0).")
    return plan


def push_to_hub(
    folder: str,
    repo_id: str,
    repo_type: str = "model",
    private: bool = False,
    gated: Optional[str] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    dry_run: bool = False,
    **card_options,
) -> UploadPlan:
    """Uploads `folder` to the Hub repo `repo_id` (created if needed) as planned by `plan_upload`; returns the plan.

    With `dry_run` nothing is written or sent. Otherwise a missing README.md is rendered first (`card_options` go to
    `model_card.write_card`, with `repo_id` so that its usage code loads this repo).
    """
    plan = plan_upload(folder, repo_id, repo_type, private, gated, revision)
    if dry_run:
        return plan
    if plan.card == "generated":
        from .model_card import write_card

        write_card(folder, repo_id=repo_id, kind="bank" if repo_type == "dataset" else None, **card_options)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if gated:
        api.update_repo_settings(repo_id, gated=gated, repo_type=repo_type)
    if revision:
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id, folder_path=folder, repo_type=repo_type, revision=revision,
        allow_patterns=[glob.escape(f) for f in plan.files], ignore_patterns=IGNORE_PATTERNS,
        commit_message=commit_message or f"Upload UniPath {repo_type} with unipath push",
    )
    logger.info("Uploaded %d files to %s", len(plan.files), repo_id)
    return plan

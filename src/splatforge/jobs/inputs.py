"""The one input classifier: what a fetched folder or file holds.

Every front door fetches a scene's input into a local path (an upload, a ``source_uri``, an
S3 prefix) and asks :func:`classify_input` what it is and which path the pipeline reads. The
image and video extensions are the ingest stage's (:data:`splatforge.ingest.IMAGE_EXTENSIONS`,
:data:`splatforge.ingest.VIDEO_EXTENSIONS`): one list for ingest, uploads, the service and
the AWS worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..ingest import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

#: What a folder may hold besides photos: a single zip or video is the input itself.
SINGLE_FILE_EXTENSIONS = (".zip", *VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class InputKind:
    """The classified input.

    Attributes:
        kind: ``colmap`` | ``nerfstudio`` | ``blender`` (a posed dataset: ingest and SfM are
            skipped) or ``images`` | ``zip`` | ``video`` (media for ingest).
        path: what to give :func:`splatforge.pipeline.run_reconstruct` (the dataset folder,
            the photo folder, or the one zip / video file).
    """

    kind: str
    path: Path

    @property
    def is_dataset(self) -> bool:
        return self.kind in ("colmap", "nerfstudio", "blender")


def has_images(folder: Path) -> bool:
    """True when ``folder`` holds photos of its own (top level, any case)."""
    try:
        return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   for p in Path(folder).iterdir())
    except OSError:
        return False


def image_folder(folder: Path) -> Path | None:
    """``folder`` when it holds photos, else its first ``images*`` subfolder that does."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if has_images(folder):
        return folder
    for sub in sorted(folder.glob("images*")):
        if sub.is_dir() and has_images(sub):
            return sub
    return None


def dataset_format(path: Path) -> str | None:
    """``colmap`` | ``nerfstudio`` | ``blender`` when ``path`` is a posed dataset, else None."""
    from ..scene import detect_format

    if not Path(path).is_dir():
        return None
    try:
        fmt, _, _ = detect_format(Path(path))
        return fmt
    except InputError:
        return None


def classify_input(path: str | Path, label: str | None = None) -> InputKind:
    """Classify a fetched input.

    In order: a posed dataset (a COLMAP folder, a ``transforms.json`` dataset, a splatforge
    workspace; a folder with ``sparse/`` counts as COLMAP even when its model does not read,
    so that reading it names the broken file); a ``.zip`` or video file; a folder whose only media is one zip or video (that
    file); a folder of photos; a folder without photos of its own but with an ``images/``
    subfolder that has them (a capture folder with a licence beside it).

    Args:
        path: the local file or folder.
        label: how messages name the input (an ``s3://`` origin, an upload); default the
            path's name, never the server's absolute path.

    Raises:
        InputError: it does not exist, or is neither a dataset nor supported media.
    """
    from ..ingest import detect_media_kind

    path = Path(path)
    shown = label or path.name
    hint = ("give photos (" + ", ".join(IMAGE_EXTENSIONS) + "), a .zip, a video ("
            + ", ".join(VIDEO_EXTENSIONS) + "), a COLMAP output (sparse/0/, images/) or a "
            "transforms.json dataset")
    if not path.exists():
        raise InputError(None, f"{shown}: does not exist", hint)
    fmt = dataset_format(path)
    if fmt is not None:
        return InputKind(fmt, path)
    if (path / "sparse").is_dir():
        # a COLMAP output that does not read: reading it names the broken file
        return InputKind("colmap", path)
    if path.is_file():
        try:
            return InputKind(detect_media_kind(path), path)
        except InputError as e:
            raise InputError(None, f"{shown}: {e.problem}", e.hint) from None
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    singles = [p for p in files if p.suffix.lower() in SINGLE_FILE_EXTENSIONS]
    if has_images(path):
        return InputKind("images", path)
    if len(singles) == 1:
        return InputKind(detect_media_kind(singles[0]), singles[0])
    imgs = path / "images"
    if imgs.is_dir() and has_images(imgs):
        return InputKind("images", imgs)
    found = ", ".join(sorted(p.name for p in files)[:5]) or "nothing"
    raise InputError(None, f"{shown}: holds neither a posed dataset nor photos or a video "
                           f"(found: {found})", hint)

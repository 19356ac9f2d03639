"""Fetching a dataset that is absent: torchvision's or a published archive's download, checked and extracted
safely into a staging folder, moved into place only once complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from backbones.datasets.common.folders import find_dir
from backbones.datasets.common.spec import DataNotFound, ReadOptions


@dataclass(frozen=True)
class Archive:
    """A file the source publishes at a stable URL: fetched with a progress bar and checked against its MD5 by
    torchvision's downloader, then extracted (unless it is the dataset file itself) by `safe_extract`."""

    url: str
    md5: str
    extract: bool = True

    def __call__(self, folder: Path) -> None:
        from torchvision.datasets.utils import download_url

        download_url(self.url, str(folder), md5=self.md5)
        if self.extract:
            archive = folder / Path(self.url).name
            safe_extract(archive, folder)
            archive.unlink()


def safe_extract(archive: Path, folder: Path) -> None:
    """Extract a .zip or tar archive into `folder`, refusing any member that would land outside it (absolute
    paths, '..', links pointing out, device files): a checksum proves which file arrived, not that it is benign."""
    target = Path(folder).resolve()
    if archive.suffix == ".zip" or zipfile.is_zipfile(archive):  # by name first: a truncated zip is no zip
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                destination = (target / name).resolve()
                if destination != target and target not in destination.parents:
                    raise ValueError(f"{archive.name} holds {name!r}, which would be written outside {target}")
            bundle.extractall(target)
        return
    with tarfile.open(archive) as bundle:
        try:
            bundle.extractall(target, filter="data")
        except tarfile.FilterError as err:
            raise ValueError(f"{archive.name} holds a member that is unsafe to extract: {err}") from err


@dataclass(frozen=True)
class TorchvisionDownload:
    """A dataset torchvision knows how to download (with its own URLs and checksums)."""

    dataset: str  # the class name in torchvision.datasets, e.g. 'CIFAR10'

    def __call__(self, folder: Path) -> None:
        import torchvision

        with data_filter_by_default():  # torchvision's own extraction passes no filter
            getattr(torchvision.datasets, self.dataset)(str(folder), download=True)


@contextlib.contextmanager
def data_filter_by_default():
    """Make `tarfile`'s 'data' filter the default for extractions that name none (Python's documented hook), so a
    tar member of an archive extracted by another library cannot land outside its folder either. (Zip extraction
    already drops absolute paths and '..'.)"""
    previous = tarfile.TarFile.extraction_filter
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    try:
        yield
    finally:
        tarfile.TarFile.extraction_filter = previous


def locate(
    data: Path,
    marker: str,
    top_folders: Sequence[str],
    options: ReadOptions,
    download: Callable[[Path], object] | None = None,
    produces: str | None = None,
) -> Path:
    """Find the dataset under `data`; if it is absent and a `download` is given (and allowed), fetch it first.

    `download(folder)` writes into a hidden staging folder inside `data`; only when it has finished (and passed
    its checksum) is what it produced (`produces`, by default the first top folder) moved into place, in one
    rename. A failed or killed download therefore never leaves a dataset that looks complete.
    """
    try:
        return find_dir(data, marker, top_folders)
    except DataNotFound:
        if download is None or not options.download:
            raise
    produced = produces or top_folders[0]
    target = data / produced
    if target.exists():
        raise DataNotFound(
            f"{target} exists but has no {marker} (a partial extraction?); delete {target} so it can be "
            f"downloaded again, or complete it by hand"
        )
    print(f"Dataset not found under {data}; downloading it there (pass --no-download to forbid this).", flush=True)
    staging = data / f".incomplete-{Path(produced).name}"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed earlier attempt; never user data
    try:
        staging.mkdir(parents=True)
        download(staging)
        if not (staging / produced).exists():
            raise RuntimeError(f"the download did not produce {produced}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / produced, target)
    except Exception as err:  # network, checksum and archive errors all end the same way for the user
        raise DataNotFound(
            f"downloading it failed ({type(err).__name__}: {err}) and nothing was left behind; check the network, "
            "or fetch it on a connected machine"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return find_dir(data, marker, top_folders)

"""Downloads, served for real over HTTP from this machine: checksum, extraction, and the all-or-nothing move."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading

import pytest

from backbones.datasets import galaxy10, tinyimagenet
from backbones.datasets.common.download import Archive
from backbones.datasets.common.spec import DataNotFound, ReadOptions
from formats import make_galaxy10, make_tinyimagenet

ONLINE = ReadOptions(download=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A folder served over HTTP on localhost; yields (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tinyimagenet_zip(tmp_path, www) -> str:
    make_tinyimagenet(tmp_path / "src", classes=3, train=2, val=1)
    return shutil.make_archive(str(www / "tiny-imagenet-200"), "zip", tmp_path / "src")


def test_archive_is_downloaded_checked_extracted_and_moved_into_place(tmp_path, served, monkeypatch, capsys):
    www, url = served
    archive = tinyimagenet_zip(tmp_path, www)
    monkeypatch.setattr(tinyimagenet, "ARCHIVE", Archive(f"{url}/tiny-imagenet-200.zip", md5(www / archive)))
    catalog = tinyimagenet.catalog(tmp_path / "data", ONLINE)
    assert len(catalog.classes) == 3 and len(catalog.samples) == 3 * 2 + 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["tiny-imagenet-200"]  # no archive, no staging
    assert "downloading it there" in capsys.readouterr().out
    again = tinyimagenet.catalog(tmp_path / "data", ReadOptions(download=False))  # found, not fetched
    assert again.samples.equals(catalog.samples)


@pytest.mark.parametrize("damage", ["wrong checksum", "truncated archive"])
def test_failed_download_leaves_nothing_behind(tmp_path, served, monkeypatch, damage):
    www, url = served
    archive = www / tinyimagenet_zip(tmp_path, www)
    if damage == "truncated archive":  # the checksum matches what was served, but the zip is cut short
        archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    checksum = "0" * 32 if damage == "wrong checksum" else md5(archive)
    monkeypatch.setattr(tinyimagenet, "ARCHIVE", Archive(f"{url}/tiny-imagenet-200.zip", checksum))
    with pytest.raises(DataNotFound, match="downloading it failed .* nothing was left behind"):
        tinyimagenet.catalog(tmp_path / "data", ONLINE)
    assert list((tmp_path / "data").iterdir()) == []


def test_single_file_dataset_is_downloaded_without_extraction(tmp_path, served, monkeypatch):
    www, url = served
    source = make_galaxy10(www, per_class=1)
    monkeypatch.setattr(galaxy10, "ARCHIVE", Archive(f"{url}/{source.name}", md5(source), extract=False))
    catalog = galaxy10.catalog(tmp_path / "data", ONLINE)
    assert len(catalog.samples) == 10
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["Galaxy10_DECals.h5"]
    assert catalog.read("images/3").size == (256, 256)


def test_no_download_and_a_partial_folder_are_never_fetched_over(tmp_path, served, monkeypatch):
    www, url = served
    archive = www / tinyimagenet_zip(tmp_path, www)
    monkeypatch.setattr(tinyimagenet, "ARCHIVE", Archive(f"{url}/tiny-imagenet-200.zip", md5(archive)))
    with pytest.raises(DataNotFound, match="looked for"):
        tinyimagenet.catalog(tmp_path / "data", ReadOptions(download=False))
    mine = tmp_path / "data" / "tiny-imagenet-200" / "notes.txt"  # a partial extraction the user made
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    with pytest.raises(DataNotFound, match="exists but has no wnids.txt"):
        tinyimagenet.catalog(tmp_path / "data", ONLINE)
    assert mine.read_text() == "keep me" and [p.name for p in mine.parent.iterdir()] == ["notes.txt"]

"""`python -m deeplab data download`: argument checks, safe unpacking, layout verification, no credential leaks.

The internet is unreachable here, so the real login can only fail: the leak test lets it fail fast through an
unreachable proxy (a real network attempt, no mock). Where a successful transfer is needed, the two network calls
(`login` and cityscapesscripts' `download_packages`) are replaced by fakes that copy zips built from the project's
synthetic generator in the official layout; that replacement is the only mock, and it exists because the
Cityscapes server cannot be reached from this machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tiny import REPO

from deeplab.data import download as dl
from deeplab.data.cityscapes import CityscapesSegmentation
from deeplab.data.synth import synthesize
from deeplab.errors import DeeplabError

GT, IMG = "gtFine_trainvaltest.zip", "leftImg8bit_trainvaltest.zip"
SIZES = {"train": 3, "val": 2}
SECRET = "pw-Zq7!never-print-me"


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gtFine/leftImg8bit zips of a 3 train / 2 val synthetic dataset, laid out like the official archives."""
    src = synthesize(tmp_path_factory.mktemp("synth") / "cs", train=3, val=2, height=32, width=64, seed=1)
    out = tmp_path_factory.mktemp("zips")
    for name, folder in ((GT, "gtFine"), (IMG, "leftImg8bit")):
        with zipfile.ZipFile(out / name, "w") as zf:
            zf.writestr("README", "Cityscapes\n")
            zf.writestr("license.txt", "terms\n")
            for path in sorted((src / folder).rglob("*.png")):
                zf.write(path, path.relative_to(src).as_posix())
    return out


def _copy(archives: Path, dest: Path, *names: str) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(archives / n, dest / n)) for n in names]


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deeplab", "data", "download", "--dest", str(tmp_path / "cs"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def _offline_env(home: Path, **extra: str) -> dict[str, str]:
    """No credentials, HOME in a temp dir, and every HTTPS request sent to a closed local port."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy") and not k.startswith("CITYSCAPES")}
    env.update(HOME=str(home), HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", **extra)
    return env


def test_cli_rejects_unknown_package_with_one_line(tmp_path: Path) -> None:
    out = _cli(tmp_path, "--packages", GT, "leftImg8bit_trainval.zip", env=_offline_env(tmp_path))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "error: data download --packages: unknown package 'leftImg8bit_trainval.zip'; did you mean leftImg8bit_trainvaltest.zip?"
    ]
    assert not (tmp_path / "cs").exists()


def test_unknown_package_fails_before_any_network_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network touched")

    monkeypatch.setattr(dl, "login", no_network)
    monkeypatch.setattr(dl.downloader, "download_packages", no_network)
    with pytest.raises(DeeplabError, match="unknown package 'gtCoarse.zip'; expected one of"):
        dl.download(tmp_path / "cs", [GT, "gtCoarse.zip"], keep_archives=False)
    with pytest.raises(DeeplabError, match="no package given"):
        dl.download(tmp_path / "cs", [], keep_archives=False)


def test_failed_login_never_shows_or_stores_the_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = _offline_env(home, CITYSCAPES_USERNAME="someone@example.org", CITYSCAPES_PASSWORD=SECRET)
    out = _cli(tmp_path, env=env)
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: data download: cannot log in at https://www.cityscapes-dataset.com/login")
    assert SECRET not in out.stdout + out.stderr
    assert "someone@example.org" not in out.stdout + out.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(SECRET.encode() in p.read_bytes() for p in written)
    assert not list(home.rglob("credentials.json"))


def test_without_credentials_or_terminal_the_error_names_the_variables(tmp_path: Path) -> None:
    out = _cli(tmp_path, "--packages", GT, env=_offline_env(tmp_path))
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "error: data download: no credentials: set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD (no terminal to ask on)"
    ]


@pytest.mark.parametrize("keep", [False, True])
def test_install_unpacks_and_verifies_the_layout(archives: Path, tmp_path: Path, keep: bool) -> None:
    dest = tmp_path / "cs"
    zips = _copy(archives, dest, GT, IMG)
    dl.install(zips, dest, keep_archives=keep, split_sizes=SIZES)
    assert all(z.exists() for z in zips) == keep
    assert (dest / "README").is_file()
    val = CityscapesSegmentation(dest, "val")
    assert len(val) == 2
    assert val[0][0].shape == (3, 32, 64)


def test_labels_alone_are_counted(archives: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cs"
    dl.install(_copy(archives, dest, GT), dest, keep_archives=False, split_sizes=SIZES)
    assert len(list((dest / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))) == 3


def test_official_split_counts_are_enforced_and_archives_kept(archives: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cs"
    zips = _copy(archives, dest, GT, IMG)
    with pytest.raises(DeeplabError, match=r"leftImg8bit/train holds 3 files, the train split has 2975"):
        dl.install(zips, dest, keep_archives=False)
    assert all(z.exists() for z in zips)


def test_image_without_label_is_named(archives: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cs"
    zips = _copy(archives, dest, GT, IMG)
    with zipfile.ZipFile(zips[1], "a") as zf:
        zf.writestr("leftImg8bit/val/lindau/lindau_000009_000099_leftImg8bit.png", b"")
    with pytest.raises(DeeplabError, match="lindau_000009_000099_leftImg8bit.png has no label"):
        dl.install(zips, dest, keep_archives=False, split_sizes=SIZES)


@pytest.mark.parametrize(
    "member", ["../evil.txt", "/tmp/evil.txt", "gtFine/../../evil.txt", "gtFine\\..\\..\\evil.txt", "C:\\evil.txt"]
)
def test_unsafe_member_rejects_the_whole_archive(tmp_path: Path, member: str) -> None:
    dest = tmp_path / "a" / "cs"
    dest.mkdir(parents=True)
    bad = dest / GT
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("gtFine/README", "safe, but must not be extracted either")
        zf.writestr(member, "pwned")
    with pytest.raises(DeeplabError, match="unsafe member .*nothing was extracted"):
        dl.install([bad], dest, keep_archives=False, split_sizes=SIZES)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "cs", GT]


def test_symlink_member_and_corrupt_zip_are_rejected(tmp_path: Path) -> None:
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        info = zipfile.ZipInfo("gtFine/escape")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc")
    with pytest.raises(DeeplabError, match="'gtFine/escape' is a symbolic link"):
        dl.unpack(link, tmp_path)
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04 truncated download")
    with pytest.raises(DeeplabError, match="corrupt.zip: not a valid zip archive"):
        dl.unpack(corrupt, tmp_path)


def test_download_logs_in_once_resumes_partial_files_and_reuses_complete_ones(
    archives: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network is faked (unreachable here): the fakes copy the synthetic archives into place."""
    logins, calls = [], []
    session = object()

    def fake_login(username: str, password: str) -> object:
        logins.append((username, password))
        return session

    def fake_download_packages(*, session: object, package_names: list[str], destination_path: str, resume: bool):
        calls.append((session, package_names, resume))
        for name in package_names:
            shutil.copy(archives / name, Path(destination_path) / name)

    monkeypatch.setattr(dl, "login", fake_login)
    monkeypatch.setattr(dl.downloader, "download_packages", fake_download_packages)
    monkeypatch.setenv("CITYSCAPES_USERNAME", "someone")
    monkeypatch.setenv("CITYSCAPES_PASSWORD", SECRET)
    dest = tmp_path / "new" / "cs"
    dest.mkdir(parents=True)
    (dest / IMG).write_bytes(b"PK\x03\x04 half of it")  # an interrupted earlier download
    # synthetic data is not the official 2975/500/1525: verification fails and the archives stay for a rerun
    with pytest.raises(DeeplabError, match="holds 3 files, the train split has 2975"):
        dl.download(dest, None, keep_archives=False)
    assert logins == [("someone", SECRET)]
    assert calls == [(session, [GT], False), (session, [IMG], True)]
    logins.clear(), calls.clear()
    with pytest.raises(DeeplabError, match="the train split has 2975"):
        dl.download(dest, None, keep_archives=False)
    assert logins == [] and calls == []  # complete archives are reused without logging in

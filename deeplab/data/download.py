"""Fetch the official Cityscapes archives, unpack them safely and check the official layout.

The transfer itself is cityscapesscripts' downloader: ``download_packages`` (package ids from
``get_available_packages``, chunked download with resume, MD5 check). Its ``login()`` is deliberately not called:
it reads ``~/.local/share/cityscapesscripts/credentials.json`` when that file exists (silently using other
credentials than the ones given), offers to store the password there unencrypted, and deletes the file after a
failed login. Here the same two login requests (GET, then POST of the form; a 302 means success) are made on a
``requests.Session`` that is handed to the downloader's lower-level functions. Credentials come from
``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` or are prompted for (the password with getpass); they live only in
memory and are never printed, logged or written to disk, and error messages never quote them.
"""

from __future__ import annotations

import difflib
import getpass
import os
import shutil
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path

import requests
from cityscapesscripts.download import downloader

from deeplab.errors import DeeplabError

LOGIN_URL = "https://www.cityscapes-dataset.com/login"
TIMEOUT_S = (30, 300)  # (connect, read): the downloader itself passes no timeout and could hang forever


#: The archives this study needs and the top-level folder each unpacks to; others are rejected before any network
#: access. (The dataset module, hence torch, is imported only to verify: argument and login errors come back at once.)
PACKAGES: dict[str, str] = {"gtFine_trainvaltest.zip": "gtFine", "leftImg8bit_trainvaltest.zip": "leftImg8bit"}
DEFAULT_PACKAGES = list(PACKAGES)


def download(dest: Path, packages: list[str] | None = None, keep_archives: bool = False) -> None:
    """Download ``packages`` into ``dest``, unpack them there, verify the official layout, drop the archives.

    An archive already complete in ``dest`` is reused and a partial one resumed; the login happens only when
    something has to be fetched.
    """
    names = check_packages(packages)
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DeeplabError(f"data download --dest: cannot create {dest} ({err.strerror})") from None
    session = None
    for name in names:
        if _complete(dest / name):
            print(f"using {dest / name} (already downloaded)")
            continue
        session = session or login(*credentials())
        fetch(session, name, dest)
    install([dest / name for name in names], dest, keep_archives=keep_archives)


def check_packages(packages: list[str] | None) -> list[str]:
    """The requested package names, de-duplicated; an unknown name is an error (with a suggestion)."""
    names = list(dict.fromkeys(DEFAULT_PACKAGES if packages is None else packages))
    if not names:
        raise DeeplabError(f"data download --packages: no package given (expected some of {DEFAULT_PACKAGES})")
    for name in names:
        if name not in PACKAGES:
            close = difflib.get_close_matches(name, PACKAGES, n=1)
            hint = f"did you mean {close[0]}?" if close else f"expected one of {DEFAULT_PACKAGES}"
            raise DeeplabError(f"data download --packages: unknown package {name!r}; {hint}")
    return names


class _Session(requests.Session):
    """A session whose requests time out (the downloader calls ``session.get`` without a timeout)."""

    def request(self, *args, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT_S)
        return super().request(*args, **kwargs)


def _complete(archive: Path) -> bool:
    return archive.is_file() and zipfile.is_zipfile(archive)


def fetch(session: requests.Session, name: str, dest: Path) -> Path:
    """``dest/name`` through the downloader (resumed when a partial file is there); MD5-checked by it."""
    archive = dest / name
    try:
        downloader.download_packages(
            session=session, package_names=[name], destination_path=str(dest), resume=archive.exists()
        )
    except requests.RequestException as err:
        raise DeeplabError(f"data download: downloading {name} failed ({_first_line(err)})") from None
    except Exception as err:  # the downloader raises bare Exception: no access, MD5 mismatch, …
        raise DeeplabError(f"data download: {name}: {_first_line(err)}") from None
    return archive


def credentials() -> tuple[str, str]:
    """Username and password from CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD, else prompted for."""
    username = os.environ.get("CITYSCAPES_USERNAME", "")
    password = os.environ.get("CITYSCAPES_PASSWORD", "")
    try:
        if not username:
            username = input("Cityscapes username or email address: ").strip()
        if not password:
            password = getpass.getpass("Cityscapes password: ")
    except EOFError:
        raise DeeplabError(
            "data download: no credentials: set CITYSCAPES_USERNAME and CITYSCAPES_PASSWORD (no terminal to ask on)"
        ) from None
    if not username or not password:
        raise DeeplabError("data download: empty Cityscapes username or password")
    return username, password


def login(username: str, password: str) -> requests.Session:
    """A logged-in session for the downloader's functions (messages never include the credentials)."""
    session = _Session()
    try:
        session.get(LOGIN_URL, allow_redirects=False).raise_for_status()
        form = {"username": username, "password": password, "submit": "Login"}
        response = session.post(LOGIN_URL, data=form, allow_redirects=False)
        response.raise_for_status()
    except requests.RequestException as err:
        raise DeeplabError(
            f"data download: cannot log in at {LOGIN_URL} ({type(err).__name__}); is there internet access here?"
        ) from None
    if response.status_code != 302:  # the site redirects after a successful login
        raise DeeplabError(f"data download: login at {LOGIN_URL} refused: wrong Cityscapes username or password")
    return session


def install(
    archives: list[Path],
    dest: Path,
    *,
    keep_archives: bool,
    split_sizes: Mapping[str, int] | None = None,
) -> None:
    """Unpack each archive into ``dest``, verify the layout, then delete the archives (kept on any error).

    ``split_sizes`` defaults to the official counts (train 2975, val 500, test 1525).
    """
    for archive in archives:
        unpack(archive, dest)
    verify_layout(dest, [a.name for a in archives], split_sizes)
    if not keep_archives:
        for archive in archives:
            archive.unlink()
    print(f"Cityscapes ready under {dest}")


def unpack(archive: Path, dest: Path) -> None:
    """Extract a zip into ``dest`` after checking every member: no absolute path, no '..', no symlink."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for info in members:
                _check_member(archive, info)
            need = sum(info.file_size for info in members)
            free = shutil.disk_usage(dest).free
            if need > free:
                raise DeeplabError(
                    f"{archive}: unpacking needs {need / 1e9:.1f} GB, {dest} has {free / 1e9:.1f} GB free"
                )
            print(f"unpacking {archive.name} ({len(members)} files, {need / 1e9:.2f} GB) into {dest}")
            zf.extractall(dest)
    except FileNotFoundError:
        raise DeeplabError(f"file not found: {archive}") from None
    except zipfile.BadZipFile as err:
        raise DeeplabError(f"{archive}: not a valid zip archive ({_first_line(err)})") from None


def _check_member(archive: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    absolute = name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")
    if absolute or ".." in parts:
        raise DeeplabError(f"{archive}: unsafe member {name!r} (absolute path or '..'); nothing was extracted")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DeeplabError(f"{archive}: member {name!r} is a symbolic link; nothing was extracted")


def verify_layout(root: Path, packages: list[str], split_sizes: Mapping[str, int] | None = None) -> None:
    """Check that every split holds ``split_sizes[split]`` files (default: the official counts) in the official layout.

    With images and labels both present the dataset class pairs every image with its label and one pair per
    split is decoded (readable PNGs, valid label ids, equal sizes); otherwise each package's files are counted.
    """
    from deeplab.data.cityscapes import IMAGE_SUFFIX, LABEL_SUFFIX, OFFICIAL_SPLIT_SIZES, CityscapesSegmentation

    root = Path(root)
    suffix = {"gtFine": LABEL_SUFFIX, "leftImg8bit": IMAGE_SUFFIX}
    paired = all((root / folder).is_dir() for folder in suffix)
    for split, expected in (OFFICIAL_SPLIT_SIZES if split_sizes is None else split_sizes).items():
        if paired:
            dataset = CityscapesSegmentation(root, split)
            dataset.load(0)
            _check_count(root / "leftImg8bit" / split, len(dataset), expected, split)
            continue
        for folder in (PACKAGES[name] for name in packages):
            split_dir = root / folder / split
            if not split_dir.is_dir():
                raise DeeplabError(f"data download: {split_dir} does not exist after unpacking {packages}")
            _check_count(split_dir, sum(1 for _ in split_dir.glob(f"*/*{suffix[folder]}")), expected, split)


def _check_count(split_dir: Path, count: int, expected: int, split: str) -> None:
    if count != expected:
        raise DeeplabError(f"data download: {split_dir} holds {count} files, the {split} split has {expected}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__

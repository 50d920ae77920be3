"""One process at a time on a directory: a lease on a lock file, held for as long as the holder lives.

What the lease relies on, by filesystem:
- ``flock(2)`` on the lease file. Local filesystems: exact, and the kernel drops it when the holder dies.
  NFSv4: emulated with whole-file locks held by the server, so cluster-wide (a crashed client's locks go when its
  NFS lease expires, ~90 s). NFSv3: the same through lockd/NLM, but node-local on ``nolock`` or
  ``local_lock=flock`` mounts. Lustre: cluster-wide with ``-o flock``, node-local with ``localflock``, and
  EINVAL/ENOSYS with ``noflock`` (then the record below decides alone).
- The holder's record in the file (host, boot id, pid and its start time, SLURM job, start time), its mtime
  refreshed every ``HEARTBEAT_S``. Having taken the flock, a record of another holder that is still alive
  (same host: that pid runs with the same start time; another host: a heartbeat younger than ``STALE_S``, or
  any age when it names this very SLURM job's earlier attempt, which is over) means the flock was node-local:
  refuse. On a network filesystem the record is read back after ``VERIFY_S``: of two processes that got past
  the check at the same moment on different nodes, the one whose record was overwritten refuses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from deeplab.errors import DeeplabError
from deeplab.outputs import missing_dirs, remove_empty_dirs

LEASE_NAME = ".lease"
HEARTBEAT_S = 30.0
STALE_S = 120.0  # four missed heartbeats; above NFS attribute caching (actimeo ≤ 60 s)
VERIFY_S = 0.2
_NO_FLOCK = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOLCK)
_LOCAL_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "ramfs", "bcachefs"}


class LeaseHeld(DeeplabError):
    """Another live process holds the lease."""


def open_own(path: Path, mode: str) -> Any:
    """``open(path, mode)`` for a file a run directory owns: a symlink there is never followed out of it (it
    could point at another run's checkpoint or at a user's dotfile that a truncate would wipe)."""
    flags = {
        "r": os.O_RDONLY,
        "rb": os.O_RDONLY,
        "a": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
        "r+": os.O_RDWR,
        "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
        "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    }
    try:
        fd = os.open(path, flags[mode] | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DeeplabError(f"{path} is a symlink: a run directory's files are its own, never followed") from None
        raise
    return os.fdopen(fd, mode)


def check_own(path: Path) -> None:
    """Refuse to read a run directory's file through a symlink."""
    if Path(path).is_symlink():
        raise DeeplabError(f"{path} is a symlink: a run directory's files are its own, never followed")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def _boot_id() -> str:
    return (_read("/proc/sys/kernel/random/boot_id") or "").strip()


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot; tells a pid from a later process that reuses it)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)", which may hold spaces
    return None if fields[0] == "Z" else int(fields[19])


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lease."""

    host: str
    boot_id: str
    pid: int
    pid_start: int | None
    slurm_job: str = ""  # array job_task, or the job id
    slurm_job_id: str = ""  # SLURM_JOB_ID: one per attempt of a job, kept across requeues
    started: float = 0.0

    @classmethod
    def current(cls) -> Holder:
        """This process, with its SLURM job from the environment."""
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job = os.environ.get("SLURM_JOB_ID", "")
        slurm_job = f"{array}_{task}" if array and task else job
        return cls(platform.node(), _boot_id(), os.getpid(), process_start(os.getpid()), slurm_job, job, time.time())

    @classmethod
    def local(cls, pid: int) -> Holder:
        """Another process of this host (e.g. a job started by this one)."""
        return cls(platform.node(), _boot_id(), pid, process_start(pid), started=time.time())

    def describe(self) -> str:
        where = f"{self.host}:{self.pid}"
        return f"slurm job {self.slurm_job} ({where})" if self.slurm_job else where

    def on_this_host(self) -> bool:
        return self.host == platform.node() and self.boot_id == _boot_id()

    def alive(self, heartbeat: float | None = None) -> bool:
        """Same host: the pid runs with the same start time. Another host: an earlier attempt of this process's
        own SLURM job is over; otherwise the heartbeat (mtime of the lease file) is younger than STALE_S."""
        if self.on_this_host():
            return self.pid_start is not None and process_start(self.pid) == self.pid_start
        if self.slurm_job_id and self.slurm_job_id == os.environ.get("SLURM_JOB_ID"):
            return False
        return heartbeat is not None and time.time() - heartbeat < STALE_S

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> Holder | None:
        try:
            return cls(**json.loads(text)) if text else None
        except (ValueError, TypeError):  # torn or foreign content: no usable record
            return None


def _on_local_fs(path: Path) -> bool:
    """Whether ``path`` lies on a local filesystem (longest mount point prefix in /proc/self/mountinfo)."""
    real, best, kind = os.path.realpath(path), "", ""
    for line in (_read("/proc/self/mountinfo") or "").splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        mount = fields[4].replace("\\040", " ") if len(fields) > 4 else ""
        inside = mount == "/" or real == mount or real.startswith(mount + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, right.split()[0] if right else ""
    return kind in _LOCAL_FS


class Lease:
    """A held lease on one lock file and its directory; ``release()`` (or leaving the ``with`` block) gives it up.

    The directory itself is flocked too: a lease file removed while its holder lives is no way in for another
    process (the heartbeat writes the holder's record back), and a holder notices when its directory was moved or
    replaced (``check``)."""

    def __init__(
        self, path: Path, fd: int, holder: Holder, on_release: Callable[[], None] | None = None, dir_fd: int = -1
    ) -> None:
        self.path, self._fd, self.holder, self._on_release, self._dir_fd = path, fd, holder, on_release, dir_fd
        held = os.fstat(dir_fd) if dir_fd >= 0 else None
        self.directory = (held.st_dev, held.st_ino) if held else None  # the leased directory's identity
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease {path}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError), self._lock:  # a filesystem hiccup; the next beat tries again
                if self.moved() is None:
                    self._restore()
                    os.utime(self._fd)

    def moved(self) -> str | None:
        """Why the directory at the lease's path is no longer the one leased (moved, removed, replaced), else None."""
        if self._dir_fd < 0:
            return None
        try:
            here = os.stat(self.path.parent)
        except FileNotFoundError:
            return f"{self.path.parent} was moved or removed while this process held it"
        if (here.st_dev, here.st_ino) != self.directory:
            return f"{self.path.parent} was replaced by another directory while this process held it"
        return None

    def check(self) -> None:
        """Raise when the leased directory was moved or replaced: its files would land elsewhere."""
        if reason := self.moved():
            raise DeeplabError(f"run dir: {reason}; stopped without writing into it")

    def _restore(self) -> None:
        """The lease file was removed or replaced: write our record at the path again (the directory's flock keeps
        every other process out meanwhile)."""
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        os.write(fd, self.holder.to_json().encode())
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd < 0:
            return
        self._stop.set()
        with self._lock:
            with contextlib.suppress(OSError):  # only our own record is removed (never one that replaced it)
                if Holder.from_json(_read(str(self.path))) == self.holder:
                    self.path.unlink()
            os.close(self._fd)  # drops the flock
            self._fd = -1
            if self._dir_fd >= 0:
                os.close(self._dir_fd)
                self._dir_fd = -1
        if self._on_release is not None:
            self._on_release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def current_holder(path: Path) -> Holder | None:
    """The live holder recorded in a lease file, else None (no file, released, or its holder is dead)."""
    try:
        holder, beat = Holder.from_json(path.read_text()), path.stat().st_mtime
    except OSError:
        return None
    return holder if holder is not None and holder.alive(beat) else None


def acquire(path: Path, what: str = "lease") -> Lease:
    """Take the lease on ``path`` (created, with its directory, when missing) or raise LeaseHeld naming the holder."""
    path = Path(path).absolute()
    me = Holder.current()
    made = missing_dirs(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        remove_empty_dirs(made)
        raise DeeplabError(f"{what} {path}: cannot create it ({err.strerror})") from None
    try:
        dir_fd = _lock_dir(path, what)
    except BaseException:
        remove_empty_dirs(made)
        raise
    try:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as err:
                why = "a symlink, never followed" if err.errno == errno.ELOOP else err.strerror
                raise DeeplabError(f"{what} {path}: cannot create it ({why})") from None
            try:
                if _lock(fd, path, me, what):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was removed or replaced while we waited: lock the one at the path now
    except BaseException:
        os.close(dir_fd)
        remove_empty_dirs(made)  # a refused or failed lease leaves no folder it made
        raise
    return Lease(path, fd, me, dir_fd=dir_fd)


def _lock_dir(path: Path, what: str) -> int:
    """flock the lease's directory; LeaseHeld when a live process holds it (its lease file may be gone)."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(dir_fd)
        raise LeaseHeld(_held(path, Holder.from_json(_read(str(path))), what)) from None
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            os.close(dir_fd)
            raise DeeplabError(f"{what} {path.parent}: flock failed ({err.strerror})") from None
    return dir_fd


def _lock(fd: int, path: Path, me: Holder, what: str) -> bool:
    """Lock ``fd`` and write our record; False when ``path`` no longer names the file behind ``fd``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LeaseHeld(_held(path, Holder.from_json(_read(str(path))), what)) from None
    except OSError as err:
        if err.errno not in _NO_FLOCK:
            raise DeeplabError(f"{what} {path}: flock failed ({err.strerror})") from None
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        return False
    other = Holder.from_json(_read(str(path)))
    if other is not None and other.alive(os.fstat(fd).st_mtime):  # flock was node-local (or is unsupported)
        raise LeaseHeld(_held(path, other, what))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.to_json().encode(), 0)
        os.fsync(fd)
    except OSError as err:  # a full disk: the file is ours (flocked, no live holder), so it goes too
        with contextlib.suppress(OSError):
            path.unlink()
        raise DeeplabError(f"{what} {path}: cannot write its holder record ({err.strerror})") from None
    if not _on_local_fs(path):
        time.sleep(VERIFY_S)
        now = Holder.from_json(_read(str(path)))
        if now != me:
            raise LeaseHeld(_held(path, now, what))
    return True


def _held(path: Path, holder: Holder | None, what: str) -> str:
    who = holder.describe() if holder else "another process (its record is being written)"
    since = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(holder.started)) if holder else ""
    return f"{what} {path.parent} is held by {who}{since}"


def hold_run_dir(run_dir: Path) -> Lease:
    """The training lease on ``run_dir``; a run directory that this call created and that stays empty is removed
    again on release (a run that fails at once leaves nothing behind)."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()

    def tidy() -> None:
        with contextlib.suppress(OSError):  # only the directory leased, never one that took its place since
            here = os.stat(run_dir)
            if created and (here.st_dev, here.st_ino) == lease.directory and not any(run_dir.iterdir()):
                run_dir.rmdir()

    lease = acquire(run_dir / LEASE_NAME, "run dir")
    lease._on_release = tidy
    return lease


F = TypeVar("F", bound=Callable[..., Any])


def holds_run_dir(train: F) -> F:
    """For ``train(cfg, run_dir, ...)``: rank 0 holds ``run_dir``'s lease for the whole call. When it is held
    elsewhere every rank raises LeaseHeld (the ranks agree on it, so none waits in a collective for rank 0)."""

    @functools.wraps(train)
    def wrapper(cfg: Any, run_dir: Path, *args: Any, **kwargs: Any) -> Any:
        from deeplab.distributed import any_rank, init_distributed

        info = init_distributed(kwargs.get("device") or cfg.train.device)
        lease, refused = None, None
        if info.is_main:
            try:
                lease = hold_run_dir(Path(run_dir))
            except DeeplabError as err:
                refused = err
        if any_rank(refused is not None, info.device):
            raise refused or LeaseHeld(f"run dir {run_dir}: rank 0 could not take its lease")
        key = Path(run_dir).absolute()
        if lease is not None:
            _HELD[key] = lease
        try:
            return train(cfg, run_dir, *args, **kwargs)
        finally:
            if lease is not None:
                _HELD.pop(key, None)
                lease.release()

    return wrapper  # type: ignore[return-value]


_HELD: dict[Path, Lease] = {}  # run dir → the lease ``holds_run_dir`` holds on it in this process


def check_run_dir(run_dir: Path) -> None:
    """Before writing into ``run_dir``: raise when this process leases it and it was moved or replaced meanwhile
    (the writes would land in whatever now sits at the path)."""
    if (lease := _HELD.get(Path(run_dir).absolute())) is not None:
        lease.check()

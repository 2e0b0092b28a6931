"""Atomic writes: an output appears whole or not at all, and inputs are never overwritten.

Work in progress lives beside its destination as `.NAME.PID.XXXX.partial[.suffix]`. A run killed
with SIGKILL cannot clean up, so every later write to the same destination first removes the
partials whose process is gone (and says so on stderr); partials of a live process are left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from datprl_edge.core.errors import ConfigError, OutputExistsError


@contextlib.contextmanager
def atomic_path(dest, *, overwrite: bool = True, protect=()):
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`.

    The temporary file keeps `dest`'s suffix so that libraries that pick a format from the
    name still work. On any exception the temporary file is removed and `dest` is untouched.
    `protect` lists input paths that `dest` must not be.
    """
    dest = check_output(dest, overwrite=overwrite, inputs=protect)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest.parent, dest.stem)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(dest.stem), suffix=f".partial{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp)
    mode = 0o666 & ~_umask()  # mkstemp (and safetensors' writer) make 0600; outputs get the usual mode
    os.chmod(tmp, mode)
    try:
        yield tmp
        os.chmod(tmp, mode)  # writers that replace the file bring their own mode
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(dest, *, overwrite: bool = False):
    """Yield a temporary folder beside `dest`; on success it replaces `dest` in one rename."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} exists; pass --overwrite or choose another output")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(dest.parent, dest.name)
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if dest.exists():
            swap_in(tmp, dest)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def partial_dir(parent, name: str) -> Path:
    """A new work folder `.NAME.PID.XXXX.partial` in `parent`, after removing stale ones of `name`."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(parent, name)
    return Path(tempfile.mkdtemp(prefix=_prefix(name), suffix=".partial", dir=parent))


def remove_stale_partials(parent, name: str, *, log=None) -> list[Path]:
    """Remove `.NAME.PID.*.partial*` files and folders in `parent` whose process no longer runs;
    one line per removal goes to `log` (default: stderr). Returns what was removed."""
    parent = Path(parent)
    # tempfile's names: prefix + 8 characters of [a-z0-9_] + suffix
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[a-z0-9_]{{8}}\.partial(\.[^/]*)?$")
    removed = []
    if not parent.is_dir():
        return removed
    for path in parent.iterdir():
        m = pattern.match(path.name)
        if not m or _alive(int(m.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
        (log or _note)(f"removed {path.name}, left in {parent} by a run that was killed")
    return removed


def _prefix(name: str) -> str:
    return f".{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process: not ours to judge
    return True


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def swap_in(src: Path, dest: Path) -> None:
    """Put the folder `src` where the existing `dest` is: `dest` is renamed aside first (rename
    cannot replace a non-empty folder), then removed once `src` is in place."""
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)


def write_bytes_atomic(dest, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text_atomic(dest, text: str) -> Path:
    return write_bytes_atomic(dest, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(dest, *, overwrite: bool, inputs=(), suffix: str | None = None, option: str = "") -> Path:
    """Refuse an output that is one of `inputs`, that exists without `overwrite`, or (with
    `suffix`) whose name does not end in it (the error names the command-line `option`)."""
    dest = Path(dest)
    check_not_input(dest, inputs)
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} exists; pass --overwrite or choose another output")
    if suffix is not None and dest.suffix.lower() != suffix:
        raise ConfigError(f"{option} takes a {suffix} path, got {dest}")
    return dest


def check_output_dir(path, option: str = "-o") -> Path:
    """An output folder may exist (outputs inside are checked one by one) but must not be a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{option} {path} is an existing file; give a folder for the outputs")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


def check_not_input(dest, inputs) -> None:
    """Refuse an output path that resolves to one of the inputs."""
    d = Path(dest).resolve()
    for src in inputs:
        if Path(src).resolve() == d:
            raise OutputExistsError(f"refusing to overwrite input {src}; choose another output path")

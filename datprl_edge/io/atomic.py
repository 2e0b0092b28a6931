"""Atomic writes: an output appears whole or not at all, and inputs are never overwritten."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ConfigError, OutputExistsError


@contextlib.contextmanager
def atomic_path(dest, *, overwrite: bool = True, protect=()):
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`.

    The temporary file keeps `dest`'s suffix so that libraries that pick a format from the
    name still work. On any exception the temporary file is removed and `dest` is untouched.
    `protect` lists input paths that `dest` must not be.
    """
    dest = check_output(dest, overwrite=overwrite, inputs=protect)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{dest.suffix}", dir=dest.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
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


def check_not_input(dest, inputs) -> None:
    """Refuse an output path that resolves to one of the inputs."""
    d = Path(dest).resolve()
    for src in inputs:
        if Path(src).resolve() == d:
            raise OutputExistsError(f"refusing to overwrite input {src}; choose another output path")

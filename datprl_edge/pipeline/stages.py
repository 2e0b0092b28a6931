"""A resumable stage runner: each stage's key is the sha256 of its name, code version, config, the
content hashes of its input files and the keys of the stages it depends on. A stage whose
`RUN/<stage>/stage.json` holds the same key (and whose outputs are all there) is skipped, so a
killed or repeated run picks up at the first stage that is not done. A stage writes into a
temporary folder that replaces `RUN/<stage>` only when it succeeds, stage.json included; its
`work` folder (for resumable state such as training checkpoints) survives a killed run."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from datprl_edge.core.errors import ConfigError, UnknownChoiceError
from datprl_edge.io.atomic import atomic_dir, remove_stale_partials, write_text_atomic

STAGE_FILE = "stage.json"
WORK_DIR = ".work"
STAGE_SCHEMA = "datprl-edge-stage/1"


@dataclasses.dataclass
class Stage:
    """`fn(ctx)` writes the stage's outputs under `ctx.out` and returns an info dict (a "summary"
    line is shown in the report). `inputs` maps labels to files or folders (or is a callable
    returning that mapping, resolved when the stage's turn comes, after its dependencies ran)."""

    name: str
    fn: Callable
    config: dict = dataclasses.field(default_factory=dict)
    inputs: object = dataclasses.field(default_factory=dict)
    deps: tuple = ()
    version: str = "1"  # bump when the stage's code changes what it produces


@dataclasses.dataclass
class StageContext:
    run_dir: Path
    name: str
    out: Path  # becomes RUN/<name> on success
    work: Path  # RUN/.work/<name>-<key>: kept until the stage succeeds, for resumable state
    key: str
    config: dict
    log: Callable

    def stage_dir(self, name: str) -> Path:
        """The finished output folder of an earlier stage."""
        return self.run_dir / name


@dataclasses.dataclass
class Outcome:
    name: str
    result: str  # "ran" or "skipped"
    key: str
    seconds: float
    info: dict


def sha256_path(path) -> str:
    """sha256 of a file, or of a folder (its files' relative paths and contents, in sorted order)."""
    from datprl_edge.io.checkpoint import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
        return h.hexdigest()
    raise ConfigError(f"stage input not found: {path}")


def stage_key(stage: Stage, inputs: dict, dep_keys: dict) -> str:
    payload = {"stage": stage.name, "version": stage.version, "config": stage.config,
               "inputs": {label: sha256_path(p) for label, p in sorted(inputs.items())},
               "deps": {d: dep_keys[d] for d in stage.deps}}
    try:
        text = json.dumps(payload, sort_keys=True, default=_json_default)
    except TypeError as e:
        raise ConfigError(f"stage {stage.name}: its config is not plain data ({e})") from None
    return hashlib.sha256(text.encode()).hexdigest()


def read_stage(run_dir, name: str) -> dict | None:
    path = Path(run_dir) / name / STAGE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_done(run_dir, name: str, key: str) -> bool:
    """True when RUN/<name> holds a finished stage with this key and all of its recorded outputs."""
    rec = read_stage(run_dir, name)
    if not rec or rec.get("key") != key or rec.get("status") != "done":
        return False
    folder = Path(run_dir) / name
    for rel, size in (rec.get("outputs") or {}).items():
        f = folder / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
    return True


def expand_force(stages: list, force) -> set:
    """Stage names to re-run: the forced ones ("all" for every stage) and every stage depending on them."""
    names = [s.name for s in stages]
    forced = set()
    for f in force or ():
        if f == "all":
            return set(names)
        if f not in names:
            raise UnknownChoiceError("stage", f, names + ["all"])
        forced.add(f)
    for s in stages:  # stages are in dependency order
        if any(d in forced for d in s.deps):
            forced.add(s.name)
    return forced


def run_stages(run_dir, stages: list, *, force=(), until: str | None = None, log=print,
               on_stage=None) -> list[Outcome]:
    """Run `stages` in order into `run_dir`, skipping those already done with the same key.

    `until`: stop after this stage. `on_stage(outcome)` is called after each stage."""
    run_dir = Path(run_dir)
    _check_order(stages)
    if until is not None and until not in [s.name for s in stages]:
        raise UnknownChoiceError("stage", until, [s.name for s in stages])
    forced = expand_force(stages, force)
    run_dir.mkdir(parents=True, exist_ok=True)
    keys: dict = {}
    outcomes = []
    with _lock(run_dir):
        for stage in stages:
            inputs = stage.inputs() if callable(stage.inputs) else dict(stage.inputs)
            key = stage_key(stage, inputs, keys)
            keys[stage.name] = key
            if stage.name not in forced and is_done(run_dir, stage.name, key):
                rec = read_stage(run_dir, stage.name) or {}
                outcome = Outcome(stage.name, "skipped", key, 0.0, rec.get("info") or {})
                log(f"[{stage.name}] up to date (key {key[:12]}), skipped")
            else:
                outcome = _run_one(run_dir, stage, inputs, key, log)
            outcomes.append(outcome)
            if on_stage is not None:
                on_stage(outcome)
            if stage.name == until:
                break
    return outcomes


def _run_one(run_dir: Path, stage: Stage, inputs: dict, key: str, log) -> Outcome:
    remove_stale_partials(run_dir, stage.name, log=lambda text: log(f"[{stage.name}] {text}"))
    work = run_dir / WORK_DIR / f"{stage.name}-{key[:16]}"
    for old in (run_dir / WORK_DIR).glob(f"{stage.name}-*"):
        if old != work:
            shutil.rmtree(old, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    log(f"[{stage.name}] running (key {key[:12]})")
    started, t0, cpu0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter(), cpu_seconds()
    with atomic_dir(run_dir / stage.name, overwrite=True) as tmp:
        ctx = StageContext(run_dir, stage.name, tmp, work, key, stage.config, log)
        info = stage.fn(ctx) or {}
        seconds = round(time.perf_counter() - t0, 2)
        cpu = round(cpu_seconds() - cpu0, 2)
        outputs = {p.relative_to(tmp).as_posix(): p.stat().st_size
                   for p in sorted(tmp.rglob("*")) if p.is_file()}
        record = {"schema": STAGE_SCHEMA, "stage": stage.name, "status": "done", "key": key,
                  "version": stage.version, "config": stage.config,
                  "inputs": {label: str(p) for label, p in inputs.items()}, "deps": list(stage.deps),
                  "started": started, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds,
                  "cpu_seconds": cpu, "outputs": outputs, "info": info}
        (tmp / STAGE_FILE).write_text(json.dumps(record, indent=2, default=_json_default) + "\n",
                                      encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    summary = f": {info['summary']}" if info.get("summary") else ""
    log(f"[{stage.name}] done in {seconds:.1f} s ({cpu:.0f} s CPU){summary}")
    return Outcome(stage.name, "ran", key, seconds, info)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (bench workers)."""
    try:
        import resource
    except ImportError:  # Windows
        return time.process_time()
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def write_json(path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _check_order(stages: list) -> None:
    seen = set()
    for s in stages:
        if s.name in seen:
            raise ConfigError(f"stage {s.name} is listed twice")
        missing = [d for d in s.deps if d not in seen]
        if missing:
            raise ConfigError(f"stage {s.name} depends on {', '.join(missing)}, which must come before it")
        seen.add(s.name)


@contextlib.contextmanager
def _lock(run_dir: Path):
    """One pipeline per run folder at a time (advisory lock; released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(run_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another pipeline is running in {run_dir}; wait for it or use another "
                              "run folder") from None
        yield
    finally:
        os.close(fd)


def _json_default(v):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (set, tuple)):
        return list(v)
    raise TypeError(f"{type(v).__name__} is not JSON data")


@contextlib.contextmanager
def limit_threads(n: int):
    """Limit torch and the runtimes (they read OMP_NUM_THREADS) to n threads; 0 leaves the defaults.
    Small images on a few busy cores run far faster single-threaded than with spinning thread pools."""
    if not n:
        yield
        return
    import torch

    old_env, old_torch = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        if old_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old_env

"""The report's "Edge targets" section: the headline benchmark targets (benchmarks/run_headline.py),
measured against their goals, with what limits each missed one. Read from the run folder's
`headline/*.json`, else from the results committed beside the toolkit (source checkout)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from datprl_edge.core.errors import ConfigError
from datprl_edge.report import html as H
from datprl_edge.report.tables import Table

SUITES = ("speedup_256", "int8_vs_fp32", "ct_512", "frame_4k", "frontier")
TITLE = "Edge targets"


@dataclasses.dataclass
class Headline:
    files: list  # paths read, in suite order
    where: str  # "run folder" or "toolkit"
    docs: list  # their contents
    table: Table

    def html(self) -> str:
        if not self.docs:
            return f'<h2 id="headline">{TITLE}</h2>\n<p class="caption">{H.e(self.table.caption)}</p>\n'
        return H.table_html(self.table)

    def markdown(self) -> str:
        if not self.docs:
            return f"## {TITLE}\n\n{self.table.caption}\n"
        return H.table_md(self.table)

    def to_dict(self) -> dict:
        return {"source": self.where, "files": [str(p) for p in self.files], "caption": self.table.caption,
                "header": self.table.header, "rows": self.table.rows,
                "targets": [dict(t, suite=d.get("suite")) for d in self.docs for t in d.get("targets", [])],
                "measured_on": [_context(d) for d in self.docs]}


def committed_results_dir() -> Path:
    import datprl_edge

    return Path(datprl_edge.__file__).resolve().parent.parent / "benchmarks" / "results"


def find_headline_files(run_dir, committed: Path | None = None) -> tuple[list, str]:
    """(paths, where): the run folder's headline/*.json if any, else the committed suite results."""
    own = sorted((p for p in (Path(run_dir) / "headline").glob("*.json") if p.is_file()),
                 key=lambda p: (SUITES.index(p.stem) if p.stem in SUITES else len(SUITES), p.name))
    if own:
        return own, "run folder"
    folder = committed_results_dir() if committed is None else committed
    return [folder / f"{s}.json" for s in SUITES if (folder / f"{s}.json").is_file()], "toolkit"


def load_headline(run_dir, committed: Path | None = None) -> Headline:
    files, where = find_headline_files(run_dir, committed)
    docs = []
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read {path}: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("targets"), list):
            raise ConfigError(f"{path} is not a headline benchmark result (no `targets` list)")
        docs.append(doc)
    return Headline(files, where, docs, headline_table(files, where, docs))


def headline_table(files: list, where: str, docs: list) -> Table:
    rows = []
    for doc in docs:
        for t in doc["targets"]:
            unit = t.get("unit")
            rows.append([f"{doc.get('suite', '?')}: {t.get('name', '')}", _num(t.get("measured"), unit),
                         f"{_direction(t)} {_num(t.get('target'), unit)}",
                         "met" if t.get("met") else f"missed by {t.get('missed_by', '?')}",
                         t.get("limits") or ("-" if t.get("met") else "not recorded in the results file")])
    return Table("headline", TITLE, _caption(files, where, docs),
                 ["target", "measured", "goal", "met / missed by", "what limits it"], rows, numeric=(1,))


def _caption(files: list, where: str, docs: list) -> str:
    if not docs:
        return ("No headline benchmark results: the run folder has no headline/*.json and no "
                "benchmarks/results/{" + ",".join(SUITES) + "}.json sit beside the toolkit.")
    src = ("the run folder's headline/ files" if where == "run folder"
           else f"the results committed with the toolkit ({files[0].parent})")
    parts = []
    for path, doc in zip(files, docs):
        c = _context(doc)
        parts.append(f"{path.name} (created {c['created']}, {c['cpus']} CPUs, 1/5/15-minute load average "
                     f"{_load(c['load_average_start'])} at start, {_load(c['load_average_end'])} at end)")
    text = (f"From {src}, written by benchmarks/run_headline.py: " + "; ".join(parts) + ". Targets are "
            "figures to report, never test assertions. \"What limits it\" is computed from the same run "
            "(OpenVINO per-layer counters, counted MACs, tiling).")
    busy = [p.name for p, d in zip(files, docs) if _busy(_context(d))]
    if busy:
        text += (f" The machine was shared while {', '.join(busy)} were measured (1-minute load above the "
                 "CPU count), so those latencies are likely higher than on an idle machine.")
    return text


def _context(doc: dict) -> dict:
    keys = ("load_average_start", "load_average_end")
    return {"suite": doc.get("suite"), "created": doc.get("created", "?"), "cpus": doc.get("cpus", "?"),
            **{k: doc.get(k) for k in keys}}


def _busy(c: dict) -> bool:
    cpus = c["cpus"] if isinstance(c["cpus"], int) else None
    loads = [v[0] for v in (c["load_average_start"], c["load_average_end"]) if v]
    return bool(cpus and loads and max(loads) > cpus)


def _load(v) -> str:
    return "/".join(f"{x:g}" for x in v) if v else "-"


def _direction(t: dict) -> str:
    higher = t.get("higher_is_better")
    if higher is None:  # results written before the field existed: speed-ups are "x", the rest are costs
        higher = t.get("unit") == "x"
    return "at least" if higher else "at most"


def _num(v, unit) -> str:
    if v is None:
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return f"{text} {unit or ''}".strip()

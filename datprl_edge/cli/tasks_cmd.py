"""`datprl-edge tasks`: the task catalogue (ids, domains, degradations) and named task sets."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser("tasks", help="list the restoration tasks and task sets")
    p.add_argument("--set", dest="task_set", metavar="NAME",
                   help="only the tasks of a set (9task, natural5, all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true", help="also show what severity 0..1 means")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from datprl_edge.cli.zoo_cmd import format_table
    from datprl_edge.data.tasks import TASK_SETS, list_tasks

    tasks = list_tasks(args.task_set)
    if args.json:
        print(json.dumps({
            "tasks": [{"id": t.id, "domain": t.domain, "description": t.description,
                       "default_severity": t.default_severity, "severity_scale": t.severity_scale,
                       "grayscale": t.grayscale, "stochastic": t.stochastic} for t in tasks],
            "sets": {k: list(v) for k, v in TASK_SETS.items()},
        }, indent=2))
        return 0
    extra = ("severity 0..1 means",) if args.verbose else ()
    rows = [("task", "domain", "severity", "description", *extra)]
    rows += [(t.id, t.domain, f"{t.default_severity:g}", t.description)
             + ((t.severity_scale,) if args.verbose else ()) for t in tasks]
    print(format_table(rows))
    print("\nsets: " + "; ".join(f"{k} ({len(v)} tasks)" for k, v in TASK_SETS.items()))
    return 0

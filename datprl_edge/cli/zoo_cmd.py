"""`datprl-edge zoo`: the model zoo table (registered teachers and students)."""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser("zoo", help="list the registered models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from datprl_edge.models.registry import list_models

    specs = list_models()
    if args.json:
        print(json.dumps([{"name": s.name, "arch": s.arch, "role": s.role, "description": s.description}
                          for s in specs], indent=2))
        return 0
    rows = [("name", "role", "architecture", "description")]
    rows += [(s.name, s.role, s.arch, s.description) for s in specs]
    print(format_table(rows))
    return 0


def format_table(rows) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

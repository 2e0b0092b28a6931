"""The self-contained HTML page (inline CSS, figures as base64 PNG, no network resource) and the
Markdown version of the same tables and recommendation."""

from __future__ import annotations

import base64
import html

from datprl_edge.report.tables import Table

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;margin:24px auto;max-width:1320px;
color:#1b1f24;line-height:1.45;padding:0 16px}
h1{font-size:26px;margin-bottom:2px}h2{font-size:20px;border-bottom:1px solid #d0d7de;padding-bottom:4px;
margin-top:34px}
.meta{color:#57606a;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 4px;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.best td{background:#fff4d6}td.bad{color:#cf222e;background:#ffebe9;font-weight:600}
.thumbs{display:flex;gap:10px;flex-wrap:wrap;margin:6px 0 14px}.thumbs figure{margin:0;font-size:12px}
.thumbs img{width:128px;height:128px;image-rendering:pixelated;display:block}
.caption{color:#57606a;font-size:12.5px;margin:2px 0 12px}
.rec{border:2px solid #d4a72c;background:#fff8e5;border-radius:6px;padding:12px 16px;margin:14px 0}
.rec.none{border-color:#cf222e;background:#ffebe9}
.rec b.art{font-size:17px}
img.fig{max-width:100%;height:auto;display:block;margin:8px 0}
.wide{overflow-x:auto}
ul.src{font-size:13px}code{background:#f6f8fa;padding:1px 4px;border-radius:3px}
"""


def e(text) -> str:
    return html.escape(str(text), quote=True)


def table_html(t: Table, highlight: str | None = None) -> str:
    head = "".join(f"<th>{e(h).replace('/', '/<wbr>')}</th>" for h in t.header)  # task ids may wrap
    body = []
    for r, row in enumerate(t.rows):
        cls = ' class="best"' if highlight is not None and row and row[0] == highlight else ""
        cells = "".join(_td(t, r, i, c) for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    if not body:
        body.append(f'<tr><td colspan="{len(t.header)}">(no rows)</td></tr>')
    return (f'<h2 id="{e(t.key)}">{e(t.title)}</h2>\n<div class="wide"><table><thead><tr>{head}</tr></thead>'
            "<tbody>\n" + "\n".join(body)
            + f'\n</tbody></table></div>\n<p class="caption">{e(t.caption)}</p>\n')


def _td(t: Table, r: int, i: int, text) -> str:
    cls = " ".join(c for c in ("num" if i in t.numeric else "", "bad" if (r, i) in t.flagged else "") if c)
    return f'<td class="{cls}">{e(text)}</td>' if cls else f"<td>{e(text)}</td>"


def thumbs_html(images: list, caption: str) -> str:
    """A row of small PNGs with labels: `images` is [(label, png bytes)]."""
    figs = "".join(f'<figure><img alt="{e(label)}" src="data:image/png;base64,'
                   f'{base64.b64encode(png).decode("ascii")}"><figcaption>{e(label)}</figcaption></figure>'
                   for label, png in images)
    return f'<p class="caption">{e(caption)}</p><div class="thumbs">{figs}</div>\n'


def image_html(png: bytes | None, alt: str, missing: str) -> str:
    if not png:
        return f'<p class="caption">{e(missing)}</p>\n'
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="fig" alt="{e(alt)}" src="data:image/png;base64,{data}">\n'


def page(*, title: str, meta_lines: list, recommendation, sections: list) -> str:
    """`sections`: HTML fragments in order."""
    rec = recommendation
    if rec.artifact:
        rec_html = (f'<div class="rec"><div>Recommended operating point</div><b class="art">{e(rec.artifact)}'
                    f"</b><p>{e(rec.reason)}</p></div>")
    else:
        rec_html = ('<div class="rec none"><div>No recommended operating point</div>'
                    f"<p>{e(rec.reason)}</p></div>")
    meta = "".join(f'<div class="meta">{e(m)}</div>' for m in meta_lines)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>\n<h1>{e(title)}</h1>\n{meta}\n"
            f"{rec_html}\n" + "".join(sections) + "</body></html>\n")


def table_md(t: Table) -> str:
    def cell(c):
        return str(c).replace("|", "\\|").replace("\n", " ")

    lines = [f"## {t.title}", "", "| " + " | ".join(cell(h) for h in t.header) + " |",
             "|" + "|".join("---:" if i in t.numeric else "---" for i in range(len(t.header))) + "|"]
    lines += ["| " + " | ".join(cell(c) + (" **below input**" if (r, i) in t.flagged else "")
                                for i, c in enumerate(row)) + " |" for r, row in enumerate(t.rows)]
    return "\n".join(lines + ["", f"_{t.caption}_", ""])

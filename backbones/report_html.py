"""report/index.html: the report as one self-contained page (plots embedded, tables sortable, no server and no
network), made from report.md itself, so the page and the markdown can never say different things.

Only the markdown that report.py writes is understood: headings, paragraphs, bullet lists, tables, images, bold
and code spans. Sorting: click a column heading (again to reverse); `#sort=T:C:desc` in the address sorts table T
by column C when the page opens (numbers compare as numbers: '87.3 ± 1.2' sorts as 87.3).
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 4em; color: #1d1d1f; }
h1 { border-bottom: 2px solid #ddd; } h2 { margin-top: 2.2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; white-space: nowrap; }
th { background: #f4f4f6; cursor: pointer; user-select: none; position: sticky; top: 0; }
th.sorted-asc::after { content: " \\25B2"; } th.sorted-desc::after { content: " \\25BC"; }
tr:nth-child(even) td { background: #fafafb; }
img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
code { background: #f4f4f6; padding: 0 3px; border-radius: 3px; }
nav { background: #f8f8fa; padding: .5em 1em; border-radius: 6px; } nav li { margin: .1em 0; }
"""

SCRIPT = """
function cellValue(cell) {
  const text = cell.textContent.trim();
  const number = text.match(/^[-+]?\\d+(\\.\\d+)?([eE][-+]?\\d+)?/);
  return number ? [0, parseFloat(number[0])] : [1, text.toLowerCase()];
}
function sortTable(table, column, descending) {
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const [ka, va] = cellValue(a.cells[column]), [kb, vb] = cellValue(b.cells[column]);
    const order = ka !== kb ? ka - kb : (va < vb ? -1 : va > vb ? 1 : 0);
    return descending ? -order : order;
  });
  rows.forEach(row => body.appendChild(row));
  table.querySelectorAll("th").forEach((th, i) => {
    th.classList.remove("sorted-asc", "sorted-desc");
    if (i === column) th.classList.add(descending ? "sorted-desc" : "sorted-asc");
  });
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((th, column) => th.addEventListener("click", () =>
    sortTable(table, column, th.classList.contains("sorted-asc"))));
});
const wanted = location.hash.match(/^#sort=(\\d+):(\\d+)(:desc)?$/);
if (wanted) {
  sortTable(document.querySelectorAll("table.sortable")[+wanted[1]], +wanted[2], Boolean(wanted[3]));
}
"""


ESCAPED = re.compile(r"\\(.)")  # a backslash-escaped character (runtable.md): taken literally
PLACEHOLDER = "\ue000{}\ue001"  # private-use characters stand for escaped ones while the spans are found


def inline(text: str) -> str:
    """HTML-escaped text with the markdown's **bold** and `code` spans; backslash-escaped characters are shown as
    themselves and never start or end a span."""
    literal: list[str] = []

    def hide(match: re.Match) -> str:
        literal.append(match.group(1))
        return PLACEHOLDER.format(len(literal) - 1)

    text = html.escape(ESCAPED.sub(hide, text.replace("\ue000", "").replace("\ue001", "")), quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
    return re.sub("\ue000(\\d+)\ue001", lambda m: html.escape(literal[int(m.group(1))], quote=False), text)


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def image(line: str, folder: Path) -> str:
    """An image line as <img> with the PNG inside it, for a plot report.py drew: a .png file named by a relative
    path inside the report's folder (which report.py builds anew each time) and resolving inside it. Whatever
    else a line names (a path outside, a folder, a link out) is said and never read."""
    match = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
    if match is None:
        return prose([line])
    alt, path = match.groups()
    file = folder / path
    ours = not Path(path).is_absolute() and ".." not in Path(path).parts and file.suffix == ".png"
    ours = ours and folder.resolve() in file.resolve().parents
    if not (ours and file.is_file()):
        reason = "is missing" if ours and not file.exists() else "is not a plot of this report; not embedded"
        return f"<p><em>{html.escape(alt)}: {html.escape(path)} {reason}</em></p>"
    data = base64.b64encode(file.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" title="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def cells(line: str) -> list[str]:
    """A table row's cells: the text between its unescaped pipes (a name's own '|' is escaped as '\\|')."""
    found, current, index, text = [], "", 0, line.strip()
    while index < len(text):
        if text[index] == "\\" and index + 1 < len(text):
            current += text[index : index + 2]
            index += 2
            continue
        if text[index] == "|":
            found.append(current.strip())
            current = ""
        else:
            current += text[index]
        index += 1
    found.append(current.strip())
    return found[1:-1]  # the row's own first and last pipes leave nothing outside them


def table(lines: list[str]) -> str:
    head = "".join(f"<th>{inline(cell)}</th>" for cell in cells(lines[0]))
    rows = "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(line)) + "</tr>" for line in lines[2:])
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def prose(block: list[str]) -> str:
    """Paragraph lines and bullet lines ('- '), in their order."""
    out, paragraph, items = [], [], []
    for line in [*block, ""]:
        if line.startswith("- "):
            if paragraph:
                out.append(f"<p>{inline(' '.join(paragraph))}</p>")
                paragraph = []
            items.append(f"<li>{inline(line[2:])}</li>")
            continue
        if items:
            out.append(f"<ul>{''.join(items)}</ul>")
            items = []
        if line:
            paragraph.append(line)
    if paragraph:
        out.append(f"<p>{inline(' '.join(paragraph))}</p>")
    return "".join(out)


def blocks(markdown: str) -> list[list[str]]:
    """The markdown cut into blocks of consecutive non-empty lines (a heading is a block of its own)."""
    found, current = [], []
    for line in markdown.splitlines():
        if not line.strip() or line.startswith("#"):
            if current:
                found.append(current)
            current = [line] if line.startswith("#") else []
            if line.startswith("#"):
                found.append(current)
                current = []
        else:
            current.append(line)
    if current:
        found.append(current)
    return found


def to_html(markdown: str, folder: Path) -> str:
    """The body of the page: report.md's blocks as HTML, with a table of contents of its sections."""
    parts, contents = [], []
    for block in blocks(markdown):
        first = block[0]
        if first.startswith("#"):
            level = len(first) - len(first.lstrip("#"))
            title = first.lstrip("#").strip()
            anchor = slugify(title)
            if level == 2:
                contents.append(f'<li><a href="#{anchor}">{inline(title)}</a></li>')
            parts.append(f'<h{level} id="{anchor}">{inline(title)}</h{level}>')
        elif first.startswith("|"):
            parts.append(table(block))
        elif first.startswith("!["):
            parts.append("<div>" + "".join(image(line, folder) for line in block) + "</div>")
        else:
            parts.append(prose(block))
    nav = f"<nav><strong>Contents</strong><ul>{''.join(contents)}</ul></nav>" if contents else ""
    if parts and parts[0].startswith("<h1"):
        return parts[0] + (parts[1] if len(parts) > 1 else "") + nav + "".join(parts[2:])
    return nav + "".join(parts)


def write_html(markdown: str, folder: Path) -> Path:
    """index.html in `folder`, the folder report.md and its plots are in."""
    body = to_html(markdown, folder)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Backbone comparison</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
        f"<body>{body}<script>{SCRIPT}</script></body></html>\n"
    )
    path = folder / "index.html"
    path.write_text(page)
    return path

"""The text of the rows of an HTML table, found by its class (the pages' tables carry one)."""

from __future__ import annotations

from html.parser import HTMLParser


class _Rows(HTMLParser):
    """The text of each row of the tables with a given class."""

    def __init__(self, cls: str) -> None:
        super().__init__()
        self.cls, self.depth, self.rows = cls, 0, []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.depth += 1 if (dict(attrs).get("class") == self.cls or self.depth) else 0
        elif self.depth and tag == "tr":
            self._row = []
        elif self.depth and tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows(html: str, cls: str) -> list[list[str]]:
    p = _Rows(cls)
    p.feed(html)
    return p.rows

"""The SVG plot: well-formed XML, bands and spans where their values say, points scaled into the
plot area, names escaped, long series thinned without losing a spike."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from agent.web import svg

NS = {"s": "http://www.w3.org/2000/svg"}
HOUR = 3_600_000


def _parse(plot: svg.Plot) -> ET.Element:
    return ET.fromstring(svg.render(plot))  # raises on anything that is not well-formed XML


def _points(root: ET.Element) -> list[list[tuple[float, float]]]:
    out = []
    for line in root.iterfind(".//s:polyline[@class='series']", NS):
        pairs = [p.split(",") for p in line.attrib["points"].split()]
        out.append([(float(x), float(y)) for x, y in pairs])
    return out


def _plot(**kw: object) -> svg.Plot:
    base: dict[str, object] = {
        "title": "freezer-van: temperatures",
        "unit": "°C",
        "series": [svg.Series("cabinet", [(0, -30.0), (HOUR, -20.0), (2 * HOUR, -30.0)])],
    }
    base.update(kw)
    return svg.Plot(**base)  # type: ignore[arg-type]


def test_valid_xml_with_title_and_one_polyline_per_series() -> None:
    plot = _plot(
        series=[
            svg.Series("fridge", [(0, 4.0), (HOUR, 5.0)]),
            svg.Series("freezer", [(0, -18.0), (HOUR, -17.0)]),
        ]
    )
    root = _parse(plot)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.find("s:title", NS).text == "freezer-van: temperatures"  # type: ignore[union-attr]
    names = [p.attrib["data-name"] for p in root.iterfind(".//s:polyline", NS)]
    assert names == ["fridge", "freezer"]


def test_points_are_scaled_into_the_plot_area() -> None:
    plot = _plot()
    top, right, bottom, left = plot.margins
    (pts,) = _points(_parse(plot))
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    assert xs[0] == left and xs[-1] == plot.width - right  # first and last time at the edges
    assert xs[1] == (xs[0] + xs[2]) / 2  # time is linear
    assert all(top <= y <= plot.height - bottom for y in ys)
    assert ys[1] < ys[0] == ys[2]  # warmer is higher up
    s = svg.scale_of(plot)
    assert abs(s.y(-20.0) - ys[1]) < 0.06 and abs(s.y(-30.0) - ys[0]) < 0.06


def test_bands_draw_the_limits_near_the_data_and_tint_beyond_them() -> None:
    band = svg.Band("cabinet alarm", low=-80.0, high=-25.0)
    plot = _plot(bands=[band])
    root = _parse(plot)
    (g,) = root.iterfind(".//s:g[@class='band']", NS)
    assert g.attrib["data-high"] == "-25" and g.attrib["data-low"] == "-80"
    lines = g.findall("s:line[@class='limit']", NS)
    # -25 is within the data's reach and drawn; -80 C is far below readings at -30..-20 C: it is
    # left out of the scale (it would flatten the curve) and no line is drawn for it.
    assert len(lines) == 1
    s = svg.scale_of(plot)
    assert float(lines[0].attrib["y1"]) == round(s.y(-25.0), 1)
    texts = [t.text for t in g.iterfind("s:text", NS)]
    assert texts == ["cabinet alarm: above -25 °C"]
    zones = g.findall("s:rect[@class='alarm-zone']", NS)
    above = zones[0]
    assert float(above.attrib["y"]) == s.y0  # the zone above the high limit reaches the top
    assert abs(float(above.attrib["height"]) - (s.y(-25.0) - s.y0)) < 0.2


def test_a_limit_beyond_the_readings_still_widens_the_scale_when_close() -> None:
    plot = _plot(
        series=[svg.Series("fridge", [(0, 4.0), (HOUR, 5.0)])],
        bands=[svg.Band("fridge alarm", high=8.0)],
    )
    s = svg.scale_of(plot)
    assert s.v1 > 8.0 and s.v0 < 4.0


def test_spans_shade_their_time_range() -> None:
    plot = _plot(spans=[svg.Span("van: above -25 C", HOUR // 2, HOUR)])
    root = _parse(plot)
    (g,) = root.iterfind(".//s:g[@class='span']", NS)
    rect = g.find("s:rect", NS)
    assert rect is not None
    s = svg.scale_of(plot)
    assert float(rect.attrib["x"]) == round(s.x(HOUR // 2), 1)
    assert abs(float(rect.attrib["width"]) - (s.x(HOUR) - s.x(HOUR // 2))) < 0.2
    assert g.attrib["data-start"] == str(HOUR // 2) and g.attrib["data-end"] == str(HOUR)


def test_names_are_escaped() -> None:
    evil = '<script>alert("x")</script> & "quotes"'
    plot = _plot(
        title=evil,
        series=[svg.Series(evil, [(0, 1.0), (HOUR, 2.0)])],
        bands=[svg.Band(evil, high=2.5)],
        spans=[svg.Span(evil, 0, HOUR)],
    )
    text = svg.render(plot)
    assert "<script" not in text
    root = ET.fromstring(text)
    assert root.find("s:title", NS).text == evil  # type: ignore[union-attr]
    assert root.find(".//s:polyline", NS).attrib["data-name"] == evil  # type: ignore[union-attr]


def test_long_series_are_thinned_and_keep_their_extremes() -> None:
    pts = [(i * 1000, 0.0) for i in range(20_000)]
    pts[12_345] = (12_345_000, 9.0)  # a one-sample spike
    thinned = svg.thin(pts)
    assert len(thinned) <= svg.MAX_POINTS + 2
    assert (12_345_000, 9.0) in thinned
    assert thinned == sorted(thinned)
    root = _parse(_plot(series=[svg.Series("long", pts)]))
    line = root.find(".//s:polyline", NS)
    assert line is not None and line.attrib["data-points"] == "20000"


def test_an_empty_plot_is_still_valid() -> None:
    root = _parse(_plot(series=[]))
    assert root.findall(".//s:polyline", NS) == []

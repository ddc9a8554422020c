"""fastscale.tables.format_table: columns as wide as their widest cell, names left, numbers right."""

from fastscale.tables import format_table


def test_columns_align_on_their_widest_cell():
    text = format_table(["op", "ms"], [["attention", "1.5"], ["ce", "12.25"]])
    assert text.splitlines() == [
        "op            ms",
        "---------  -----",
        "attention    1.5",
        "ce         12.25",
    ]


def test_a_header_wider_than_its_cells_sets_the_width():
    assert format_table(["name", "throughput"], [["x", "1"]]).splitlines()[2] == "x              1"

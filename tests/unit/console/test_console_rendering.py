"""Pieces of console pages that need no server: the side-by-side diff of a unified diff, and
the SVG charts (readable by screen readers, one unit per axis)."""

from services.console.charts import IntervalRow, histogram, interval_chart
from services.console.pages.prompts import side_by_side

UNIFIED = """\
--- ask@1
+++ ask@2
@@ -1,4 +1,5 @@
 messages:
-- role: system
-  content: Be brief.
+- role: system
+  content: Be very brief.
+  name: x
 variables: []
"""


def test_side_by_side_pairs_removed_and_added_lines() -> None:
    rows = side_by_side(UNIFIED)
    assert [row.kind for row in rows] == ["hunk", "same", "changed", "changed", "added", "same"]
    changed = rows[3]
    assert (changed.old_number, changed.old) == (3, "  content: Be brief.")
    assert (changed.new_number, changed.new) == (3, "  content: Be very brief.")
    added = rows[4]
    assert (added.old, added.new_number, added.new) == (None, 4, "  name: x")
    assert (rows[5].old_number, rows[5].new_number) == (4, 5)


def test_interval_chart_is_an_image_with_its_values_described() -> None:
    svg = str(
        interval_chart(
            [IntervalRow("answer <ok>", 0.75, 0.3, 0.95, "good"), IntervalRow("format", 0.5)],
            title="Mean score",
            axis_label="score (0 to 1)",
            domain=(0.0, 1.0),
            reference=0.5,
        )
    )
    assert svg.startswith("<svg")
    assert 'role="img"' in svg
    assert "<title" in svg
    assert "Mean score" in svg
    assert "answer &lt;ok&gt;: 0.75 (interval 0.3 to 0.95)" in svg
    assert "format: 0.5" in svg
    assert "stroke-dasharray" in svg  # the reference line


def test_histogram_counts_every_value_in_its_bin() -> None:
    svg = str(histogram([1.0, 1.05, 1.9, 2.0], title="Latency", axis_label="seconds", bins=2))
    assert "4 values." in svg
    assert svg.count("<rect") == 2

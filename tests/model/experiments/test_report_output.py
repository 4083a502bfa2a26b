from model.experiments.report_output import markdown_table, pyplot


def test_markdown_table_has_one_separator_cell_per_column_and_one_line_per_row():
    assert markdown_table(["a", "b"], [[1, "x"], [2.5, None]]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | None |"
    assert markdown_table(["only"], []) == "| only |\n|---|"


def test_figures_are_drawn_off_screen():
    assert pyplot().get_backend().lower() == "agg"

"""The command line's output helper: nothing cut, in a terminal of any width or through a pipe."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from secure_infer._errors import SecureInferError
from secure_infer._output import (
    Output,
    Progress,
    TextTable,
    estimate_left,
    fit_widths,
    format_seconds,
    report_table,
)

NUMBERS = ["0.9689", "1.50e-03", "12,345,678", "0.0147", "123.4"]
REFUSAL = ("not supported: the TenSEAL backend cannot run softmax attention (Softmax at encoder.0.attn) "
           "because CKKS has no division")


def _table() -> TextTable:
    table = TextTable("TenSEAL CKKS: batch mode over 450 test inputs, latency mode per image")
    for col in ("model", "enc acc", "max abs err", "params", "batch ms/img", "latency ms/img", "approximated"):
        table.add_column(col, right=col not in ("model", "approximated"))
    table.add_row("cryptonets_with_a_long_name", *NUMBERS, "none (exact)")
    table.add_row("vit", "-", "-", "-", "-", "-", REFUSAL)
    table.notes.append("[1] a note with brackets that is not rich markup")
    return table


def _output(*, terminal: bool, width: int) -> tuple[Output, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=width, color_system=None, _environ={})
    status = Console(file=err, force_terminal=False, width=width, _environ={})
    return Output(console, status), out, err


def test_fit_widths() -> None:
    assert fit_widths([3, 4], [5, 6], 20) == [5, 6]  # everything at its natural width
    assert fit_widths([3, 4], [5, 6], 6) is None  # not even the longest words fit
    widths = fit_widths([3, 4, 2], [30, 4, 10], 20)
    assert widths is not None and sum(widths) == 20
    assert all(lo <= w <= hi for w, lo, hi in zip(widths, [3, 4, 2], [30, 4, 10], strict=True))


def test_markdown_is_aligned_escaped_and_complete() -> None:
    table = TextTable("t")
    table.add_column("name")
    table.add_column("max |err|", right=True)
    table.add_row("a", "1.5e-03")
    lines = table.markdown().splitlines()
    assert lines == ["| name | max \\|err\\| |", "|:-----|------------:|", "| a    |     1.5e-03 |"]
    assert table.markdown(aligned=False).splitlines()[1] == "|---|---:|"
    with pytest.raises(SecureInferError, match="2 columns"):
        table.add_row("only one")


def test_piped_output_is_markdown_with_every_figure_on_its_row() -> None:
    output, out, _ = _output(terminal=False, width=80)
    assert output.plain
    output.table(_table())
    text = out.getvalue()
    assert "…" not in text and "\x1b" not in text
    row = next(line for line in text.splitlines() if "cryptonets_with_a_long_name" in line)
    assert all(n in row for n in NUMBERS), row
    assert any(REFUSAL in line and line.startswith("| vit") for line in text.splitlines())
    assert "[1] a note with brackets that is not rich markup" in text


@pytest.mark.parametrize("width", [200, 120, 100, 85, 84, 60, 40])
def test_terminal_tables_never_cut_a_number_or_name(width: int) -> None:
    output, out, _ = _output(terminal=True, width=width)
    assert not output.plain
    output.table(_table())
    text = out.getvalue()
    assert "…" not in text
    words = [w for line in text.splitlines() for w in line.replace("│", " ").replace("┃", " ").split()]
    for whole in [*NUMBERS, "cryptonets_with_a_long_name", "encoder.0.attn)"]:
        assert whole in words, (whole, text)
    styled = "|:--" not in text
    if styled:  # a styled table keeps to the terminal's width
        assert max(len(line) for line in text.splitlines()) <= width, text
    # boxed, or compact down to the longest words plus a space between columns (79 + 6), plain below
    assert styled == (width >= 85)


def test_lines_are_never_wrapped_when_piped() -> None:
    output, out, _ = _output(terminal=False, width=40)
    output.line(REFUSAL)
    output.report("some/dir/report.md")
    assert out.getvalue().splitlines() == [REFUSAL, "report: some/dir/report.md"]


def test_report_table_shows_every_conversion() -> None:
    from secure_infer._wrap import Report
    from secure_infer.ir import Conversion

    report = Report("tenseal", (Conversion("features.0.activation_with_a_long_path", "ReLU", "approximated",
                                           "degree-15 polynomial on [-3.2, 4.1]", 1.25e-3, 2.5e-2),),
                    {"poly_modulus_degree": 16384}, 3.125e-4)
    output, out, _ = _output(terminal=False, width=60)
    output.table(report_table(report))
    text = out.getvalue()
    row = next(line for line in text.splitlines() if "features.0.activation_with_a_long_path" in line)
    assert "1.25e-03" in row and "2.50e-02" in row and "degree-15 polynomial on [-3.2, 4.1]" in row
    assert "poly_modulus_degree: 16384" in text and "3.125e-04" in text


def test_estimates() -> None:
    assert estimate_left(10.0, 2, 10) == pytest.approx(40.0)
    assert estimate_left(10.0, 0, 10) is None
    assert format_seconds(3725.4) == "1:02:05"


def test_progress_lines_carry_an_estimate_when_not_a_terminal() -> None:
    now = [100.0]
    err = io.StringIO()
    progress = Progress(Console(file=err, force_terminal=False, _environ={}), live=False, interval=10.0,
                        clock=lambda: now[0])
    with progress:
        task = progress.add_task("bench --quick", total=10)
        for _ in range(4):
            now[0] += 5.0
            progress.advance(task, description="logreg crypten-2p b=1")
        progress.complete(task)
    lines = err.getvalue().splitlines()
    assert lines[0] == "bench --quick: started, 10 steps"
    # a line at most every 10 s: after 10 s (2 steps) and after 20 s (4 steps), then the end
    assert lines[1:] == ["bench --quick: 2/10 (logreg crypten-2p b=1), 0:00:10 elapsed, about 0:00:40 left",
                         "bench --quick: 4/10 (logreg crypten-2p b=1), 0:00:20 elapsed, about 0:00:30 left",
                         "bench --quick: 10/10 done in 0:00:20"]


def test_progress_in_a_terminal_shows_the_time_left() -> None:
    now = [0.0]
    err = io.StringIO()
    console = Console(file=err, force_terminal=True, width=120, color_system=None, _environ={})
    with Progress(console, live=True, clock=lambda: now[0]) as progress:
        task = progress.add_task("attacks", total=4)
        now[0] = 30.0
        progress.advance(task)
    assert "about 0:01:30 left" in err.getvalue()

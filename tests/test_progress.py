"""Progress of evaluate / predict / demo: a bar on a terminal, a few plain lines in a log."""

import io

from dynamask.progress import LineProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_writes_a_bounded_number_of_plain_lines(capsys):
    bar = progress_bar(1000, "evaluate", unit="img")  # stderr under pytest's capture: not a terminal
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    bar.close()  # a second close writes nothing
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err
    assert 1 <= len(lines) <= 11, lines  # every 10 % (and every 10 s, which this loop does not take)
    assert all(line.startswith("evaluate: ") for line in lines)
    assert lines[-1].startswith("evaluate: 1000/1000 img (100 %)"), lines[-1]
    assert lines[0].startswith("evaluate: 100/1000 img (10 %)"), lines[0]


def test_lines_every_interval_and_a_final_line_when_stopped_early():
    out = io.StringIO()
    bar = LineProgress(7, "predict", unit="img", stream=out, interval_s=0.0)  # a line at every update
    for _ in range(3):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "predict: 1/7 img (14 %)",
        "predict: 2/7 img (28 %)",
        "predict: 3/7 img (42 %)",
    ]
    with progress_bar(None, "demo", stream=out) as unknown:  # no total: a count
        unknown.update(5)
    assert out.getvalue().splitlines()[-1].startswith("demo: 5 img, ")


def test_terminal_keeps_the_bar_and_disabled_writes_nothing(capsys):
    term = _Terminal()
    bar = progress_bar(4, "evaluate", stream=term)
    assert not isinstance(bar, LineProgress)  # tqdm, as before
    bar.update(4)
    bar.close()
    assert "evaluate" in term.getvalue()
    quiet = progress_bar(4, "evaluate", enabled=False)
    quiet.update(4)
    quiet.close()
    assert capsys.readouterr().err == ""

"""The summary in a shared results folder: a FIFO, a link to a device, an oversized or malformed file is
skipped with one line; the tables are written before LaTeX and plots, and an output error is one line; an
ASCII-only terminal, Ctrl-C and formula-like words in a results file are handled."""
import io
import json
import os

import pytest

from tests.test_summarize import cl_results, write
from utils.summarize import command, results
from utils.summarize.command import main, summarize


@pytest.fixture
def folder(tmp_path):
    for seed in (1, 2):
        write(tmp_path / f"fc{seed}.json", cl_results("er", "fc", seed, 50.0 + seed, 80.0))
        write(tmp_path / f"fno{seed}.json", cl_results("er", "fno", seed, 55.0 + seed, 81.0))
    return tmp_path


def skipped(printed: str, name: str) -> str:
    lines = [line for line in printed.splitlines() if line.startswith("skipped") and name in line]
    assert len(lines) == 1, printed
    return lines[0]


def test_a_fifo_and_a_link_to_a_device_are_skipped_without_hanging(folder, capsys):
    os.mkfifo(folder / "pipe.json")
    os.symlink("/dev/zero", folder / "zero.json")
    assert main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "not a regular file" in skipped(out, "pipe.json") and "not a regular file" in skipped(out, "zero.json")


def test_an_oversized_file_is_skipped_unread(folder, capsys, monkeypatch):
    monkeypatch.setattr(results, "MAX_RESULTS_BYTES", 1000)
    write(folder / "big.json", {**cl_results("er", "fc", 3, 50.0, 80.0), "padding": "x" * 2000})
    assert main([str(folder)]) == 0
    assert "larger than 1000 bytes" in skipped(capsys.readouterr().out, "big.json")


@pytest.mark.parametrize("name,content,why", [
    ("deep.json", "[" * 100000 + "]" * 100000, "nested too deep"),
    ("seed.json", {**cl_results("er", "fc", 3, 50.0, 80.0), "args": {**cl_results("er", "fc", 3, 50, 80)["args"],
                                                                     "seed": [1, 2]}}, "'args.seed' is not a word"),
    ("metric.json", {**cl_results("er", "fc", 4, 50.0, 80.0), "class_il": "50.0"}, "not a finite number"),
])
def test_malformed_results_files_are_skipped_with_one_line(folder, capsys, name, content, why):
    if isinstance(content, str):
        (folder / name).write_text(content)
    else:
        write(folder / name, content)
    assert main([str(folder)]) == 0
    assert why in skipped(capsys.readouterr().out, name)


def test_the_tables_are_written_before_a_failing_latex_path(folder, capsys):
    assert main([str(folder), "--latex", str(folder / "no" / "such" / "\0bad.tex")]) == 0
    out = capsys.readouterr().out
    assert (folder / "summary.csv").exists() and (folder / "summary.md").exists()
    assert [line for line in out.splitlines() if line.startswith("cannot write")] and "Traceback" not in out


def test_unwritable_tables_are_one_line(folder, capsys):
    (folder / "summary.csv").mkdir()
    assert main([str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m utils.summarize: error: cannot write")


def test_an_ascii_terminal_gets_plus_minus(folder):
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    assert summarize(str(folder), out=out) == 4
    out.flush()
    text = out.buffer.getvalue().decode("ascii")
    assert "+-" in text and "±" not in text


def test_ctrl_c_is_one_line(folder, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(command, "summarize", interrupted)
    assert main([str(folder)]) == 130
    assert capsys.readouterr().err == "python -m utils.summarize: interrupted\n"


def test_formula_like_words_reach_the_csv_quoted(folder, capsys):
    write(folder / "f1.json", cl_results("er", "fc", 1, 50.0, 80.0, dataset="=HYPERLINK(\"http://x\")"))
    assert main([str(folder)]) == 0
    csv = (folder / "summary.csv").read_text()
    assert "'=HYPERLINK" in csv and ",=HYPERLINK" not in csv and '"=HYPERLINK' not in csv
    assert json.loads((folder / "f1.json").read_text())["args"]["dataset"].startswith("=")

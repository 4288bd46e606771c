"""The reproducibility ledger (utils/summarize/ledger.py): the committed docs/reproducibility.md is what the committed
results files give, a changed results file changes it, and the status rules."""
import json
import os
import shutil

import pytest

from utils.summarize import ledger
from utils.summarize.ledger import DEFAULT_OUT, DEFAULT_RESULTS, Published, ours, render, status


def test_the_committed_ledger_is_what_the_committed_results_give():
    assert ledger.main(["--check"]) == 0, "run: python -m utils.summarize.ledger"
    with open(DEFAULT_OUT, encoding="utf-8") as f:
        assert f.read() == render(DEFAULT_RESULTS)


def test_a_changed_results_file_no_longer_matches_the_ledger(tmp_path, capsys):
    results = tmp_path / "results"
    source = os.path.join(DEFAULT_RESULTS, "seq-digits")
    for name in sorted(os.listdir(source))[:3]:
        shutil.copy(os.path.join(source, name), results / name if results.exists() else _mkdir(results) / name)
    out = str(tmp_path / "ledger.md")
    assert ledger.main(["--results", str(results), "--out", out]) == 0
    assert ledger.main(["--results", str(results), "--out", out, "--check"]) == 0
    path = results / sorted(os.listdir(results))[0]
    data = json.loads(path.read_text())
    data["class_il"] += 1.0
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert ledger.main(["--results", str(results), "--out", out, "--check"]) == 1
    assert "python -m utils.summarize.ledger" in capsys.readouterr().err


def _mkdir(path):
    path.mkdir()
    return path


def test_the_paper_table_has_every_cell_and_the_transcribed_values():
    rows = ledger.paper_rows()
    cells = {(r.model, r.dataset, r.buffer, r.classifier) for r in rows}
    assert len(rows) == len(cells) == 2 * 4 * 3 * 2 and all(r.masked == 1 for r in rows)
    value = {(r.model, r.dataset, r.buffer, r.classifier): r.class_il for r in rows}
    assert value[("er", "seq-mnist", 200, "fc")] == 82.98 and value[("er", "seq-mnist", 200, "fno")] == 84.26
    assert value[("derpp", "seq-tinyimg", 200, "fno")] == 18.44
    text = render(DEFAULT_RESULTS)
    assert text.count("| er | seq-cifar100 | 5120 | fno |") == 1


def runs(values, train=60000):
    return [{"Class-IL": v, "Task-IL": 99.0, "seed": i, "commit": "abc1234", "hardware": "cpu (h)",
             "train_size": train} for i, v in enumerate(values)]


@pytest.mark.parametrize("values, std, train, expect", [
    (None, None, 60000, "not yet run here (needs the MNIST files"),
    ([80.0, 82.0], None, 60000, "reproduced"),          # mean 81.0: 1.98 below 82.98
    ([79.0, 80.0], None, 60000, "differs by -3.48"),
    ([79.0, 80.0], 4.0, 60000, "reproduced"),           # within the published std
    ([83.0], None, 1437, "not comparable: the runs trained on 1437 samples"),
])
def test_status_rules(values, std, train, expect):
    pub = Published("er", "seq-mnist", 200, "fc", 1, 82.98, None, ledger.PAPER, std=std)
    assert status(pub, None if values is None else ours(runs(values, train))).startswith(expect)

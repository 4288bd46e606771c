"""utils.summarize.results, the one reader of results files: what a record holds, what is refused (one line each),
partial and validation fields, long-tail final and best epochs, head labels, and the grid's headline."""
import json
import math

import pytest

from utils.summarize.results import (ResultsError, headline, head_flags, head_label, load, lt_key, read_directory, record,
                           run_label)


def cl(**more):
    out = {"args": {"dataset": "seq-digits", "model": "er", "model_name": "orthermr", "classifier": "fno",
                    "masked_softmax": 1, "buffer_size": 200, "seed": 3, "lr": 0.1, "fno_scale": 1,
                    "device": "cpu", "data_path": "/data", "results_file": "x.json", "load_best_args": True},
           "class_il": 90.0, "task_il": 98.0, "acc_matrix_class_il": [[99.0, None], [95.0, 85.0]],
           "acc_matrix_task_il": [[99.0, None], [99.0, 97.0]], "forgetting_class_il": 4.0,
           "forgetting_task_il": 0.0, "bwt_class_il": -4.0, "bwt_task_il": None}
    out.update(more)
    return out


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_continual_record(tmp_path):
    path = write(tmp_path, "a.json", cl())
    rec = record(path, load(path), head_flags())
    assert (rec["setting"], rec["dataset"], rec["method"], rec["model"], rec["head"], rec["buffer"], rec["seed"]) == \
        ("cl", "seq-digits", "er+M", "er", "fno", 200, 3)
    assert rec["Class-IL"] == 90.0 and rec["Forgetting Class-IL"] == 4.0 and rec["BWT Class-IL"] == -4.0
    assert math.isnan(rec["BWT Task-IL"])                               # null: no value, not an error
    assert math.isnan(rec["val_class_il"]) and rec["partial"] is False
    # what was computed, without operational flags, the seed, the alias or load_best_args
    assert rec["identity"] == {"dataset": "seq-digits", "model": "er", "classifier": "fno", "masked_softmax": 1,
                               "buffer_size": 200, "lr": 0.1, "fno_scale": 1}


def test_partial_and_validation_fields(tmp_path):
    path = write(tmp_path, "a.json", cl(partial=True, validation={"class_il": 88.5, "task_il": 97.0}))
    rec = record(path, load(path), head_flags())
    assert rec["partial"] is True and rec["val_class_il"] == 88.5 and rec["val_task_il"] == 97.0
    path = write(tmp_path, "b.json", cl(validation=[1, 2]))
    with pytest.raises(ResultsError, match="'validation' is not a mapping"):
        record(path, load(path), head_flags())


def test_head_label_names_non_default_head_flags():
    flags = head_flags()
    assert flags["fno"] == {"fno_scale": 1} and flags["fc"] == {}
    assert head_label({"classifier": "fno", "fno_scale": 1}, flags) == "fno"
    assert head_label({"classifier": "fno", "fno_scale": 0}, flags) == "fno fno_scale=0"
    assert head_label({"classifier": "fc", "fno_scale": None}, flags) == "fc"
    assert head_label({"classifier": "someday"}, flags) == "someday"      # a head this checkout lacks


def test_long_tail_record_final_and_best(tmp_path):
    groups = {"accuracy": 80.0, "many_acc": 90.0, "medium_acc": None, "few_acc": 60.0}
    results = {"setting": "long-tail", **groups, "final_epoch": {"epoch": 200, **groups},
               "best_epoch": {"epoch": 150, "accuracy": 81.0, "many_acc": 91.0, "medium_acc": None,
                              "few_acc": 62.0, "selected_on": "test"},
               "args": {"method": "arc-mixup", "dataset": "cifar10-lt", "imbalance_ratio": 100, "seed": 1}}
    rec = record("lt.json", results, head_flags())
    assert rec["setting"] == "long-tail" and rec["imbalance_ratio"] == 100
    assert rec[lt_key("final epoch", "Acc")] == 80.0 and rec[lt_key("best epoch (selected on test)", "Few")] == 62.0
    assert math.isnan(rec[lt_key("final epoch", "Medium")])
    del results["final_epoch"], results["best_epoch"]       # an older file: the top level is the final epoch
    rec = record("lt.json", results, head_flags())
    assert rec[lt_key("final epoch", "Many")] == 90.0 and math.isnan(rec[lt_key("best epoch (selected on test)",
                                                                                 "Acc")])
    results["accuracy"] = None
    with pytest.raises(ResultsError, match="'accuracy'"):
        record("lt.json", results, head_flags())


@pytest.mark.parametrize("content,reason", [
    ("{", "not valid JSON"), (b"\xff\xfe", "not UTF-8"), ("[1]", "not a JSON mapping"),
    ('{"class_il": 1}', "no 'args' mapping")])
def test_unusable_files_are_one_line_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ResultsError, match=reason) as exc:
        load(str(path))
    assert "\n" not in str(exc.value)
    with pytest.raises(ResultsError, match="cannot read it"):
        load(str(tmp_path / "missing.json"))


def test_read_directory_reports_bad_files_and_second_copies(tmp_path):
    write(tmp_path, "a.json", cl())
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "copy.json", cl(class_il=1.0))      # the same run (arguments and seed) again
    write(tmp_path, "bad.json", cl(class_il="high"))
    write(tmp_path, "partial.json", cl(partial=True))            # a partial run is not a copy of the full one
    lines = []
    records = read_directory(str(tmp_path), lines.append)
    assert [r["path"] for r in records] == [str(tmp_path / "a.json"), str(tmp_path / "partial.json")]
    assert lines == [f"skipped {tmp_path / 'bad.json'}: field 'class_il' is missing or not a finite number ('high')",
                     f"skipped {tmp_path / 'sub' / 'copy.json'}: the same run (same arguments and seed) as "
                     f"{tmp_path / 'a.json'}"]


def test_run_label_and_headline(tmp_path):
    assert run_label(cl()) == "orthermr/fno+mask"
    assert run_label({"args": {"model": "sgd", "classifier": "fc", "masked_softmax": 0}}) == "sgd/fc"
    assert headline(write(tmp_path, "a.json", cl())) == "Class-IL 90.00  Task-IL 98.00"
    assert headline(write(tmp_path, "lt.json", {"accuracy": 71.234})) == "acc 71.23"
    assert headline(str(tmp_path / "missing.json")) == ""


def test_which_metrics_may_be_null(tmp_path):
    """Class-IL must be a number; Task-IL, forgetting and BWT may be null but must be written."""
    flags = head_flags()
    rec = record("a.json", cl(task_il=None, forgetting_class_il=None), flags)
    assert math.isnan(rec["Task-IL"]) and math.isnan(rec["Forgetting Class-IL"]) and rec["Class-IL"] == 90.0
    for broken, message in [(cl(class_il=None), "'class_il'"),
                            (cl(validation={"task_il": 1.0}), "validation.'class_il'")]:
        with pytest.raises(ResultsError, match=message):
            record("a.json", broken, flags)
    missing = cl()
    del missing["bwt_class_il"]
    with pytest.raises(ResultsError, match="'bwt_class_il' is missing"):
        record("a.json", missing, flags)
    assert math.isnan(record("a.json", cl(validation=None), flags)["val_class_il"])


def test_domain_il_and_partial_matrices():
    flags = head_flags()
    domain = cl(setting="domain-il", task_il=None, acc_matrix_task_il=None, forgetting_task_il=None,
                bwt_task_il=None)
    rec = record("d.json", domain, flags)
    assert rec["setting"] == "cl" and math.isnan(rec["Task-IL"]) and rec["Class-IL"] == 90.0
    # a run cut short (--n_tasks 1 of 2) has an unfinished matrix: read when partial, refused otherwise
    short = cl(acc_matrix_class_il=[[99.0, None]], acc_matrix_task_il=[[99.0, None]])
    with pytest.raises(ResultsError, match="incomplete"):
        record("s.json", short, flags)
    assert record("s.json", dict(short, partial=True), flags)["partial"] is True
    with pytest.raises(ResultsError, match="other than numbers"):
        record("b.json", cl(acc_matrix_class_il=[[99.0, None], [True, 1.0]]), flags)

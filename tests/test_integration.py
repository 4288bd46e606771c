"""End-to-end runs on the embedded digits benchmark and on tiny MNIST files."""
import json

import pytest
import torch

import main as main_module
from utils.training import build_run, run_experiment


def quiet(*_):
    pass


def digits(make_args, *extra):
    return make_args("--dataset", "seq-digits", "--n_epochs", "2", *extra)


@pytest.mark.parametrize("model", ["er", "derpp"])
@pytest.mark.parametrize("classifier", ["fc", "fno"])
def test_masked_methods_learn_on_digits(make_args, model, classifier):
    args = digits(make_args, "--model", model, "--classifier", classifier, "--masked_softmax", "1",
                  "--buffer_size", "200", "--load_best_args")
    res = run_experiment(args, log=quiet)
    assert res["class_il"] > 50, "well above the 10% chance level"
    assert res["task_il"] >= res["class_il"]
    m = res["acc_matrix_class_il"]
    assert len(m) == 5 and all(len(r) == 5 for r in m)
    assert all(v is None for t, r in enumerate(m) for v in r[t + 1:])
    assert res["forgetting_class_il"] is not None and res["bwt_class_il"] is not None


def test_replay_beats_fine_tuning(make_args):
    er = run_experiment(digits(make_args, "--model", "er", "--buffer_size", "200", "--lr", "0.1"), log=quiet)
    sgd = run_experiment(digits(make_args, "--model", "sgd", "--lr", "0.1"), log=quiet)
    assert sgd["class_il"] < 30 < er["class_il"]  # fine-tuning forgets all but the last task


def test_joint_has_only_the_final_row(make_args):
    res = run_experiment(digits(make_args, "--model", "joint", "--lr", "0.1"), log=quiet)
    assert len(res["acc_matrix_class_il"]) == 1 and res["forgetting_class_il"] is None
    assert res["class_il"] > 80


def test_same_seed_same_results_on_cpu(make_args):
    flags = ("--model", "derpp", "--classifier", "fno", "--masked_softmax", "1", "--buffer_size", "50",
             "--load_best_args", "--seed", "3")
    a = run_experiment(digits(make_args, *flags), log=quiet)
    b = run_experiment(digits(make_args, *flags), log=quiet)
    assert a["acc_matrix_class_il"] == b["acc_matrix_class_il"]
    assert a["acc_matrix_task_il"] == b["acc_matrix_task_il"]
    c = run_experiment(digits(make_args, *flags[:-1], "4"), log=quiet)
    assert c["acc_matrix_class_il"] != a["acc_matrix_class_il"]


def test_fc_and_fno_runs_are_paired(make_args):
    """Same seed: same backbone initialisation, data order and buffer draws; only the head differs."""
    seen = {}
    runs = {}
    for head in ("fc", "fno"):
        args = digits(make_args, "--model", "er", "--classifier", head, "--masked_softmax", "1",
                      "--buffer_size", "50", "--lr", "0.1", "--seed", "7")
        run = build_run(args)
        runs[head] = run
        batches = []
        original = run.model.observe

        def record(inputs, labels, raw, original=original, batches=batches):
            batches.append(raw.clone())
            return original(inputs, labels, raw)
        run.model.observe = record
        from utils.training import stages, train_stage
        initial = {k: v.clone() for k, v in run.model.net.backbone.state_dict().items()}
        for data in stages(run):
            train_stage(run, data)
        seen[head] = (initial, batches, run.model.buffer.fields["examples"].clone())
    (init_fc, b_fc, buf_fc), (init_fno, b_fno, buf_fno) = seen["fc"], seen["fno"]
    assert all(torch.equal(init_fc[k], init_fno[k]) for k in init_fc)
    assert len(b_fc) == len(b_fno) and all(torch.equal(x, y) for x, y in zip(b_fc, b_fno))
    assert torch.equal(buf_fc, buf_fno)
    assert not torch.equal(runs["fc"].model.net.backbone.layers[1].weight,
                           runs["fno"].model.net.backbone.layers[1].weight)  # trained differently


def test_main_writes_the_results_file(tmp_path, capsys):
    out = tmp_path / "sub" / "r.json"
    rc = main_module.main(["--dataset", "seq-digits", "--model", "derpp", "--classifier", "fno",
                           "--masked_softmax", "1", "--buffer_size", "200", "--lr", "0.03", "--alpha", "0.2",
                           "--beta", "1.0", "--seed", "0", "--device", "cpu", "--results_file", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    for key in ("args", "class_il", "task_il", "acc_matrix_class_il", "acc_matrix_task_il",
                "forgetting_class_il", "bwt_class_il", "wall_time_s", "device"):
        assert key in res
    assert res["args"]["classifier"] == "fno" and res["device"] == "cpu"
    assert res["class_il"] > 50 and res["task_il"] >= res["class_il"]
    last = capsys.readouterr().out.strip().splitlines()[-2]  # the last line says where the file went
    assert f"Class-IL {res['class_il']:.2f}" in last and f"Task-IL {res['task_il']:.2f}" in last
    assert [p.name for p in out.parent.iterdir()] == ["r.json"], "no temporary files left behind"


def test_seq_mnist_end_to_end(make_args, mnist_dir):
    args = make_args("--dataset", "seq-mnist", "--model", "er", "--buffer_size", "200", "--load_best_args",
                     "--classifier", "fno", "--masked_softmax", "1", "--data_path", mnist_dir)
    res = run_experiment(args, log=quiet)
    assert res["n_steps"] == 20  # 200 images, batch 10, one epoch
    assert len(res["acc_matrix_class_il"]) == 5

"""The recipes of docs/architecture.md, followed literally: the method and the head are the documented code
blocks as written (a flag each, an ``end_task(task, data)`` that reads the task's data), the dataset a
throw-away one, each in a file of its own, run through ``main.py`` with no other file edited, on a real
benchmark's synthetic twin too; the summary pairs the new head with FC; --seeds refuses the unlisted method
in one line, as the recipe says.  The files are added to a copy of the source tree."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def recipe(title: str) -> str:
    """The first Python block under ``### <title>`` in docs/architecture.md, as written there."""
    text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    section = text[text.index(f"### {title}\n"):]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


METHOD = recipe("Add a method")
HEAD = recipe("Add a head")

DATASET = '''
    import torch

    from datasets import register_dataset
    from datasets.utils.continual_dataset import ContinualDataset, Split
    from datasets.utils.transforms import DeviceTransform


    @register_dataset("seq-toy")
    class SequentialToy(ContinualDataset):
        """Two tasks of two classes: 4x4 uint8 images whose class is the brightest quadrant."""

        N_TASKS = 2
        N_CLASSES_PER_TASK = 2
        INPUT_SHAPE = (1, 4, 4)
        BACKBONE = "mlp"
        N_EPOCHS = 1
        BATCH_SIZE = 8
        TRANSFORM = DeviceTransform(scale=255.0)

        def read_splits(self):
            g = torch.Generator().manual_seed(0)

            def split(n):
                y = torch.arange(n) % 4
                x = torch.randint(0, 60, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
                for c in range(4):
                    r, col = divmod(c, 2)
                    x[y == c, :, 2 * r:2 * r + 2, 2 * col:2 * col + 2] += 180
                return Split(x, y)

            return split(160), split(40)
'''


def test_a_method_a_head_and_a_dataset_each_in_one_new_file(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", "data", "results", "wandb",
                                                              "__pycache__", "*.egg-info", "build"))
    for path, text in (("models/my_method.py", METHOD), ("backbone/my_head.py", HEAD),
                       ("datasets/seq_toy.py", DATASET)):
        (tree / path).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    main = lambda *flags: subprocess.run([sys.executable, "main.py", "--device", "cpu", *flags], cwd=tree, env=env,
                                         capture_output=True, text=True)
    results = tmp_path / "R"
    flags = ["--dataset", "seq-toy", "--model", "my_method", "--my_weight", "0.5", "--lr", "0.1", "--seed", "1",
             "--results_dir", str(results)]
    done = main(*flags, "--classifier", "my_head", "--my_head_scale", "2")
    assert done.returncode == 0, done.stderr
    assert "task 0: 80 samples" in done.stdout and "task 1: 80 samples" in done.stdout
    (written,) = list(results.glob("*.json"))
    run = json.loads(written.read_text())
    assert run["args"]["classifier"] == "my_head" and run["args"]["my_weight"] == 0.5
    assert run["args"]["my_head_scale"] == 2.0 and len(run["acc_matrix_class_il"]) == 2
    assert main(*flags).returncode == 0  # the FC run of the same configuration
    summary = subprocess.run([sys.executable, "-m", "utils.summarize", str(results)], cwd=tree, env=env,
                             capture_output=True, text=True)
    assert "MY_HEAD my_head_scale=2 - FC" in summary.stdout, summary.stdout
    # a real benchmark's synthetic twin, with no data files
    twin = main("--dataset", "seq-cifar10", "--model", "my_method", "--lr", "0.1", "--classifier", "my_head",
                "--backbone", "mlp", "--synthetic", "1", "--debug_mode", "1", "--n_tasks", "2",
                "--data_path", str(tmp_path / "none"), "--results_file", "none")
    assert twin.returncode == 0 and "task 1: 20 samples" in twin.stdout, twin.stderr
    # --seeds: not in STACKED_METHODS, refused in one line (the recipe's one extra edit)
    seeds = main("--dataset", "seq-toy", "--model", "my_method", "--lr", "0.1", "--seeds", "1-2",
                 "--results_file", "none")
    assert seeds.returncode == 2 and seeds.stderr.count("\n") == 1
    assert "method my_method does not support stacked runs yet" in seeds.stderr
    help_text = main("--help").stdout
    assert "flags of my_method:" in help_text and "flags of my_head:" in help_text and "seq-toy" in help_text

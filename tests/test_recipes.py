"""The four recipes of docs/architecture.md, followed literally: a throw-away method (with its own flag and an
``end_task(task, data)`` that reads the task's data), head and dataset, each in a file of its own, run
through ``main.py`` with no other file edited.  The files are added to a copy of the source tree."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

METHOD = '''
    import torch.nn.functional as F

    from models import register_model
    from models.continual_model import ContinualModel
    from utils.cli import Flag, non_negative


    @register_model("toy")
    class Toy(ContinualModel):
        """Fine-tuning with a label-smoothing flag of its own; reports each task's data at its end."""

        FLAGS = {"toy_smoothing": Flag(non_negative(float), 0.0, "label smoothing of the stream loss")}

        def observe(self, inputs, labels, not_aug_inputs):
            self.opt.zero_grad(set_to_none=True)
            loss = self.backward(lambda: F.cross_entropy(self.net(inputs), labels,
                                                         label_smoothing=self.args.toy_smoothing))
            self.opt.step()
            return loss

        def end_task(self, task, data):
            classes = sorted(set(data.y.tolist()))
            print(f"toy end_task {task}: {len(data)} samples, classes {classes}, "
                  f"smoothing {self.args.toy_smoothing}", flush=True)
'''

HEAD = '''
    import torch
    import torch.nn.functional as F
    from torch import nn

    from backbone.heads import register_head


    @register_head("toyhead")
    class ToyHead(nn.Module):
        """A fixed head: the first K feature dimensions are the logits."""

        FIXED = True
        FLAGS = {}

        def __init__(self, feature_dim, num_classes, generator, args=None):
            super().__init__()
            self.register_buffer("weight", torch.eye(num_classes, feature_dim))

        def forward(self, h):
            return F.linear(h, self.weight)

        def class_weights(self):
            return self.weight
'''

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
    for path, text in (("models/toy.py", METHOD), ("backbone/toy_head.py", HEAD), ("datasets/seq_toy.py", DATASET)):
        (tree / path).write_text(textwrap.dedent(text))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    flags = ["--dataset", "seq-toy", "--model", "toy", "--classifier", "toyhead", "--toy_smoothing", "0.1",
             "--lr", "0.1", "--device", "cpu", "--results_file", str(tmp_path / "r.json")]
    done = subprocess.run([sys.executable, "main.py", *flags], cwd=tree, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "toy end_task 0: 80 samples, classes [0, 1], smoothing 0.1" in done.stdout
    assert "toy end_task 1: 80 samples, classes [2, 3], smoothing 0.1" in done.stdout
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["args"]["classifier"] == "toyhead" and results["args"]["toy_smoothing"] == 0.1
    assert len(results["acc_matrix_class_il"]) == 2
    help_text = subprocess.run([sys.executable, "main.py", "--help"], cwd=tree, env=env, capture_output=True,
                               text=True, check=True).stdout
    assert "flags of toy:" in help_text and "seq-toy" in help_text and "toyhead" in help_text

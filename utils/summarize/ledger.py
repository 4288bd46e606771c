"""The reproducibility ledger: ``python -m utils.summarize.ledger`` writes ``docs/reproducibility.md`` from results files.

    python -m utils.summarize.ledger [--results docs/ledger] [--out docs/reproducibility.md] [--check]

For every method x benchmark x buffer with a published number (the FNO paper's
continual-learning table; Mammoth's ``scripts/reproduce.json``), one row: the
published Class-IL / Task-IL and its source, this project's runs of the same
cell (mean ± std over seeds, commits, hardware) read from the committed results
files under ``--results``, and a status: reproduced (within the published std
or 2 points), differs (by how much, and why where known), not comparable (the
runs did not see the benchmark's data: their training-set size is not the
benchmark's) or not yet run here (and what it needs).  Runs that match no
published cell (e.g. seq-digits, which has none) are listed after, as this
project's own references.  ``--check`` writes nothing and exits 1 when the
file is not what the results give (the test suite runs it).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from models import get_model_class
from utils.cli import OneLineParser
from utils.errors import UserError
from utils.io import atomic_write_bytes
from utils.summarize.results import ResultsError, load_json, read_directory

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RESULTS = os.path.join(ROOT, "docs", "ledger")
DEFAULT_OUT = os.path.join(ROOT, "docs", "reproducibility.md")
TOLERANCE = 2.0  # points: "reproduced" within the published std or this, whichever is larger

# The real benchmarks' training-set sizes: a run on other files (e.g. digits written as MNIST) is not a reproduction.
TRAIN_SIZE = {"seq-mnist": 60000, "seq-cifar10": 50000, "seq-cifar100": 50000, "seq-tinyimg": 100000}
NEEDS = {"seq-mnist": "the MNIST files; a CPU suffices", "seq-cifar10": "a GPU and the CIFAR-10 files",
         "seq-cifar100": "a GPU and the CIFAR-100 files", "seq-tinyimg": "a GPU and the TinyImageNet files"}
NEEDS.update({name: "a GPU, the published ViT-B/16 weights and the benchmark's files"
              for name in ("seq-cifar100-224", "seq-imagenet-r", "seq-cub200")})
BENCHMARKS = ("seq-digits", "seq-mnist", "seq-cifar10", "seq-cifar100", "seq-tinyimg")


@dataclass(frozen=True)
class Published:
    model: str
    dataset: str
    buffer: int
    classifier: str
    masked: int
    class_il: Optional[float]      # None: in the source, not transcribed here
    task_il: Optional[float]
    source: str
    std: Optional[float] = None
    note: str = ""                 # why our protocol differs from the source's, where it does


PAPER = "FNO paper (Kim & Kim, ICLR 2024), continual-learning table"
# Class-IL, masked softmax, FC -> FNO, as the paper reports them (the cells transcribed so far).
PAPER_CLASS_IL = {
    ("er", "seq-mnist", 200): (82.98, 84.26), ("derpp", "seq-mnist", 200): (84.45, 86.27),
    ("er", "seq-cifar10", 200): (61.75, 63.84), ("derpp", "seq-cifar10", 200): (66.35, 67.53),
    ("er", "seq-cifar100", 200): (28.51, 32.43), ("derpp", "seq-tinyimg", 200): (13.21, 18.44),
}


def paper_rows() -> List[Published]:
    rows = []
    for dataset in BENCHMARKS[1:]:
        for buffer in (200, 500, 5120):
            for model in ("er", "derpp"):
                values = PAPER_CLASS_IL.get((model, dataset, buffer))
                for i, head in enumerate(("fc", "fno")):
                    rows.append(Published(model, dataset, buffer, head, 1, values[i] if values else None, None,
                                          PAPER))
    return rows


MAMMOTH = "Mammoth scripts/reproduce.json"
# Class-IL; Mammoth's own command line in the note where ours needs more than --load_best_args to match it.
MAMMOTH_ROWS = [
    Published("agem", "seq-cifar10", 500, "fc", 0, 19.94, None, MAMMOTH, note="--lr 0.03"),
    Published("der", "seq-cifar100", 500, "fc", 0, 36.6, None, MAMMOTH),
    Published("derpp", "seq-cifar100", 500, "fc", 0, 38.25, None, MAMMOTH),
    Published("er_ace", "seq-cifar10", 200, "cosine", 0, 42.6, None, MAMMOTH,
              note="Mammoth's seq-cifar10 er_ace config is an online protocol (1 epoch, batch 10, no "
                   "augmentation); its head is the cosine classifier"),
    Published("er", "seq-cifar10", 500, "fc", 0, 63.39, None, MAMMOTH, note="--lr 0.1"),
    Published("ewc_on", "seq-cifar10", 0, "fc", 0, 20.11, None, MAMMOTH, note="--lr 0.1 --e_lambda 10 --gamma 1"),
    Published("gdumb", "seq-cifar10", 500, "fc", 0, 45.8, None, MAMMOTH,
              note="Mammoth's best config: momentum 0 (our preset: the paper's 0.9)"),
    Published("icarl", "seq-cifar100", 2000, "fc", 0, 49.66, None, MAMMOTH,
              note="Mammoth's best config: its own seq-cifar100 iCaRL protocol (nesterov, lr 2, iCaRL's "
                   "transform)"),
    Published("lwf_mc", "seq-cifar100", 0, "fc", 0, 16.22, None, MAMMOTH, note="--lr 0.03 --optim_wd 5e-4"),
    Published("xder", "seq-cifar100", 500, "fc", 0, 49.93, None, MAMMOTH,
              note="Mammoth's current row needs --dp_weight (not implemented); ours is the X-DER release's row"),
]


PROMPT_NOTE = "the paper's protocol: ViT-B/16 weights and input scaling as docs/fidelity.md"
# Final average Class-IL of the prompt-based methods (10 tasks), FC head, logits masked to the task in training.
PROMPT_ROWS = [
    Published("l2p", "seq-cifar100-224", 0, "fc", 1, 83.83, None,
              "L2P paper (CVPR 2022), via l2p-pytorch README and Mammoth scripts/reproduce.json", note=PROMPT_NOTE),
    Published("l2p", "seq-imagenet-r", 0, "fc", 1, 61.57, None,
              "DualPrompt paper (ECCV 2022), its L2P row (as remembered, not re-read)", note=PROMPT_NOTE),
    Published("dualprompt", "seq-cifar100-224", 0, "fc", 1, 86.51, None,
              "DualPrompt paper, via dualprompt-pytorch README and Mammoth scripts/reproduce.json", note=PROMPT_NOTE),
    Published("dualprompt", "seq-imagenet-r", 0, "fc", 1, 68.13, None,
              "DualPrompt paper, via dualprompt-pytorch README", note=PROMPT_NOTE),
    Published("coda_prompt", "seq-cifar100-224", 0, "fc", 1, 86.25, None,
              "CODA-Prompt paper (CVPR 2023), via Mammoth scripts/reproduce.json", note=PROMPT_NOTE),
    Published("coda_prompt", "seq-imagenet-r", 0, "fc", 1, 75.45, None,
              "CODA-Prompt paper (as remembered, not re-read)", note=PROMPT_NOTE),
]


def published_rows() -> List[Published]:
    return paper_rows() + MAMMOTH_ROWS + PROMPT_ROWS


# ----------------------------------------------------------------------------------------------- our runs

def method_flags(record: dict) -> str:
    """The method's own flags whose value differs from a declared default (e.g. ``bce_offset=5.0``)."""
    flags = get_model_class(record["model"]).FLAGS
    identity = record["identity"]
    changed = [f"{name}={identity[name]}" for name, flag in sorted(flags.items())
               if flag.default is not None and identity.get(name) is not None and identity[name] != flag.default]
    return " ".join(changed)


def read_runs(directory: str) -> List[dict]:
    """Every results file under ``directory`` as a record, with its provenance; an unusable file is an error."""
    problems: List[str] = []
    records = [r for r in read_directory(directory, report=problems.append) if r.get("setting") == "cl"]
    if problems:
        raise UserError(f"{len(problems)} results file(s) under {directory} cannot be used: {problems[0]}")
    for rec in records:
        try:
            raw = load_json(rec["path"])
        except ResultsError as exc:
            raise UserError(f"{rec['path']}: {exc}") from None
        commit = raw.get("git_commit") or "unknown"
        rec["commit"] = commit[:7] + ("-dirty" if raw.get("git_dirty") else "")
        rec["hardware"] = f"{raw.get('device', '?')} ({raw.get('host', '?')})"
        rec["train_size"] = ((raw.get("splits") or {}).get("samples") or {}).get("train")
        rec["masked"] = int(bool(rec["identity"].get("masked_softmax")))
        rec["extra"] = method_flags(rec)
    return records


def cell_key(model, dataset, buffer, head, masked) -> tuple:
    return (model, dataset, int(buffer), head, int(masked))


def group(records: List[dict]) -> Dict[tuple, Dict[str, List[dict]]]:
    """(model, dataset, buffer, head, masked) -> method flags -> records (partial runs left out)."""
    cells: Dict[tuple, Dict[str, List[dict]]] = {}
    for rec in records:
        if rec["partial"]:
            continue
        key = cell_key(rec["model"], rec["dataset"], rec["buffer"], rec["head"], rec["masked"])
        cells.setdefault(key, {}).setdefault(rec["extra"], []).append(rec)
    return cells


def mean_std(values: List[float]) -> tuple:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def ours(runs: List[dict]) -> dict:
    """Mean ± std of Class-IL and Task-IL over the runs (one per seed), their seeds, commits and hardware."""
    cil = mean_std([r["Class-IL"] for r in runs])
    til_values = [r["Task-IL"] for r in runs if not math.isnan(r["Task-IL"])]
    return {"class_il": cil, "task_il": mean_std(til_values) if til_values else None,
            "seeds": sorted(r["seed"] for r in runs), "commits": sorted({r["commit"] for r in runs}),
            "hardware": sorted({r["hardware"] for r in runs}),
            "train_sizes": sorted({r["train_size"] for r in runs}, key=str)}


def status(pub: Published, mine: Optional[dict]) -> str:
    if mine is None:
        return f"not yet run here (needs {NEEDS[pub.dataset]})"
    real = TRAIN_SIZE.get(pub.dataset)
    if real is not None and mine["train_sizes"] != [real]:
        sizes = ", ".join(map(str, mine["train_sizes"]))
        return f"not comparable: the runs trained on {sizes} samples, the benchmark has {real} (not its data)"
    if pub.class_il is None:
        return "ran here; the published value is not transcribed yet"
    gap = mine["class_il"][0] - pub.class_il
    if abs(gap) <= max(TOLERANCE, pub.std or 0.0):
        return "reproduced (within the published std or 2 points)"
    return f"differs by {gap:+.2f}" + (f": {pub.note}" if pub.note else " (reason not yet known)")


# ----------------------------------------------------------------------------------------------- rendering

def seeds_text(seeds: list) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def cell_text(mine: Optional[dict]) -> List[str]:
    if mine is None:
        return ["", "", "", "", ""]
    cil = "{:.2f} ± {:.2f}".format(*mine["class_il"])
    til = "" if mine["task_il"] is None else "{:.2f} ± {:.2f}".format(*mine["task_il"])
    return [cil, til, seeds_text(mine["seeds"]), ", ".join(mine["commits"]), ", ".join(mine["hardware"])]


def published_text(value: Optional[float], source: str) -> str:
    if value is None:
        return "not transcribed" if source == PAPER else "not given"
    return f"{value:.2f}"


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]


def render(results_dir: str) -> str:
    records = read_runs(results_dir)
    cells = group(records)
    used = set()

    def published_section(rows: List[Published]) -> List[str]:
        lines = []
        for pub in rows:
            key = cell_key(pub.model, pub.dataset, pub.buffer, pub.classifier, pub.masked)
            runs = cells.get(key, {}).get("")  # the cell as published: no method flag changed
            mine = ours(runs) if runs else None
            if runs:
                used.add((key, ""))
            lines.append([pub.model, pub.dataset, pub.buffer, pub.classifier, published_text(pub.class_il, pub.source),
                          published_text(pub.task_il, pub.source), *cell_text(mine), status(pub, mine)])
        return lines

    header = ["method", "benchmark", "buffer", "head", "published Class-IL", "published Task-IL",
              "ours Class-IL", "ours Task-IL", "seeds", "commit", "hardware", "status"]
    paper = published_section(paper_rows())
    mammoth = published_section(MAMMOTH_ROWS)
    prompt = published_section(PROMPT_ROWS)
    own = []
    order = {name: i for i, name in enumerate(BENCHMARKS)}
    for key in sorted(cells, key=lambda k: (order.get(k[1], 99), k[1], k[0], k[2], k[4], k[3])):
        for extra, runs in sorted(cells[key].items()):
            if (key, extra) in used:
                continue
            model, dataset, buffer, head, masked = key
            own.append([model, dataset, buffer, head, masked, extra, *cell_text(ours(runs))])
    lines = [
        "# Reproducibility ledger",
        "",
        "Generated by `python -m utils.summarize.ledger` from the results files under `docs/ledger/`; do not edit by",
        "hand (a test checks that this file is what those files give).  Accuracies are final Class-IL /",
        "Task-IL in percent, ours as mean ± sample std over the seeds listed.  Status: *reproduced* when",
        "our mean is within the published std or 2 points of the published value; *differs* gives the gap",
        "and its reason where known; *not comparable* when the runs did not train on the benchmark's",
        "data (a different training-set size, e.g. digits written as MNIST files); *not yet run here*",
        "says what the cell needs.",
        "",
        "## The FNO paper's table (ER and DER++, masked softmax)",
        "",
        "Class-IL as the paper reports it; the cells not transcribed yet say so.  Our runs of these cells use",
        "`--load_best_args --masked_softmax 1` (`docs/fidelity.md`: every cell of the authors' table).",
        "",
        *table(header, paper),
        "",
        "## Mammoth's reproduced numbers",
        "",
        "Class-IL from Mammoth's `scripts/reproduce.json` (Task-IL not given there); `docs/fidelity.md`",
        "has each method's differences from Mammoth.",
        "",
        *table(header + ["note"], [row + [pub.note] for row, pub in zip(mammoth, MAMMOTH_ROWS)]),
        "",
        "## Prompt-based methods on a pretrained ViT (published)",
        "",
        "Final average Class-IL from the methods' papers (none reports CUB-200); `docs/pretrained.md` lists",
        "them with their sources and `docs/fidelity.md` each setting.",
        "",
        *table(header + ["source"], [row + [pub.source] for row, pub in zip(prompt, PROMPT_ROWS)]),
        "",
        "## This project's own references (no published number)",
        "",
        "seq-digits (scikit-learn's real 8x8 digits, 5 tasks of 2 classes) has no published number; its",
        "rows are references for changes to the code, each a `--load_best_args` run of `main.py` (stacked",
        "with `--seeds 1-10` where the method supports it).  `flags`: the method's own flags changed from",
        "their defaults.",
        "",
        *table(["method", "benchmark", "buffer", "head", "masked", "flags", "ours Class-IL", "ours Task-IL",
                "seeds", "commit", "hardware"], own),
        "",
    ]
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    p = OneLineParser(prog="python -m utils.summarize.ledger", description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=DEFAULT_RESULTS, metavar="DIR", help="results files (default docs/ledger)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE", help="the ledger (default docs/reproducibility.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when FILE is not what DIR gives")
    opts = p.parse_args(argv)
    try:
        text = render(opts.results)
    except UserError as exc:
        print(f"python -m utils.summarize.ledger: error: {exc}", file=sys.stderr)
        return 2
    if opts.check:
        try:
            with open(opts.out, encoding="utf-8") as f:
                current = f.read()
        except OSError:
            current = None
        if current != text:
            print(f"{opts.out} is not what the results under {opts.results} give: run python -m utils.summarize.ledger",
                  file=sys.stderr)
            return 1
        return 0
    atomic_write_bytes(opts.out, text.encode("utf-8"))
    print(f"wrote {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

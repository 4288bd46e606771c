"""CUDA behaviour (skipped without a GPU): every model and head runs, accuracy matches the CPU within
seed noise, buffer insertion and masking agree with the CPU for the same draws, augmentation draws
stay on the device, the inner loop never synchronises, and the AMP / channels-last / compile paths run."""
import json

import numpy as np
import pytest
import torch

import main
from datasets import get_dataset_class
from models import get_model_class, model_names
from utils.args import parse_args
from utils.buffer import ReservoirBuffer
from utils.losses import mask_other_tasks, masked_cross_entropy
from utils.training import build_run, run_experiment, stages
from tests.test_image_datasets import (assert_uniform_independent_draws, coordinate_image, read_back_draws,
                                       write_tiny_cifar)

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


HEAD_REFUSED = {("ranpac", "fno")}  # its ridge classifier replaces the head
NO_SOFTMAX_MASK = {"icarl", "lwf_mc", "gdumb"}  # they refuse --masked_softmax 1 (no softmax over a task to mask)


def digits_args(model, head, device, seed=0, *extra):
    """Each method's seq-digits best arguments (every method has a row), masked where it applies."""
    masked = "0" if model in NO_SOFTMAX_MASK else "1"
    quick = ["--fitting_epochs", "1"] if model == "gdumb" else []
    quick += ["--bce_offset", "5"] if model in ("icarl", "lwf_mc") else []  # FNO's logits are >= 0
    return parse_args(["--dataset", "seq-digits", "--model", model, "--classifier", head, "--masked_softmax", masked,
                       "--buffer_size", "200", "--load_best_args", "--device", device, "--seed", str(seed),
                       "--results_file", "none", *quick, *extra])


@pytest.mark.parametrize("head", ["fc", "fno"])
@pytest.mark.parametrize("model", model_names())
def test_every_model_and_head_runs_on_cuda(model, head):
    if "seq-digits" not in get_model_class(model).BEST_ARGS:  # the prompt methods need a ViT: their own tests
        pytest.skip(f"{model} has no seq-digits row")
    if (model, head) in HEAD_REFUSED:
        pytest.skip(f"{model} refuses --classifier {head}")
    out = run_experiment(digits_args(model, head, "cuda", 0, "--n_epochs", "1"), log=lambda m: None)
    assert out["device"].startswith("cuda") and 0 <= out["class_il"] <= 100 and np.isfinite(out["task_il"])


def test_cuda_reaches_the_cpu_accuracy_within_seed_noise():
    """Masked-FNO ER on the digits benchmark, three seeds per device: the mean Class-IL accuracies
    differ by less than three standard errors (or 2 points, whichever is larger)."""
    acc = {dev: [run_experiment(digits_args("er", "fno", dev, seed), log=lambda m: None)["class_il"]
                 for seed in range(3)] for dev in ("cpu", "cuda")}
    cpu, cuda = np.array(acc["cpu"]), np.array(acc["cuda"])
    stderr = np.sqrt(cpu.var(ddof=1) / 3 + cuda.var(ddof=1) / 3)
    assert abs(cpu.mean() - cuda.mean()) <= max(3 * stderr, 2.0), acc
    assert cuda.mean() > 30  # well above the 10% chance level: it learned


def test_reservoir_insertion_matches_the_cpu_for_the_same_draws(monkeypatch):
    """The slot arithmetic (modulo, last-writer-wins scatter) gives identical buffers on both devices
    and equals sequential reservoir sampling, when both are fed the same random draws."""
    batches, batch, size = 12, 16, 50
    gen = torch.Generator().manual_seed(0)
    draws = [torch.randint(0, 2 ** 62, (batch,), generator=gen) for _ in range(batches)]
    examples = torch.randint(0, 256, (batches, batch, 3, 4, 4), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (batches, batch), generator=gen)

    def fill(device):
        feed = iter(draws)
        monkeypatch.setattr(torch, "randint", lambda *a, device=None, **k: next(feed).to(device))
        buf = ReservoirBuffer(size, device)
        for x, y in zip(examples, labels):
            buf.add(examples=x.to(device), labels=y.to(device))
        monkeypatch.undo()
        return {k: v[:size].cpu() for k, v in buf.fields.items()}

    on_cpu, on_cuda = fill("cpu"), fill("cuda")
    assert all(torch.equal(on_cpu[k], on_cuda[k]) for k in on_cpu)
    expected = torch.zeros(size, dtype=torch.long)
    flat_draws, flat_labels = torch.cat(draws), labels.flatten()
    for n in range(batches * batch):
        slot = n if n < size else int(flat_draws[n] % (n + 1))
        if slot < size:
            expected[slot] = flat_labels[n]
    assert torch.equal(on_cuda["labels"], expected)


def test_masking_matches_the_cpu():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(64, 200, generator=gen), torch.randint(0, 200, (64,), generator=gen)
    table = get_dataset_class("seq-tinyimg")("unused").task_of_class()
    cpu = mask_other_tasks(logits, labels, table)
    cuda = mask_other_tasks(logits.cuda(), labels.cuda(), table.cuda())
    assert torch.equal(cpu, cuda.cpu()) and torch.isinf(cpu).sum() == 64 * 180
    torch.testing.assert_close(masked_cross_entropy(logits.cuda(), labels.cuda(), table.cuda()).cpu(),
                               masked_cross_entropy(logits, labels, table))


def test_augmentation_draws_are_made_on_the_device_and_uniform():
    transform = get_dataset_class("seq-cifar10").TRANSFORM.to("cuda")
    gen = torch.Generator(device="cuda").manual_seed(3)
    out = transform.train(coordinate_image().cuda().expand(4050, 3, 32, 32), gen)
    assert out.device.type == "cuda"
    _, dy, dx, flip = read_back_draws(out)
    assert_uniform_independent_draws(dy, dx, flip)


@pytest.mark.parametrize("model", ["er", "derpp"])
def test_training_steps_never_synchronise_with_the_host(tmp_path, model):
    """The trainer's inner loop (gather, augment, observe with replay and reservoir insertion) under
    CUDA's sync debug mode: any device-to-host synchronisation raises."""
    write_tiny_cifar(tmp_path, "cifar10", 40, range(10))
    args = parse_args(["--dataset", "seq-cifar10", "--model", model, "--classifier", "fno", "--masked_softmax", "1",
                       "--buffer_size", "200", "--load_best_args", "--data_path", str(tmp_path),
                       "--backbone", "resnet18-narrow", "--device", "cuda"])
    run = build_run(args)
    model_, train, transform = run.model, run.train, run.transform
    data = stages(run)[0]
    indices = data.indices
    model_.prepare_task(0)
    model_.begin_task(0, data)

    def step(batch):
        raw, labels = train.x[batch], train.y[batch]
        return model_.observe(transform.train(raw, run.augment_generator), labels, raw)

    batches = indices.split(8)
    for batch in batches[:2]:  # first steps (empty, then non-empty buffer): lazy initialisation may sync
        step(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[2:6]:
            loss = step(batch)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("flags", [[], ["--amp", "bf16", "--channels_last", "1"],
                                   ["--compile", "1"],
                                   ["--amp", "bf16", "--channels_last", "1", "--compile", "reduce-overhead"]])
def test_done_when_command_on_cuda_with_speed_flags(tmp_path, flags):
    """The README's seq-cifar10 command on CUDA (full ResNet-18), plain and with each speed path."""
    write_tiny_cifar(tmp_path, "cifar10", 40, range(10))
    results = tmp_path / "results.json"
    argv = ["--dataset", "seq-cifar10", "--model", "derpp", "--classifier", "fno", "--masked_softmax", "1",
            "--buffer_size", "200", "--load_best_args", "--data_path", str(tmp_path), "--n_epochs", "1",
            "--results_file", str(results), *flags]
    assert main.main(argv) == 0
    out = json.loads(results.read_text())
    assert out["device"].startswith("cuda") and np.isfinite(out["class_il"])

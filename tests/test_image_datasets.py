"""S-CIFAR-10, S-CIFAR-100 and S-TinyImageNet: on-disk formats, protocol, augmentation, cache, errors,
and the README's end-to-end commands on tiny sets written here in the exact formats the loaders read."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import main
from datasets import get_dataset_class
from datasets.utils import cifar_io, tinyimagenet
from datasets.utils.cifar_io import write_cifar
from utils.errors import DataError

CONSTANTS = {  # the reference protocol (docs/fidelity.md), typed here independently of the code
    "seq-cifar10": dict(tasks=5, per_task=2, shape=(3, 32, 32), epochs=50, batch=32,
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2615)),
    "seq-cifar100": dict(tasks=10, per_task=10, shape=(3, 32, 32), epochs=50, batch=32,
                         mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)),
    "seq-tinyimg": dict(tasks=10, per_task=20, shape=(3, 64, 64), epochs=100, batch=32,
                        mean=(0.4802, 0.4480, 0.3975), std=(0.2770, 0.2691, 0.2821)),
}


# ----------------------------------------------------------------------------- tiny data sets

def write_tiny_cifar(root, variant, train_per_class, test_classes, seed=0):
    """Random images, ``train_per_class`` per class; one test image for each class in ``test_classes``."""
    k = 10 if variant == "cifar10" else 100
    rng = np.random.RandomState(seed)
    y_train = np.repeat(np.arange(k), train_per_class)
    x_train = rng.randint(0, 256, (len(y_train), 3, 32, 32)).astype(np.uint8)
    y_test = np.asarray(test_classes)
    x_test = rng.randint(0, 256, (len(y_test), 3, 32, 32)).astype(np.uint8)
    write_cifar(str(root), variant, (x_train, y_train), (x_test, y_test))
    return x_train, y_train, x_test, y_test


def smooth_image(rng, gray=False):
    """A smooth random image (JPEG keeps it close to the original)."""
    u, v = np.meshgrid(np.linspace(0, 1, 64), np.linspace(0, 1, 64))
    channels = [np.clip(255 * (a * u + b * v + c), 0, 255) for a, b, c in rng.uniform(-0.5, 0.8, (3, 3))]
    img = np.stack(channels, -1).astype(np.uint8)
    return img[..., 0] if gray else img


def write_tiny_imagenet(root, n_classes, train_per_class, val_classes, seed=0):
    """A miniature ``tiny-imagenet-200`` tree of real JPEG files; wnids.txt is deliberately unsorted.

    Returns {path: source pixels (64, 64, 3)} for every file written.
    """
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "tiny-imagenet-200")
    wnids = [f"n{9_000_000 - 7919 * k:08d}" for k in range(n_classes)]  # descending: file order != sorted
    os.makedirs(os.path.join(folder, "val", "images"), exist_ok=True)
    with open(os.path.join(folder, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    written = {}

    def save(path, gray=False):
        img = smooth_image(rng, gray)
        Image.fromarray(img).save(path, quality=95)
        written[path] = np.repeat(img[..., None], 3, -1) if gray else img

    for k, wnid in enumerate(wnids):
        directory = os.path.join(folder, "train", wnid, "images")
        os.makedirs(directory, exist_ok=True)
        for i in range(train_per_class):
            save(os.path.join(directory, f"{wnid}_{i}.JPEG"), gray=(k == 0 and i == 0))
    lines = []
    for i, k in enumerate(val_classes):
        name = f"val_{i}.JPEG"
        save(os.path.join(folder, "val", "images", name))
        lines.append(f"{name}\t{wnids[k]}\t0\t0\t63\t63\n")
    with open(os.path.join(folder, "val", "val_annotations.txt"), "w") as f:
        f.writelines(lines)
    return folder, wnids, written


@pytest.fixture
def no_download(monkeypatch):
    """Tests never touch the network: every download attempt fails at once."""
    monkeypatch.setattr(cifar_io, "try_download_cifar", lambda root, name: "no network (test)")
    monkeypatch.setattr(tinyimagenet, "try_download_tinyimagenet", lambda root: "no network (test)")


# ----------------------------------------------------------------------------- protocol

@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_protocol_constants(name):
    c, cls = CONSTANTS[name], get_dataset_class(name)
    assert (cls.N_TASKS, cls.N_CLASSES_PER_TASK, cls.INPUT_SHAPE) == (c["tasks"], c["per_task"], c["shape"])
    assert (cls.N_EPOCHS, cls.BATCH_SIZE, cls.BACKBONE) == (c["epochs"], c["batch"], "resnet18")
    t = cls.TRANSFORM
    assert (t.crop_padding, t.flip) == (4, True)
    # Normalisation is exact: (x / 255 - mean) / std per channel.
    x = torch.randint(0, 256, (5,) + c["shape"], dtype=torch.uint8)
    mean, std = torch.tensor(c["mean"]).view(1, 3, 1, 1), torch.tensor(c["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(t.test(x), (x.double() / 255 - mean.double()) / std.double(),
                               rtol=1e-6, atol=1e-6, check_dtype=False)
    assert torch.equal(get_dataset_class(name)("unused").task_of_class(),
                       torch.arange(c["tasks"] * c["per_task"]) // c["per_task"])


def test_cifar100_lr_drops_tenfold_after_epochs_35_and_45_and_restarts_with_a_new_optimizer(make_args, tmp_path):
    from utils.training import build_run
    write_tiny_cifar(tmp_path, "cifar100", 2, range(100))
    run = build_run(make_args("--dataset", "seq-cifar100", "--model", "sgd", "--lr", "0.1", "--data_path",
                              str(tmp_path), "--backbone", "resnet18-narrow"))
    model = run.model
    for task in range(2):  # two tasks: the method builds a new optimizer and scheduler for each
        model.prepare_task(task)
        lrs = []
        for _ in range(50):
            lrs.append(model.opt.param_groups[0]["lr"])
            model.opt.step()
            model.end_epoch()
        np.testing.assert_allclose(lrs, [0.1] * 35 + [0.01] * 10 + [0.001] * 5)
    assert get_dataset_class("seq-cifar10").LR_MILESTONES == () == get_dataset_class("seq-tinyimg").LR_MILESTONES


# ----------------------------------------------------------------------------- augmentation

PAD = 4


def coordinate_image() -> torch.Tensor:
    """A 32x32 image whose pixels encode their coordinates: channel 0 the row, channel 1 the column
    (values 10 + 7 * index, so 0 can only be zero padding)."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    return torch.from_numpy(np.stack([10 + 7 * rows, 10 + 7 * cols, np.full_like(rows, 128)]).astype(np.uint8))


def read_back_draws(out: torch.Tensor, dataset="seq-cifar10"):
    """From augmented copies of ``coordinate_image``: the raw pixels and each copy's (dy, dx, flip)."""
    mean = torch.tensor(CONSTANTS[dataset]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(CONSTANTS[dataset]["std"]).view(1, 3, 1, 1)
    raw = ((out.cpu() * std + mean) * 255).round().numpy().astype(int)
    src_row = (raw[:, 0, 16, 16] - 10) // 7          # output row 16 comes from padded row dy + 16
    col16, col15 = (raw[:, 1, 16, 16] - 10) // 7, (raw[:, 1, 16, 15] - 10) // 7
    flip = col16 < col15
    dy = src_row - 16 + PAD
    dx = np.where(flip, col16 - 15 + PAD, col16 - 16 + PAD)
    return raw, dy, dx, flip


def assert_uniform_independent_draws(dy, dx, flip):
    assert dy.min() >= 0 and dy.max() <= 2 * PAD and dx.min() >= 0 and dx.max() <= 2 * PAD
    # Uniform over the 9 x 9 x 2 joint outcomes (so the three draws are also mutually independent).
    joint = (dy * 9 + dx) * 2 + flip
    assert stats.chisquare(np.bincount(joint, minlength=162)).pvalue > 1e-3
    # Consecutive samples are independent of each other.
    table = np.zeros((9, 9))
    np.add.at(table, (dy[:-1], dy[1:]), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3
    assert abs(flip.mean() - 0.5) < 4 * 0.5 / np.sqrt(len(flip))


def test_crop_offsets_and_flips_are_uniform_independent_and_exact():
    """Every sample gets its own offsets (uniform on 0..2p in each axis) and flip (probability 1/2):
    one coordinate-encoding image is augmented 4050 times and each copy's draw is read back."""
    src = coordinate_image()
    out = get_dataset_class("seq-cifar10").TRANSFORM.train(src.expand(4050, 3, 32, 32),
                                                          torch.Generator().manual_seed(1))
    raw, dy, dx, flip = read_back_draws(out)
    assert_uniform_independent_draws(dy, dx, flip)
    # The whole output is exactly the crop of the zero-padded image, flipped when drawn.
    padded = np.pad(src.numpy(), ((0, 0), (PAD, PAD), (PAD, PAD)))
    crops = [padded[:, a:a + 32, b:b + 32] for a, b in zip(dy[:200], dx[:200])]
    expected = np.stack([c[:, :, ::-1] if f else c for c, f in zip(crops, flip[:200])])
    np.testing.assert_array_equal(raw[:200], expected)


# ----------------------------------------------------------------------------- CIFAR files

@pytest.mark.parametrize("name, variant, test_classes", [
    ("seq-cifar10", "cifar10", [0, 3, 9, 5, 6]),  # one test image per task (a task without one is refused)
    ("seq-cifar100", "cifar100", [0, 13, 29, 35, 41, 57, 62, 78, 84, 99])])
def test_cifar_datasets_read_torchvision_layout(tmp_path, name, variant, test_classes):
    x_tr, y_tr, x_te, y_te = write_tiny_cifar(tmp_path, variant, 2, test_classes)
    train, test = get_dataset_class(name)(str(tmp_path)).load_splits()
    assert train.x.dtype == torch.uint8 and train.x.shape == (len(y_tr), 3, 32, 32)
    np.testing.assert_array_equal(train.x.numpy(), x_tr)
    np.testing.assert_array_equal(train.y.numpy(), y_tr)
    np.testing.assert_array_equal(test.x.numpy(), x_te)
    np.testing.assert_array_equal(test.y.numpy(), y_te)


def test_truncated_cifar_batch_is_a_data_error_naming_the_file(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", 5, range(10))
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(DataError, match=str(bad)):
        get_dataset_class("seq-cifar10")(str(tmp_path)).load_splits()


def test_missing_cifar_files_are_named_in_one_line(tmp_path, no_download):
    with pytest.raises(DataError) as err:
        get_dataset_class("seq-cifar100")(str(tmp_path)).load_splits()
    message = str(err.value)
    assert "\n" not in message and "train, test" in message
    assert os.path.join(str(tmp_path), "cifar-100-python") in message and "no network (test)" in message


# ----------------------------------------------------------------------------- TinyImageNet files

def test_tinyimagenet_decodes_jpegs_with_sorted_class_order(tmp_path):
    folder, wnids, written = write_tiny_imagenet(str(tmp_path), 3, 2, [2, 0, 1, 1])
    train, test, classes = tinyimagenet.load_tinyimagenet(str(tmp_path), download=False, log=lambda m: None)
    assert classes == sorted(wnids) != wnids
    label = {w: classes.index(w) for w in wnids}
    assert train.x.dtype == torch.uint8 and train.x.shape == (6, 3, 64, 64) and test.x.shape == (4, 3, 64, 64)
    # Train images in (sorted class, file name) order; val images sorted by file name.
    train_files = [os.path.join(folder, "train", w, "images", f"{w}_{i}.JPEG") for w in classes for i in range(2)]
    assert train.y.tolist() == [label[w] for w in classes for _ in range(2)]
    assert test.y.tolist() == [label[wnids[k]] for k in (2, 0, 1, 1)]
    val_files = [os.path.join(folder, "val", "images", f"val_{i}.JPEG") for i in range(4)]
    for tensor, files in ((train.x, train_files), (test.x, val_files)):
        for image, path in zip(tensor.numpy(), files):
            hwc = image.transpose(1, 2, 0)
            np.testing.assert_array_equal(hwc, np.asarray(Image.open(path).convert("RGB")))
            assert np.abs(hwc.astype(int) - written[path]).mean() < 3  # right orientation and channels


def load_quietly(root):
    messages = []
    train, test, _ = tinyimagenet.load_tinyimagenet(root, download=False, log=messages.append)
    return train, test, messages


def test_tinyimagenet_cache_is_reused_only_while_it_matches_the_sources(tmp_path, monkeypatch):
    root = str(tmp_path)
    folder, wnids, _ = write_tiny_imagenet(root, 3, 2, [0, 1, 2])
    cache = os.path.join(folder, tinyimagenet.CACHE_NAME)
    first, _, messages = load_quietly(root)
    assert os.path.isfile(cache) and "no cache yet" in messages[0]

    real_decode = tinyimagenet.decode_jpeg
    monkeypatch.setattr(tinyimagenet, "decode_jpeg", lambda path: pytest.fail("decoded despite a valid cache"))
    again, _, messages = load_quietly(root)
    assert messages == [] and torch.equal(again.x, first.x) and torch.equal(again.y, first.y)
    monkeypatch.setattr(tinyimagenet, "decode_jpeg", real_decode)

    # A new source file makes the cache stale: rebuilt with the extra image.
    extra = os.path.join(folder, "train", wnids[1], "images", "extra.JPEG")
    Image.fromarray(smooth_image(np.random.RandomState(5))).save(extra)
    grown, _, messages = load_quietly(root)
    assert "changed" in messages[0] and len(grown.y) == 7

    # A truncated cache (e.g. an interrupted copy) is rebuilt, not trusted.
    data = open(cache, "rb").read()
    with open(cache, "wb") as f:
        f.write(data[: len(data) // 2])
    rebuilt, _, messages = load_quietly(root)
    assert "unreadable" in messages[0] and torch.equal(rebuilt.x, grown.x)

    # One flipped byte in the pixel data fails the zip CRC check.
    data = bytearray(open(cache, "rb").read())
    data[data.find(b"train_x.npy") + 5000] ^= 0xFF
    open(cache, "wb").write(bytes(data))
    rebuilt, _, messages = load_quietly(root)
    assert "unreadable" in messages[0] and torch.equal(rebuilt.x, grown.x)

    # A cache whose fingerprint matches but whose arrays have the wrong shape is rebuilt too.
    sources = tinyimagenet.list_sources(folder)
    arrays = {k: v.numpy() for k, v in (("train_x", rebuilt.x[:3]), ("train_y", rebuilt.y[:3]),
                                        ("test_x", torch.zeros(3, 3, 64, 64, dtype=torch.uint8)),
                                        ("test_y", torch.zeros(3, dtype=torch.long)))}
    tinyimagenet.write_cache(cache, sources.fingerprint(folder), arrays)
    rebuilt, _, messages = load_quietly(root)
    assert "wrong shape" in messages[0] and torch.equal(rebuilt.x, grown.x)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_is_a_data_error_naming_the_file(tmp_path, damage):
    folder, wnids, _ = write_tiny_imagenet(str(tmp_path), 2, 2, [0, 1])
    bad = os.path.join(folder, "train", wnids[1], "images", f"{wnids[1]}_1.JPEG")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(b"not a jpeg at all" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DataError, match=bad):
        load_quietly(str(tmp_path))
    assert not os.path.exists(os.path.join(folder, tinyimagenet.CACHE_NAME))


def test_inconsistent_tinyimagenet_trees_are_data_errors(tmp_path):
    folder, wnids, _ = write_tiny_imagenet(str(tmp_path), 2, 1, [0])
    with open(os.path.join(folder, "val", "val_annotations.txt"), "a") as f:
        f.write("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="line 2"):
        load_quietly(str(tmp_path))
    with pytest.raises(DataError, match="seq-tinyimg needs 200"):  # a valid tree, but not 200 classes
        write_tiny_imagenet(str(tmp_path / "b"), 2, 1, [0])
        get_dataset_class("seq-tinyimg")(str(tmp_path / "b")).load_splits()


def test_missing_tinyimagenet_files_are_named_in_one_line(tmp_path, no_download, capsys):
    (tmp_path / "tiny-imagenet-200" / "train").mkdir(parents=True)
    argv = ["--dataset", "seq-tinyimg", "--model", "er", "--buffer_size", "200", "--load_best_args",
            "--data_path", str(tmp_path), "--device", "cpu"]
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and os.path.join(str(tmp_path), "tiny-imagenet-200") in err
    assert "wnids.txt" in err and "val_annotations.txt" in err and "no network (test)" in err
    assert " train," not in err  # what exists is not reported missing


# ----------------------------------------------------------------------------- end to end

def run_main(tmp_path, dataset, *extra):
    results = tmp_path / "results.json"
    argv = ["--dataset", dataset, "--model", "derpp", "--classifier", "fno", "--masked_softmax", "1",
            "--buffer_size", "200", "--load_best_args", "--data_path", str(tmp_path), "--n_epochs", "1",
            "--device", "cpu", "--results_file", str(results), *extra]
    assert main.main(argv) == 0
    out = json.loads(results.read_text())
    n = CONSTANTS[dataset]["tasks"]
    assert len(out["acc_matrix_class_il"]) == n and all(len(row) == n for row in out["acc_matrix_class_il"])
    assert 0 <= out["class_il"] <= out["task_il"] <= 100
    return out


def test_seq_cifar10_done_when_command(tmp_path):
    """The README's command verbatim (full ResNet-18), on one training and one test image per class."""
    write_tiny_cifar(tmp_path, "cifar10", 1, range(10))
    out = run_main(tmp_path, "seq-cifar10")
    assert out["args"]["backbone"] == "resnet18" and out["args"]["lr"] == 0.03
    assert (out["args"]["alpha"], out["args"]["beta"]) == (0.1, 0.5)


def test_seq_cifar100_done_when_command_with_bf16_and_channels_last(tmp_path):
    """One training image per class and one test image per task; the narrow ResNet and a replay
    batch of 2 keep it fast on a CPU."""
    write_tiny_cifar(tmp_path, "cifar100", 1, range(0, 100, 10))
    out = run_main(tmp_path, "seq-cifar100", "--backbone", "resnet18-narrow", "--minibatch_size", "2",
                   "--amp", "bf16", "--channels_last", "1")
    assert out["args"]["amp"] == "bf16" and out["args"]["channels_last"] == 1


def test_seq_tinyimg_done_when_command(tmp_path):
    """A 200-class miniature tree of real JPEGs (one per class); narrow ResNet and replay batch 2 for speed."""
    write_tiny_imagenet(str(tmp_path), 200, 1, range(0, 200, 20))
    run_main(tmp_path, "seq-tinyimg", "--backbone", "resnet18-narrow", "--minibatch_size", "2")
    assert os.path.isfile(tmp_path / "tiny-imagenet-200" / tinyimagenet.CACHE_NAME)

"""The 224-pixel benchmarks (seq-cifar100-224, seq-imagenet-r, seq-cub200): published layouts written here,
splits, the validated uint8 cache, one-line errors, and the batched device transforms."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import get_dataset_class
from datasets.utils import image_folders
from datasets.utils.transforms import DeviceTransform, random_boxes, resized_crops
from tests.fake_pretrained_data import write_cifar100, write_cub, write_imagenet_r
from utils.errors import DataError


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pretrained-data"))
    write_imagenet_r(root, per_class=3)
    write_cub(root)
    write_cifar100(root)
    return root


@pytest.fixture
def no_download(monkeypatch):
    monkeypatch.setattr(image_folders, "attempt_download", lambda fetch, target: "no network (test)")


def test_imagenet_r_is_the_seeded_80_20_split_in_imagefolder_order(data_root):
    train, test = get_dataset_class("seq-imagenet-r")(data_root).load_splits()
    n = 200 * 3
    assert train.x.shape == (int(0.8 * n), 3, 256, 256) and test.x.shape == (n - int(0.8 * n), 3, 256, 256)
    assert train.x.dtype == torch.uint8
    # the split written out independently: ImageFolder order, torch.manual_seed(42), randperm, first 80%
    labels = np.repeat(np.arange(200), 3)
    torch.manual_seed(42)
    order = torch.randperm(n).tolist()
    np.testing.assert_array_equal(train.y.numpy(), labels[sorted(order[:int(0.8 * n)])])
    np.testing.assert_array_equal(test.y.numpy(), labels[sorted(order[int(0.8 * n):])])


def test_stored_images_are_the_central_square_of_the_resized_image(tmp_path):
    path = str(tmp_path / "a.png")  # lossless, 40 x 20: the shorter side becomes 256, the centre is kept
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 200                       # the central square of the original is bright
    Image.fromarray(img).save(path)
    out = image_folders.decode_square(path)
    assert out.shape == (3, 256, 256) and out[:, :, 10:246].min() >= 190 and out.max() <= 200


def test_cub_reads_the_official_split_and_labels(data_root):
    train, test = get_dataset_class("seq-cub200")(data_root).load_splits()
    # write_cub flags the first image of every class for training, the second for testing
    np.testing.assert_array_equal(train.y.numpy(), np.arange(200))
    np.testing.assert_array_equal(test.y.numpy(), np.arange(200))


def test_cifar100_224_reads_the_cifar_files_and_resizes_on_the_device(data_root):
    dataset = get_dataset_class("seq-cifar100-224")(data_root)
    train, test = dataset.load_splits()
    assert train.x.shape == (200, 3, 32, 32) and dataset.INPUT_SHAPE == (3, 224, 224)
    assert dataset.TRANSFORM.test(test.x[:2]).shape == (2, 3, 224, 224)
    assert dataset.TRANSFORM.train(train.x[:2], torch.Generator().manual_seed(0)).shape == (2, 3, 224, 224)


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path):
    root = str(tmp_path)
    write_cub(root, n_classes=200, per_class=2)
    logs = []
    sources = image_folders.cub_sources(root)
    folder = os.path.join(root, "CUB_200_2011")
    first = image_folders.cached_splits("CUB", folder, sources, "p", log=logs.append)
    again = image_folders.cached_splits("CUB", folder, sources, "p", log=logs.append)
    assert len(logs) == 1 and torch.equal(first[0].x, again[0].x)
    image_folders.cached_splits("CUB", folder, sources, "another split", log=logs.append)
    assert len(logs) == 2                                         # the split procedure is part of the key
    changed = sources.train[0][0]
    Image.fromarray(np.full((30, 30, 3), 7, np.uint8)).save(changed)
    rebuilt = image_folders.cached_splits("CUB", folder, image_folders.cub_sources(root), "p", log=logs.append)
    assert len(logs) == 3 and "changed" in logs[-1] and int(rebuilt[0].x[0].float().mean().round()) in range(4, 11)


def test_missing_and_damaged_files_are_one_line_data_errors(tmp_path, no_download):
    with pytest.raises(DataError) as err:
        get_dataset_class("seq-cub200")(str(tmp_path)).load_splits()
    assert "\n" not in str(err.value) and "images.txt" in str(err.value) and "no network (test)" in str(err.value)
    with pytest.raises(DataError, match="imagenet-r"):
        get_dataset_class("seq-imagenet-r")(str(tmp_path)).load_splits()
    write_cub(str(tmp_path), n_classes=200, per_class=2)
    bad = os.path.join(str(tmp_path), "CUB_200_2011", "images", "001.Bird_1", "Bird_1_0.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="Bird_1_0.jpg is not a readable image"):
        get_dataset_class("seq-cub200")(str(tmp_path)).load_splits()
    with open(os.path.join(str(tmp_path), "CUB_200_2011", "train_test_split.txt"), "a") as f:
        f.write("99999 1\n")
    with pytest.raises(DataError, match="list different image ids"):
        get_dataset_class("seq-cub200")(str(tmp_path)).load_splits()


def test_imagenet_r_needs_200_classes(tmp_path, no_download):
    write_imagenet_r(str(tmp_path), n_classes=3, per_class=2)
    with pytest.raises(DataError, match="holds 3 class folders; seq-imagenet-r needs 200"):
        get_dataset_class("seq-imagenet-r")(str(tmp_path)).load_splits()


# ----------------------------------------------------------------------------- device transforms

def test_test_transform_is_resize_256_and_centre_crop_224():
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    t = DeviceTransform(255.0, size=224, test_crop=224 / 256)
    torch.testing.assert_close(t.test(x), x[:, :, 16:240, 16:240].float() / 255, atol=1e-4, rtol=0)


def test_random_resized_crops_stay_inside_and_follow_torchvisions_ranges():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(20000, (0.08, 1.0), True, "cpu", g)
    w, h, cx, cy = boxes.abs().T[0], boxes.T[1], boxes.T[2], boxes.T[3]
    assert (w <= 1).all() and (h <= 1).all() and (cx.abs() <= (1 - w) / 2 + 1e-6).all()
    assert (cy.abs() <= (1 - h) / 2 + 1e-6).all()
    assert abs((boxes[:, 0] < 0).float().mean() - 0.5) < 0.02       # half the crops are mirrored
    area = (w * h)[(w < 1) & (h < 1)]                                # unclipped crops: area share in [0.08, 1]
    assert area.min() >= 0.08 - 1e-6 and 0.45 < area.mean() < 0.6
    mirrored = resized_crops(torch.arange(16.0).view(1, 1, 4, 4), torch.tensor([[-1.0, 1.0, 0.0, 0.0]]), 4)
    torch.testing.assert_close(mirrored, torch.arange(16.0).view(1, 1, 4, 4).flip(-1))


def test_training_crops_are_reproducible_from_the_generator():
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    t = DeviceTransform(255.0, (0.5,) * 3, (0.5,) * 3, flip=True, size=32)
    a = t.train(x, torch.Generator().manual_seed(3))
    b = t.train(x, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        DeviceTransform(255.0, crop_padding=4, size=224)

"""Pretrained backbones: timm ViTs and torchvision ResNets, --pretrained hub|none|FILE (strict), checked before
any data is read; the ViT feature (pre-logits CLS token), --feature_activation and --projection_dim."""
import pytest
import torch
from safetensors.torch import save_file

import main
from backbone import get_backbone_class
from backbone import vit, weights
from utils.errors import DataError

SHAPE = (3, 32, 32)  # the micro ViT at 32 pixels: 4 patches, fast


def micro(*flags, shape=SHAPE):
    from utils.args import parse_args
    args = parse_args(["--dataset", "seq-cifar100-224", "--model", "simplecil", "--backbone", "vit-micro",
                       "--device", "cpu", "--results_file", "none", *flags])
    return get_backbone_class("vit-micro")(shape, args=args), args


def test_vit_feature_is_timms_pre_logits_cls_token():
    net, _ = micro()
    x = torch.randn(2, *SHAPE)
    tokens = net.net.forward_features(x)                  # after the final LayerNorm
    assert net.feature_dim == 64
    torch.testing.assert_close(net(x), tokens[:, 0])      # the CLS token, no activation by default
    assert (net(x) < 0).any()                             # signed: why --feature_activation exists


def test_feature_activation_and_projection():
    net, _ = micro("--feature_activation", "relu", "--projection_dim", "200")
    x = torch.randn(3, *SHAPE)
    h = net(x)
    assert net.feature_dim == 200 and h.shape == (3, 200) and (h >= 0).all()
    torch.testing.assert_close(h, torch.relu(net.projection(net.net(x))))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_round_trip_and_drop_the_files_classifier(tmp_path, suffix):
    torch.manual_seed(1)
    source, _ = micro()
    state = {**source.net.state_dict(), "head.weight": torch.zeros(10, 64), "head.bias": torch.zeros(10)}
    path = str(tmp_path / f"w{suffix}")
    (save_file if suffix == ".safetensors" else torch.save)(state, path)
    torch.manual_seed(2)
    loaded, _ = micro("--pretrained", path)
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(loaded(x), source(x))


@pytest.mark.parametrize("change, needle", [
    (lambda s: s.pop("cls_token"), "missing: cls_token"),
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected: extra"),
    (lambda s: s.update(cls_token=torch.zeros(1, 1, 8)), "wrong shape: cls_token"),
])
def test_strict_loading_names_the_misfits_in_one_line(tmp_path, change, needle):
    source, _ = micro()
    state = dict(source.net.state_dict())
    change(state)
    path = str(tmp_path / "w.pth")
    torch.save(state, path)
    with pytest.raises(DataError) as err:
        micro("--pretrained", path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unreadable_weights_file_is_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable state-dict or safetensors file"):
        micro("--pretrained", str(path))


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(argv)
    err = capsys.readouterr().err.strip()
    return exit_.value.code, err


BASE = ["--dataset", "seq-imagenet-r", "--model", "simplecil", "--device", "cpu", "--results_file", "none",
        "--debug_mode", "1"]


def test_hub_without_network_stops_before_reading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weights, "reachable", lambda host, *a, **k: False)
    monkeypatch.setattr(vit, "hub_cached", lambda name: False)
    data = tmp_path / "never-read"
    code, err = run_main(BASE + ["--backbone", "vit_tiny_patch16_224", "--pretrained", "hub",
                                 "--data_path", str(data)], capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert "vit_tiny_patch16_224" in err and "huggingface.co" in err and "--pretrained FILE" in err
    assert not data.exists()


def test_hub_is_the_vits_default_and_a_cached_copy_needs_no_network(monkeypatch, make_args):
    monkeypatch.setattr(weights, "reachable", lambda host, *a, **k: pytest.fail("no network check expected"))
    monkeypatch.setattr(vit, "hub_cached", lambda name: True)
    args = make_args("--dataset", "seq-imagenet-r", "--model", "simplecil")
    assert args.backbone == "vit_base_patch16_224.augreg_in21k" and args.pretrained == "hub"
    assert args.feature_activation == "none" and args.projection_dim == 0


def test_missing_weights_file_stops_before_reading_data(tmp_path, capsys):
    data = tmp_path / "never-read"
    code, err = run_main(BASE + ["--backbone", "vit_tiny_patch16_224", "--pretrained", str(tmp_path / "missing.pth"),
                                 "--data_path", str(data)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "missing.pth: no such file" in err
    assert not data.exists()


def test_pretrained_is_refused_where_it_means_nothing(capsys):
    code, err = run_main(["--dataset", "seq-digits", "--model", "sgd", "--lr", "0.1", "--pretrained", "none"],
                         capsys)
    assert code == 2 and "--pretrained is a flag of" in err and "--backbone mlp" in err
    code, err = run_main(BASE + ["--backbone", "vit-micro", "--pretrained", "hub"], capsys)
    assert code == 2 and "no published weights" in err


def test_torchvision_resnets_take_torchvision_files(tmp_path, make_args):
    from torchvision.models import resnet18
    path = str(tmp_path / "r18.pth")
    torch.save(resnet18(weights=None).state_dict(), path)   # with its fc.*, dropped on loading
    args = make_args("--dataset", "seq-cifar100-224", "--model", "simplecil", "--backbone", "resnet18-imagenet",
                     "--pretrained", path)
    net = get_backbone_class("resnet18-imagenet")((3, 32, 32), args=args)
    expected = {k: v for k, v in torch.load(path).items() if not k.startswith("fc.")}
    assert all(torch.equal(net.net.state_dict()[k], v) for k, v in expected.items()) and net.feature_dim == 512


def test_hub_weights_from_a_filled_cache_load_offline(tmp_path, monkeypatch, make_args):
    """The whole hub path without a network: timm's own download finds the weights in the Hugging Face cache."""
    import os

    import huggingface_hub.constants as hf
    import timm
    from timm.models import get_pretrained_cfg
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(weights, "reachable", lambda host, *a, **k: pytest.fail("no network check expected"))
    repo = tmp_path / ("models--" + get_pretrained_cfg("vit_tiny_patch16_224").hf_hub_id.replace("/", "--"))
    os.makedirs(repo / "snapshots" / "rev0")
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text("rev0")
    torch.manual_seed(5)
    published = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    save_file(published.state_dict(), str(repo / "snapshots" / "rev0" / "model.safetensors"))
    assert vit.hub_cached("vit_tiny_patch16_224")
    args = make_args("--dataset", "seq-imagenet-r", "--model", "simplecil", "--backbone", "vit_tiny_patch16_224",
                     "--pretrained", "hub")
    net = get_backbone_class("vit_tiny_patch16_224")((3, 224, 224), args=args)
    assert torch.equal(net.net.cls_token, published.cls_token) and net.feature_dim == 192

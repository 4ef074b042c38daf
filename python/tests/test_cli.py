"""`python -m gradcam_export`: torchvision architectures from checkpoints, as users run it."""

import json

import pytest
import torch
import torchvision

from gradcam_export import read_metadata, torchvision_models
from gradcam_export.cli import main


def resnet18_state(classes):
    torch.manual_seed(3)
    return torchvision.models.resnet18(num_classes=classes).state_dict()


def test_a_wrapped_checkpoint_loads_and_gives_its_class_count(tmp_path, capsys):
    ckpt = tmp_path / "ft.pth"
    state = resnet18_state(3)
    torch.save({"epoch": 9, "state_dict": {"module." + k: v for k, v in state.items()}}, ckpt)
    out = tmp_path / "r.pt"
    assert main(["torchvision", "resnet18", "--weights", str(ckpt), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "target layer: layer4[-1]" in err
    assert "3 classes, from the checkpoint's fc.weight" in err
    meta = read_metadata(out)
    assert meta["architecture"] == "resnet18"
    assert meta["num_classes"] == 3
    assert meta["taps"][0]["name"] == "layer4.1"
    module = torch.jit.load(str(out))
    x = torch.randn(1, 3, 224, 224)
    expected = torchvision.models.resnet18(num_classes=3)
    expected.load_state_dict(state)
    logits = module(x, torch.zeros(1, dtype=torch.long), torch.tensor(-1), torch.empty(0))[0]
    assert torch.allclose(logits, expected.eval()(x), atol=1e-4)


def test_safetensors_with_a_prefix_load(tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "ft.safetensors"
    save_file({"backbone." + k: v.contiguous() for k, v in resnet18_state(4).items()}, str(ckpt))
    model, note = torchvision_models.load("resnet18", str(ckpt), 4)
    assert note is None
    assert model.fc.out_features == 4


def test_a_checkpoint_of_another_shape_is_refused_naming_the_tensor(tmp_path, capsys):
    ckpt = tmp_path / "x.pth"
    state = resnet18_state(3)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(state, ckpt)
    code = main(["torchvision", "resnet18", "--weights", str(ckpt), "-o", str(tmp_path / "o.pt")])
    assert code == 1
    err = capsys.readouterr().err
    assert "layer1.0.conv1.weight has shape (64, 64, 5, 5)" in err
    assert "needs (64, 64, 3, 3)" in err


def test_another_architectures_checkpoint_is_refused(tmp_path, capsys):
    ckpt = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v2(num_classes=3).state_dict(), ckpt)
    code = main(["torchvision", "resnet18", "--weights", str(ckpt), "-o", str(tmp_path / "o.pt")])
    assert code == 1
    assert "is not a resnet18 state dict" in capsys.readouterr().err


def test_unknown_architectures_and_layers_are_refused(tmp_path, capsys):
    assert main(["torchvision", "resnet9000", "-o", str(tmp_path / "o.pt")]) == 1
    assert "not a torchvision classifier" in capsys.readouterr().err
    assert (
        main(
            [
                "torchvision",
                "resnet18",
                "--num-classes",
                "2",
                "--layer",
                "layer9",
                "-o",
                str(tmp_path / "o.pt"),
            ]
        )
        == 1
    )
    assert "'layer9' is not a module of the model" in capsys.readouterr().err
    assert (
        main(
            [
                "torchvision",
                "resnet18",
                "--num-classes",
                "2",
                "--layer",
                "layer4[-1].relu",
                "-o",
                str(tmp_path / "o.pt"),
            ]
        )
        == 1
    )
    assert "runs 2 times in one forward" in capsys.readouterr().err


def test_several_layers_and_info(tmp_path, capsys):
    out = tmp_path / "r.pt"
    code = main(
        [
            "torchvision",
            "resnet18",
            "--num-classes",
            "2",
            "--layer",
            "layer4",
            "--layer",
            "layer3[-1]",
            "--input-size",
            "128",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert [t["name"] for t in meta["taps"]] == ["layer4", "layer3.1"]
    assert meta["taps"][1]["shape"] == [256, 8, 8]
    assert meta["input_size"] == 128


@pytest.mark.parametrize(
    "arch, layer, reshape",
    [
        ("efficientnet_b0", "features[-1]", "none"),
        ("vit_b_16", "encoder.layers[-1].ln_1", "vit"),
        ("swin_t", "features[-1][-1].norm1", "swin"),
        ("densenet121", "features[-1]", "none"),
    ],
)
def test_families_get_pytorch_grad_cams_layer(arch, layer, reshape):
    assert torchvision_models.default_layer(arch) == (layer, reshape)

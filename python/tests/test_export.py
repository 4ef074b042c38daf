"""The Python API: what an exported file holds, what it reproduces, what is refused."""

import json
import zipfile

import pytest
import torch
from torch import nn

import gradcam_export
from gradcam_export import ExportError, export, read_metadata


def load_and_run(path, x, taps):
    """The file's forward as the server calls it: every tap wanted, nothing replaced."""
    module = torch.jit.load(str(path))
    wanted = torch.ones(taps, dtype=torch.long)
    return module, module(x, wanted, torch.tensor(-1), torch.empty(0))


def test_a_custom_module_exports_with_its_taps_and_metadata(two_branch, tmp_path):
    path = tmp_path / "m.pt"
    meta = export(
        two_branch,
        [two_branch.fuse, "left"],
        path,
        input_size=64,
        labels=["a", "b", "c", "d", "e"],
        name="two-branch",
    )
    assert meta["format"] == gradcam_export.FORMAT
    assert meta["name"] == "two-branch"
    assert meta["num_classes"] == 5
    assert [t["name"] for t in meta["taps"]] == ["fuse", "left"]
    assert meta["default_tap"] == "fuse"
    assert meta["taps"][0]["shape"] == [16, 16, 16]
    assert meta["route"] == "fx"
    assert meta["taps"][0]["tail"], "nothing before fuse is used after it"
    assert not meta["taps"][1]["tail"], "right's output joins left's after it"
    assert meta["torch_version"] == torch.__version__.split("+")[0]
    assert read_metadata(path) == meta
    x = torch.randn(2, 3, 64, 64)
    module, (logits, differentiable, stored) = load_and_run(path, x, 2)
    assert torch.allclose(logits, two_branch(x), atol=1e-5)
    assert [tuple(s.shape) for s in stored] == [(2, 16, 16, 16), (2, 8, 16, 16)]
    # The gradient reaches both taps; fuse depends on left, so left stayed in the graph.
    score = logits[:, 0].sum()
    grads = torch.autograd.grad(score, differentiable)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # The tail reruns only what follows fuse.
    assert torch.allclose(module.tail(0, stored[0].detach().clone()), logits.detach(), atol=1e-5)


def test_the_gradient_at_a_tap_is_pytorch_grad_cams(two_branch, tmp_path):
    path = tmp_path / "m.pt"
    export(two_branch, [two_branch.fuse], path, input_size=32)
    x = torch.randn(1, 3, 32, 32)
    seen = {}
    hook = two_branch.fuse.register_forward_hook(lambda m, i, o: seen.update(out=o))
    x_eager = x.clone().requires_grad_()
    eager = two_branch(x_eager)
    (expected,) = torch.autograd.grad(eager[0, 2], seen["out"])
    hook.remove()
    _, (logits, differentiable, _) = load_and_run(path, x, 1)
    (got,) = torch.autograd.grad(logits[0, 2], differentiable)
    assert torch.allclose(got, expected, atol=1e-6)


def test_tokens_become_a_map_with_the_vit_reshape(tokens, tmp_path):
    path = tmp_path / "t.pt"
    meta = export(tokens, [tokens.norm], path, reshape_transform="vit", input_size=32)
    assert meta["taps"][0]["shape"] == [12, 4, 4]
    assert meta["taps"][0]["channel_axis"] == -1
    module = torch.jit.load(str(path))
    assert tuple(module.reshape(0, torch.zeros(2, 17, 12)).shape) == (2, 12, 4, 4)


def test_tokens_without_a_reshape_are_refused_with_a_hint(tokens, tmp_path):
    with pytest.raises(ExportError, match="reshape_transform='vit'"):
        export(tokens, [tokens.norm], tmp_path / "t.pt", input_size=32)


def test_a_layer_that_runs_twice_is_refused(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.relu = nn.ReLU()
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            x = self.relu(self.conv(self.relu(x)))
            return self.head(x.mean(dim=(2, 3)))

    model = Shared().eval()
    with pytest.raises(ExportError, match="runs 2 times"):
        export(model, [model.relu], tmp_path / "s.pt", input_size=16)


def test_a_layer_that_returns_a_tuple_is_refused(tmp_path):
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class WithPair(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            a, b = self.pair(x)
            return self.head((a + b).mean(dim=(2, 3)))

    model = WithPair().eval()
    with pytest.raises(ExportError, match="returns a tuple"):
        export(model, [model.pair], tmp_path / "p.pt", input_size=16)


def test_names_and_modules_that_are_not_the_models_are_refused(two_branch, tmp_path):
    with pytest.raises(ExportError, match="not a module of the model"):
        export(two_branch, ["fusion"], tmp_path / "x.pt", input_size=32)
    with pytest.raises(ExportError, match="not a module of the model"):
        export(two_branch, [nn.ReLU()], tmp_path / "x.pt", input_size=32)
    with pytest.raises(ExportError, match="non-empty list"):
        export(two_branch, two_branch.fuse, tmp_path / "x.pt", input_size=32)


def test_labels_must_fit_the_classes(two_branch, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ExportError, match="2 labels for a model with 5 classes"):
        export(two_branch, ["fuse"], tmp_path / "x.pt", input_size=32, labels=labels)
    labels.write_text(json.dumps(["a", "b", "c", "d", "e"]))
    meta = export(two_branch, ["fuse"], tmp_path / "x.pt", input_size=32, labels=labels)
    assert meta["labels"] == ["a", "b", "c", "d", "e"]


def test_a_model_torch_fx_cannot_trace_is_exported_by_tracing(tmp_path):
    class ShapeBranch(nn.Module):
        """Python control flow on a shape: torch.fx cannot trace it, torch.jit.trace can."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.head = nn.Linear(6, 4)

        def forward(self, x):
            if x.shape[-1] > 16:
                x = nn.functional.avg_pool2d(x, 2)
            return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))

    model = ShapeBranch().eval()
    with pytest.warns(UserWarning, match="torch.jit.trace instead"):
        meta = export(model, [model.conv], tmp_path / "b.pt", input_size=32)
    assert meta["route"] == "trace"
    assert "torch.fx" in meta["route_reason"]
    x = torch.randn(3, 3, 32, 32)
    _, (logits, _, stored) = load_and_run(tmp_path / "b.pt", x, 1)
    assert torch.allclose(logits, model(x), atol=1e-5)
    assert tuple(stored[0].shape) == (3, 6, 16, 16)


def test_a_model_that_returns_no_logits_is_refused(tmp_path):
    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    model = Features().eval()
    with pytest.raises(ExportError, match=r"logits of shape \(N, classes\)"):
        export(model, [model.conv], tmp_path / "f.pt", input_size=16)


def test_a_wrong_input_size_says_what_to_pass(tokens, tmp_path):
    with pytest.raises(ExportError, match="input_size"):
        export(tokens, [tokens.norm], tmp_path / "t.pt", reshape_transform="vit", input_size=4)


def test_metadata_of_a_file_that_is_not_exported_is_refused(two_branch, tmp_path):
    plain = tmp_path / "plain.pt"
    torch.jit.script(two_branch).save(str(plain))
    with pytest.raises(ExportError, match="no gradcam-serve metadata"):
        read_metadata(plain)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("a/data.pkl", b"x")
    with pytest.raises(ExportError, match="no gradcam-serve metadata"):
        read_metadata(tmp_path / "z.zip")

"""`export()`: a classifier and its target layers to one TorchScript file for gradcam-serve.

The file's contract is written down in the repository's docs/model-format.md. In short, the
saved module's
- `forward(x, wanted, replace_at, replacement)` returns `(logits, differentiable, stored)`:
  the raw logits, and per tap the tensor to differentiate a class score with respect to
  and the activation pytorch-grad-cam would store;
- `reshape(tap, t)` applies a tap's reshape transform (to an activation or a gradient);
- `tail(tap, a)` runs only what follows a tap, where nothing before the tap is used after
  it (`taps[i].tail` in the metadata says where);
and the archive's `extra/gradcam.json` holds the metadata.

Two routes make the network: torch.fx (the model's graph, each target layer's call
followed by the tap function, then scripted) and, for models torch.fx cannot trace,
torch.jit.trace of the model with forward hooks that call the same (scripted) tap
function. Either way the saved file is loaded back and checked against the eager model
(logits, every tap's activation and gradient) before `export` returns.
"""

import copy
import json
import operator
import os
import warnings
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from . import reshape as reshapes
from .errors import ExportError
from .taps import tap, tap_scripted

FORMAT = "gradcam-serve/torchscript"
FORMAT_VERSION = 1
METADATA_FILE = "gradcam.json"
EXPORTER_VERSION = "0.1.0"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How close the exported file must be to the eager model (relative to the largest value).
TOLERANCE = 1e-4

LayerSpec = Union[nn.Module, str]


def export(
    model: nn.Module,
    target_layers: Sequence[LayerSpec],
    path: Union[str, "os.PathLike[str]"],
    reshape_transform: reshapes.ReshapeSpec = None,
    labels: Union[None, Sequence[str], str, "os.PathLike[str]"] = None,
    input_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    name: Optional[str] = None,
    *,
    architecture: Optional[str] = None,
    route: str = "auto",
) -> Dict[str, Any]:
    """Writes `model` to `path` for gradcam-serve and returns the metadata it wrote.

    `target_layers` are modules of `model` (`[model.features[-1]]`) or their qualified
    names (`"features.8"`), as pytorch-grad-cam takes them; each becomes a tap, the first
    the default. `reshape_transform` is None, "vit", "swin", or a module (or scriptable
    function) applied to every tap's output and gradient. `labels` is a list of class
    names or a file (one per line, or a JSON array). `route` is "auto" (torch.fx, else
    torch.jit.trace), "fx" or "trace".
    """
    if route not in ("auto", "fx", "trace"):
        raise ExportError(f"route={route!r}: auto, fx or trace")
    if not isinstance(model, nn.Module):
        raise ExportError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(target_layers, (nn.Module, str)) or not target_layers:
        raise ExportError("target_layers must be a non-empty list, e.g. [model.features[-1]]")
    if not isinstance(input_size, int) or not 8 <= input_size <= 4096:
        raise ExportError(f"input_size={input_size!r}: a whole number of pixels in 8..=4096")
    mean, std = _normalisation(mean, std)

    names = _qualified_names(model, target_layers)
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    targets = [net.get_submodule(n) for n in names]
    reshape, reshape_kind = reshapes.resolve(reshape_transform)
    scripted_reshape = reshapes.script(reshape, reshape_kind)

    probe = _probe(net, names, targets, scripted_reshape, input_size)
    classes = probe["classes"]
    label_list = _labels(labels, classes)

    built, used_route, why = _build(net, names, targets, route, input_size)
    tails = _tails(net, names, targets) if used_route == "fx" else [None] * len(names)
    exported = torch.jit.script(
        _Exported(
            built,
            [scripted_reshape] * len(names),
            [t if t is not None else _NoTail() for t in tails],
        )
    )
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or architecture or type(model).__name__.lower(),
        "architecture": architecture,
        "num_classes": classes,
        "labels": label_list,
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "taps": [
            {
                "name": n,
                "reshape": reshape_kind,
                "shape": probe["shapes"][i],
                "channel_axis": reshapes.channel_axis(reshape_kind),
                "tail": tails[i] is not None,
            }
            for i, n in enumerate(names)
        ],
        "default_tap": names[0],
        "route": used_route,
        "torch_version": torch.__version__.split("+")[0],
        "exporter_version": EXPORTER_VERSION,
    }
    if why:
        metadata["route_reason"] = why
    path = os.fspath(path)
    torch.jit.save(exported, path, _extra_files={METADATA_FILE: json.dumps(metadata)})
    check(path, model, target_layers, reshape, input_size)
    return metadata


def _normalisation(mean: Sequence[float], std: Sequence[float]) -> Tuple[list, list]:
    try:
        mean = [float(v) for v in mean]
        std = [float(v) for v in std]
    except (TypeError, ValueError):
        raise ExportError(f"mean={mean!r}, std={std!r}: three numbers each") from None
    if len(mean) != 3 or len(std) != 3 or any(not s > 0 for s in std):
        raise ExportError(f"mean={mean}, std={std}: three numbers each (R, G, B), std above 0")
    return mean, std


def _qualified_names(model: nn.Module, target_layers: Sequence[LayerSpec]) -> List[str]:
    """Each target layer's qualified name, found by identity (torchvision's feature
    extraction renames nodes of modules whose names end in `_<digit>`)."""
    by_id = {}
    for qualname, module in model.named_modules():
        by_id.setdefault(id(module), qualname)
    modules = dict(model.named_modules())
    names = []
    for i, layer in enumerate(target_layers):
        if isinstance(layer, str):
            qualname = resolve_layer_name(model, layer)
        elif isinstance(layer, nn.Module):
            qualname = by_id.get(id(layer))
            if qualname is None:
                raise ExportError(
                    f"target_layers[{i}] ({type(layer).__name__}) is not a module of the model: "
                    "pass the model's own submodule (model.features[-1]), not a copy"
                )
        else:
            raise ExportError(
                f"target_layers[{i}] must be a module of the model or its name, "
                f"not {type(layer).__name__}"
            )
        if qualname == "":
            raise ExportError("a target layer is the whole model: pick a layer inside it")
        if qualname in names:
            raise ExportError(f"target layer {qualname} is listed twice")
        if qualname not in modules:
            raise ExportError(f"{qualname} is not a module of the model")
        names.append(qualname)
    return names


def resolve_layer_name(model: nn.Module, text: str) -> str:
    """`features.8`, `features[-1]` or `encoder.layers[-1].ln_1` to the module's qualified
    name, by identity."""
    module = model
    path = text.replace("[", ".[").split(".")
    try:
        for part in path:
            if part == "":
                continue
            if part.startswith("[") and part.endswith("]"):
                module = module[int(part[1:-1])]
            elif part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
                module = module[int(part)]
            else:
                module = getattr(module, part)
    except (AttributeError, IndexError, TypeError, ValueError, KeyError):
        raise ExportError(
            f"{text!r} is not a module of the model; its top-level modules are "
            f"{', '.join(n for n, _ in model.named_children())}"
        ) from None
    if not isinstance(module, nn.Module):
        raise ExportError(f"{text!r} is a {type(module).__name__}, not a module of the model")
    for qualname, m in model.named_modules():
        if m is module:
            return qualname
    raise ExportError(f"{text!r} is not a module of the model")


def _labels(labels, classes: int) -> Optional[List[str]]:
    if labels is None:
        return None
    if isinstance(labels, (str, os.PathLike)):
        with open(labels, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            try:
                names = json.loads(text)
            except json.JSONDecodeError as e:
                raise ExportError(
                    f"labels file {labels}: not a JSON array of strings ({e})"
                ) from None
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        names = list(labels)
    if not all(isinstance(n, str) for n in names):
        raise ExportError("labels must be strings")
    if len(names) != classes:
        raise ExportError(
            f"{len(names)} labels for a model with {classes} classes: one label per class, in "
            "the classifier's order"
        )
    return names


def _input(batch: int, input_size: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, input_size, input_size, generator=generator)


def _probe(net, names, targets, reshape, input_size) -> Dict[str, Any]:
    """Runs the eager model once with hooks: each target must run once and return a
    tensor, the logits must be (N, classes), each reshaped output (N, C, H, W)."""
    calls: Dict[int, list] = {i: [] for i in range(len(targets))}

    def hook(i):
        def record(module, inputs, output):
            calls[i].append(output)

        return record

    handles = [t.register_forward_hook(hook(i)) for i, t in enumerate(targets)]
    try:
        with torch.no_grad():
            try:
                logits = net(_input(2, input_size))
            except Exception as e:
                raise ExportError(
                    f"the model failed on a {input_size}x{input_size} input ({e}); pass the "
                    "input_size it was made for"
                ) from None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.size(0) != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ExportError(
            f"the model returns {shape}; gradcam-serve explains classifiers whose forward "
            "returns logits of shape (N, classes)"
        )
    shapes = []
    for i, name in enumerate(names):
        outputs = calls[i]
        if not outputs:
            raise ExportError(f"target layer {name} does not run in the model's forward")
        if len(outputs) > 1:
            raise ExportError(
                f"target layer {name} runs {len(outputs)} times in one forward (a module "
                "used in several places, like ResNet's shared relu): its output is not one "
                "activation; pick a module that runs once (ResNet: layer4[-1])"
            )
        out = outputs[0]
        if not isinstance(out, Tensor):
            raise ExportError(
                f"target layer {name} returns a {type(out).__name__}, not a tensor: pick "
                "a layer whose output is one tensor"
            )
        try:
            mapped = reshape(out)
        except Exception as e:
            raise ExportError(f"target layer {name}: the reshape_transform failed ({e})") from None
        if mapped.dim() != 4 or mapped.size(0) != 2:
            hint = " (tokens: pass reshape_transform='vit' or 'swin')" if out.dim() == 3 else ""
            raise ExportError(
                f"target layer {name} gives {tuple(mapped.shape)} after its reshape, not a "
                f"(N, C, H, W) map{hint}"
            )
        shapes.append(list(mapped.shape[1:]))
    return {"classes": int(logits.size(1)), "shapes": shapes}


class _LeafTracer(torch.fx.Tracer):
    """torch.fx's tracer, with the target layers kept as calls (not traced through)."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves = {id(m) for m in leaves}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _trace_graph(net: nn.Module, targets) -> Tuple[torch.fx.Graph, Dict[int, Any]]:
    """The model's fx graph, and each target's one call node."""
    tracer = _LeafTracer(targets)
    graph = tracer.trace(net)
    nodes: Dict[int, Any] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = net.get_submodule(node.target)
        for i, t in enumerate(targets):
            if module is t:
                if i in nodes:
                    raise ExportError(f"target layer {node.target} is called twice in the graph")
                nodes[i] = node
    missing = [i for i in range(len(targets)) if i not in nodes]
    if missing:
        raise ExportError(f"target layer #{missing[0]} is not called in the traced graph")
    return graph, nodes


def _build(net, names, targets, route, input_size):
    """The network with its taps, as a ScriptModule: (module, route used, why not fx)."""
    why = None
    if route in ("auto", "fx"):
        try:
            return _build_fx(net, targets), "fx", None
        except Exception as e:  # torch.fx and TorchScript raise many kinds
            if route == "fx":
                raise ExportError(f"torch.fx could not make the model ({e})") from None
            why = f"torch.fx: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(
                f"torch.fx cannot trace or script this model ({why}); exporting with "
                "torch.jit.trace instead",
                stacklevel=3,
            )
    try:
        return _build_trace(net, names, targets, input_size), "trace", why
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(
            "neither torch.fx nor torch.jit.trace can export this model "
            f"({why + '; ' if why else ''}torch.jit.trace: {e}). Make its forward traceable "
            "(no data-dependent Python control flow), or report it with the model's code"
        ) from None


def _build_fx(net, targets) -> torch.jit.ScriptModule:
    graph, nodes = _trace_graph(net, targets)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ExportError("the model's forward takes more than one argument (the image)")
    with graph.inserting_after(placeholders[0]):
        replacement = graph.placeholder("gradcam_replacement", type_expr=Tensor)
    with graph.inserting_after(placeholders[0]):
        replace_at = graph.placeholder("gradcam_replace_at", type_expr=Tensor)
    with graph.inserting_after(placeholders[0]):
        wanted = graph.placeholder("gradcam_wanted", type_expr=Tensor)
    placeholders[0].type = Tensor
    differentiable, stored = [], []
    for i in range(len(targets)):
        node = nodes[i]
        with graph.inserting_after(node):
            tapped = graph.call_function(tap, (node, i, wanted, replace_at, replacement))
        with graph.inserting_after(tapped):
            downstream = graph.call_function(operator.getitem, (tapped, 0))
        with graph.inserting_after(downstream):
            diff = graph.call_function(operator.getitem, (tapped, 1))
        node.replace_all_uses_with(downstream, delete_user_cb=lambda user, t=tapped: user is not t)
        differentiable.append(diff)
        stored.append(downstream)
    output = next(n for n in graph.nodes if n.op == "output")
    logits = output.args[0]
    graph.erase_node(output)
    graph.output((logits, differentiable, stored))
    graph.lint()
    module = torch.fx.GraphModule(net, graph)
    return torch.jit.script(module)


class _Hooked(nn.Module):
    """The model with forward hooks that call the tap function, for torch.jit.trace."""

    def __init__(self, net: nn.Module, targets: List[nn.Module]):
        super().__init__()
        self.net = net
        self.targets = targets

    def forward(self, x, wanted, replace_at, replacement):
        differentiable: Dict[int, Tensor] = {}
        stored: Dict[int, Tensor] = {}

        def hook(i):
            def call(module, inputs, output):
                downstream, diff = tap_scripted(output, i, wanted, replace_at, replacement)
                differentiable[i] = diff
                stored[i] = downstream
                return downstream

            return call

        handles = [t.register_forward_hook(hook(i)) for i, t in enumerate(self.targets)]
        try:
            logits = self.net(x)
        finally:
            for h in handles:
                h.remove()
        order = range(len(self.targets))
        return logits, [differentiable[i] for i in order], [stored[i] for i in order]


def _build_trace(net, names, targets, input_size) -> torch.jit.ScriptModule:
    args = _arguments(_input(2, input_size), len(targets))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(_Hooked(net, targets), args, strict=False, check_trace=False)
    return traced


def _tails(net, names, targets) -> List[Optional[torch.jit.ScriptModule]]:
    """For each tap, what follows it as a module of its own (activation to logits), where
    that part uses nothing computed before the tap but the tap's output (a residual
    connection around the layer, as in ViT's blocks, rules it out); else None."""
    graph, nodes = _trace_graph(net, targets)
    tails = []
    for i in range(len(targets)):
        tail = _tail_graph(graph, nodes[i])
        try:
            tails.append(
                None if tail is None else torch.jit.script(torch.fx.GraphModule(net, tail))
            )
        except Exception:  # a tail TorchScript cannot compile: AblationCAM reruns the model
            tails.append(None)
    return tails


def _tail_graph(graph: torch.fx.Graph, start) -> Optional[torch.fx.Graph]:
    """The nodes after `start` that depend on it, as a graph from its output to the
    logits, or None when they also need another value computed before it."""
    output = next(n for n in graph.nodes if n.op == "output")
    after = set()
    for node in graph.nodes:
        depends = any(a is start or a in after for a in node.all_input_nodes)
        if depends and node.op != "output":
            after.add(node)
    result = output.args[0]
    if not (isinstance(result, torch.fx.Node) and result in after):
        return None
    inputs = {a for node in after for a in node.all_input_nodes}
    if any(a is not start and a not in after and a.op != "get_attr" for a in inputs):
        return None
    tail = torch.fx.Graph()
    env = {start: tail.placeholder("activation", type_expr=Tensor)}
    for node in graph.nodes:
        if node in after or (node.op == "get_attr" and any(u in after for u in node.users)):
            env[node] = tail.node_copy(node, env.__getitem__)
    tail.output(env[result])
    tail.lint()
    return tail


class _NoTail(nn.Module):
    """A tap whose following part needs values from before it."""

    def forward(self, activation: Tensor) -> Tensor:
        raise RuntimeError("this tap has no tail: replace its output in forward instead")


class _Exported(nn.Module):
    """The saved module (see the module's documentation and docs/model-format.md)."""

    def __init__(self, net: nn.Module, reshapes: List[nn.Module], tails: List[nn.Module]):
        super().__init__()
        self.net = net
        self.reshapes = nn.ModuleList(reshapes)
        self.tails = nn.ModuleList(tails)

    def forward(
        self, x: Tensor, wanted: Tensor, replace_at: Tensor, replacement: Tensor
    ) -> Tuple[Tensor, List[Tensor], List[Tensor]]:
        # The first wanted tap switches autograd on (taps.tap); the caller's mode is back
        # when this returns.
        enabled = torch.is_grad_enabled()
        out = self.net(x, wanted, replace_at, replacement)
        torch.set_grad_enabled(enabled)
        return out

    @torch.jit.export
    def reshape(self, tap: int, t: Tensor) -> Tensor:
        for i, r in enumerate(self.reshapes):
            if i == tap:
                return r(t)
        raise IndexError("no such tap")

    @torch.jit.export
    def tail(self, tap: int, activation: Tensor) -> Tensor:
        for i, t in enumerate(self.tails):
            if i == tap:
                return t(activation)
        raise IndexError("no such tap")


def _arguments(x: Tensor, taps: int, wanted: bool = True):
    """forward's arguments: every tap wanted (or none), nothing replaced."""
    return (
        x,
        torch.full((taps,), int(wanted), dtype=torch.long),
        torch.tensor(-1, dtype=torch.long),
        torch.empty(0),
    )


def _eager_reference(model, target_layers, reshape, x):
    """pytorch-grad-cam's view of the model: logits, and at each target layer the
    (reshaped) output and the gradient of the sum of each image's top-1 logit."""
    net = copy.deepcopy(model).eval()
    names = _qualified_names(model, target_layers)
    targets = [net.get_submodule(n) for n in names]
    outputs: Dict[int, Tensor] = {}
    grads: Dict[int, Tensor] = {}

    def hook(i):
        def record(module, inputs, output):
            outputs[i] = output

            def store(grad):
                grads[i] = grad

            output.register_hook(store)

        return record

    handles = [t.register_forward_hook(hook(i)) for i, t in enumerate(targets)]
    try:
        x = x.clone().requires_grad_(True)
        logits = net(x)
        score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        score.backward()
    finally:
        for h in handles:
            h.remove()
    n = len(targets)
    activations = [reshape(outputs[i].detach()) for i in range(n)]
    gradients = [reshape(grads[i]) if i in grads else None for i in range(n)]
    return logits.detach(), activations, gradients


def _close(got: Tensor, want: Tensor) -> float:
    """The largest difference relative to the largest absolute value wanted."""
    scale = want.abs().max().clamp_min(1e-12)
    return float(((got - want).abs().max() / scale).item())


def check(path, model, target_layers, reshape, input_size, batch: int = 3) -> None:
    """Loads the written file and compares it with the eager model on a batch size that
    the export did not use: logits, every tap's activation and gradient. Three calls in a
    row with the graph executor's optimisation off, as the server runs it."""
    loaded = torch.jit.load(os.fspath(path))
    x = _input(batch, input_size, seed=1)
    logits, activations, gradients = _eager_reference(model, target_layers, reshape, x)
    previous = torch._C._get_graph_executor_optimize()
    torch._C._set_graph_executor_optimize(False)
    try:
        for _ in range(3):
            # As the server calls it: without autograd, which the first wanted tap turns on.
            with torch.no_grad():
                out, differentiable, stored = loaded(*_arguments(x, len(activations)))
                restored = not torch.is_grad_enabled()
            problems = [] if restored else ["the caller's autograd mode"]
            if out.shape != logits.shape or _close(out.detach(), logits) > TOLERANCE:
                problems.append("logits")
            score = out.gather(1, out.argmax(1, keepdim=True)).sum()
            wrt = [d for d in differentiable if d.requires_grad]
            found = torch.autograd.grad(score, wrt, allow_unused=True) if wrt else []
            found = iter(found)
            for i, (d, s) in enumerate(zip(differentiable, stored)):
                a = loaded.reshape(i, s.detach())
                if a.shape != activations[i].shape or _close(a, activations[i]) > TOLERANCE:
                    problems.append(f"tap {i} activation")
                g = next(found) if d.requires_grad else None
                want = gradients[i]
                if want is None:
                    continue
                if g is None:
                    problems.append(f"tap {i} gradient (none)")
                    continue
                g = loaded.reshape(i, g)
                if g.shape != want.shape or _close(g, want) > TOLERANCE:
                    problems.append(f"tap {i} gradient")
            if problems:
                raise ExportError(
                    f"the exported file does not reproduce the model ({', '.join(problems)} "
                    "differ): please report this with the model's code"
                )
    finally:
        torch._C._set_graph_executor_optimize(previous)


def read_metadata(path: Union[str, "os.PathLike[str]"]) -> Dict[str, Any]:
    """The metadata of an exported file, read from its archive without loading the model."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
            if not names:
                raise ExportError(
                    f"{path} has no gradcam-serve metadata: export it with gradcam_export"
                )
            return json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, FileNotFoundError) as e:
        raise ExportError(f"{path} is not an exported model ({e})") from None

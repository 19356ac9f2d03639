"""The backbone registry: one declarative line per backbone, plus any timm model as `timm:<name>`.

`create_model(name, num_classes, weights)` builds a backbone, loads its weights and replaces the classifier head.
ImageNet weights come through torchvision's weight enums (torch.hub's download and `$TORCH_HOME` cache); WaveMix's
through torch.hub's loader from its published checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision.models as tvm
from torch import nn

from backbones.errors import UserError
from backbones.models.wavemix import wavemix_192_16

WAVEMIX_IMAGENET_URL = (
    "https://huggingface.co/cloudwalker/wavemix/resolve/main/Saved_Models_Weights/ImageNet/wavemix_192_16_75.06.pth"
)


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone: builder, ImageNet weights, dotted path of its classifier, reference size."""

    builder: Callable[..., nn.Module]
    imagenet: tvm.WeightsEnum | str  # a torchvision weights enum, or a checkpoint URL
    head: str
    params_m: float  # millions, with the 1000-class ImageNet head
    aliases: tuple[str, ...] = ()
    input_multiple: int = 1  # height and width must be multiples of this


BACKBONES: dict[str, Backbone] = {
    "resnet50": Backbone(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V2, "fc", 25.6, ("resnet",)),
    "wavemix": Backbone(wavemix_192_16, WAVEMIX_IMAGENET_URL, "pool.2", 27.9, (), input_multiple=32),
    "convnext_tiny": Backbone(
        tvm.convnext_tiny, tvm.ConvNeXt_Tiny_Weights.IMAGENET1K_V1, "classifier.2", 28.6, ("convnext",)
    ),
    "swin_t": Backbone(tvm.swin_t, tvm.Swin_T_Weights.IMAGENET1K_V1, "head", 28.3, ("swin",)),
    "swin_v2_t": Backbone(tvm.swin_v2_t, tvm.Swin_V2_T_Weights.IMAGENET1K_V1, "head", 28.4, ("swinv2",)),
    "efficientnet_v2_s": Backbone(
        tvm.efficientnet_v2_s, tvm.EfficientNet_V2_S_Weights.IMAGENET1K_V1, "classifier.1", 21.5, ("efficientnet",)
    ),
    "densenet161": Backbone(tvm.densenet161, tvm.DenseNet161_Weights.IMAGENET1K_V1, "classifier", 28.7, ("densenet",)),
    "mobilenet_v3_large": Backbone(
        tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V2, "classifier.3", 5.5, ("mobilenet",)
    ),
    "regnet_y_3_2gf": Backbone(tvm.regnet_y_3_2gf, tvm.RegNet_Y_3_2GF_Weights.IMAGENET1K_V2, "fc", 19.4, ("regnet",)),
    "resnext50_32x4d": Backbone(
        tvm.resnext50_32x4d, tvm.ResNeXt50_32X4D_Weights.IMAGENET1K_V2, "fc", 25.0, ("resnext",)
    ),
    "shufflenet_v2_x2_0": Backbone(
        tvm.shufflenet_v2_x2_0, tvm.ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1, "fc", 7.4, ("shufflenet",)
    ),
}
ALIASES = {alias: name for name, entry in BACKBONES.items() for alias in entry.aliases}
TIMM_PREFIX = "timm:"


def list_models() -> list[str]:
    """The canonical names of the registered backbones, in the benchmark's order."""
    return list(BACKBONES)


def resolve_name(name: str) -> str:
    """Map an alias to its canonical name; `timm:<name>` passes through. Unknown names raise `UserError`."""
    if name.startswith(TIMM_PREFIX):
        return name
    name = ALIASES.get(name, name)
    if name not in BACKBONES:
        known = ", ".join(f"{n} ({', '.join(BACKBONES[n].aliases)})" if BACKBONES[n].aliases else n for n in BACKBONES)
        raise UserError(
            f"Unknown model '{name}'. Known backbones (aliases in brackets): {known}. "
            f"Any timm model also works as 'timm:<name>', e.g. timm:resnet18."
        )
    return name


def resolve_names(names: list[str]) -> list[str]:
    """Canonical names of `names` (aliases, timm:<name>, or 'all' for the eleven), each once, in the order given."""
    expanded = [m for name in names for m in (list_models() if name == "all" else [resolve_name(name)])]
    return list(dict.fromkeys(expanded))


def input_multiple(name: str) -> int:
    """What the backbone's input height and width must be a multiple of (1 when anything goes)."""
    name = resolve_name(name)
    return 1 if name.startswith(TIMM_PREFIX) else BACKBONES[name].input_multiple


@dataclass(frozen=True)
class Weights:
    """What --weights names, read once: 'imagenet', 'none' (random init), or a checkpoint FILE with what this tool
    recorded beside the weights (`meta`: dataset, classes, seed, split)."""

    kind: str  # 'imagenet', 'none' or 'file'
    path: Path | None = None
    checkpoint: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, weights: str | Weights) -> Weights:
        if isinstance(weights, Weights):
            return weights
        if weights in ("imagenet", "none"):
            return cls(weights)
        return cls("file", Path(weights), load_checkpoint(Path(weights)))

    @property
    def meta(self) -> dict:
        meta = self.checkpoint.get("meta", {})
        return meta if isinstance(meta, dict) else {}

    def __str__(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind


def create_model(name: str, num_classes: int, weights: str | Weights = "imagenet") -> nn.Module:
    """Build backbone `name` with a `num_classes`-way head.

    `weights` is "imagenet" (pretrained ImageNet-1k), "none" (random init), or the path of a checkpoint written by
    this tool (`best.pt`) or of a plain state dict.
    """
    if num_classes < 1:
        raise UserError(f"num_classes must be at least 1, got {num_classes}.")
    return _build(resolve_name(name), Weights.parse(weights), num_classes)[0]


def create_feature_extractor(name: str, weights: str | Weights = "imagenet") -> tuple[nn.Module, nn.Module | None]:
    """The backbone returning its penultimate features (its classifier replaced by the identity), and that
    classifier: ImageNet's for "imagenet", the checkpoint's own for a FILE written by this tool, None for random
    weights (a random head predicts nothing)."""
    name, weights = resolve_name(name), Weights.parse(weights)
    num_classes = None
    if weights.kind == "file":
        num_classes = weights.meta.get("num_classes")
        if num_classes is None:
            raise UserError(
                f"--weights {weights} does not record its number of classes (no 'meta' written by this tool): "
                "pass a best.pt written by a dataset script, or --weights imagenet."
            )
    model, head = _build(name, weights, num_classes)
    classifier = model.get_submodule(head)
    _set_submodule(model, head, nn.Identity())
    return model, None if weights.kind == "none" else classifier


def freeze_all_but_head(model: nn.Module, name: str) -> None:
    """Linear probing: only the classifier keeps trainable weights."""
    name = resolve_name(name)
    head = model.pretrained_cfg.get("classifier", "head") if name.startswith(TIMM_PREFIX) else BACKBONES[name].head
    for key, parameter in model.named_parameters():
        parameter.requires_grad = key.startswith(head + ".")


def _build(name: str, weights: Weights, num_classes: int | None) -> tuple[nn.Module, str]:
    """(model, dotted path of its classifier); `num_classes` None keeps the architecture's 1000-class head."""
    if name.startswith(TIMM_PREFIX):
        model, head = _create_timm(name[len(TIMM_PREFIX) :], num_classes, weights.kind == "imagenet")
    else:
        entry = BACKBONES[name]
        model = _build_imagenet(name, entry) if weights.kind == "imagenet" else entry.builder()
        head = entry.head
        if num_classes is not None:
            old = model.get_submodule(head)
            _set_submodule(model, head, nn.Linear(old.in_features, num_classes))
    if weights.kind == "file":
        load_weights_file(model, weights, head)
    return model, head


def _create_timm(name: str, num_classes: int | None, pretrained: bool) -> tuple[nn.Module, str]:
    import timm

    if not timm.is_model(name):
        raise UserError(
            f"timm has no model '{name}'. List them with: python -c \"import timm; print(timm.list_models())\"."
        )
    try:
        model = timm.create_model(
            name, pretrained=pretrained, **({} if num_classes is None else {"num_classes": num_classes})
        )
    except (OSError, RuntimeError, ValueError) as err:
        raise UserError(
            f"Could not load timm's pretrained weights for '{name}' ({err}). timm fetches them from the Hugging "
            f"Face hub into its cache (HF_HOME); offline, copy that cache from a connected machine, or use "
            f"--weights none or --weights FILE."
        ) from err
    return model, model.pretrained_cfg.get("classifier", "head")


def _build_imagenet(name: str, entry: Backbone) -> nn.Module:
    url = entry.imagenet if isinstance(entry.imagenet, str) else entry.imagenet.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    try:
        if isinstance(entry.imagenet, str):
            model = entry.builder()
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
            model.load_state_dict(_unwrap_state_dict(state))
            return model
        return entry.builder(weights=entry.imagenet)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise UserError(
            f"Could not load the ImageNet weights of {name} from {url} ({type(err).__name__}: {err}). They are "
            f"cached at {cached} (set TORCH_HOME to move the cache). Offline, download that file on a connected "
            f"machine and copy it there; if the cached file is corrupt, delete it and retry. Or train without "
            f"them with --weights none, or pass a checkpoint with --weights FILE."
        ) from err


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _unwrap_state_dict(checkpoint: object) -> dict[str, torch.Tensor]:
    """Accept this tool's checkpoints ({'model': ...}), common wrappers, and DataParallel/compile prefixes."""
    state = checkpoint
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the file holds no state dict of tensors")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state.items()}


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint file safely (`weights_only`), with a clear error when it is missing or unreadable."""
    if not path.is_file():
        raise UserError(
            f"The weights file {path} does not exist. Pass --weights imagenet, --weights none, or the path of a "
            f"checkpoint such as runs/<run>/best.pt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a truncated or foreign file
        raise UserError(
            f"Could not read weights file {path}: {type(err).__name__}: {err}. Expected a checkpoint written by "
            f"this tool (best.pt) or a PyTorch state dict saved with torch.save; the file may be truncated or "
            f"corrupt, so re-copy or re-create it."
        ) from err
    return checkpoint if isinstance(checkpoint, dict) else {}


def load_weights_file(model: nn.Module, weights: Weights, head: str) -> None:
    """Load a checkpoint into `model`; a head of another class count is skipped (fine-tuning a new task)."""
    path = weights.path
    try:
        state = _unwrap_state_dict(weights.checkpoint)
    except ValueError as err:
        raise UserError(
            f"Weights file {path}: {err}. Expected a checkpoint written by this tool or a state dict."
        ) from err
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith(head + ".")}
    skipped = sorted(k for k in head_keys if k in state and state[k].shape != own[k].shape)
    for key in skipped:
        del state[key]
    missing = sorted(set(own) - set(state) - set(skipped))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        raise UserError(
            f"Weights file {path} does not fit this model: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:3]}). Check that -model names the architecture the file was saved from."
        )
    model.load_state_dict(state, strict=False)
    if skipped:
        print(f"note: {path} has a classifier for another number of classes; its head was left freshly initialised")


def check_input_size(model_name: str, size: tuple[int, int]) -> None:
    """Refuse, before any work, a size the backbone cannot take (WaveMix: multiples of 32)."""
    multiple = input_multiple(model_name)
    if any(side % multiple for side in size):
        raise UserError(
            f"{model_name} needs an input height and width that are multiples of {multiple}, got "
            f"--image-size {size[0]}x{size[1]}; try {max(multiple, round(size[0] / multiple) * multiple)}."
        )

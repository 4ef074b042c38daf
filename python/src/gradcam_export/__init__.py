"""Export a PyTorch image classifier as one TorchScript file that gradcam-serve explains.

    import gradcam_export
    gradcam_export.export(model, target_layers=[model.features[-1]], path="model.pt")

or, for torchvision architectures, `python -m gradcam_export torchvision ARCH ...`.
The file format is described in gradcam-serve's docs/model-format.md.
"""

from .errors import ExportError
from .exporter import (
    EXPORTER_VERSION,
    FORMAT,
    FORMAT_VERSION,
    METADATA_FILE,
    export,
    read_metadata,
    resolve_layer_name,
)

__all__ = [
    "EXPORTER_VERSION",
    "FORMAT",
    "FORMAT_VERSION",
    "METADATA_FILE",
    "ExportError",
    "export",
    "read_metadata",
    "resolve_layer_name",
]
__version__ = EXPORTER_VERSION

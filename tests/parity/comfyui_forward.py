"""Run a Wan DiT file through ComfyUI's own loader and model: `python comfyui_forward.py COMFYUI_ROOT FILE INPUTS OUT`.

A separate process (the test runs it with ComfyUI's folder first on sys.path): importing ComfyUI sets up its device
and argument handling, which must not leak into the test process. ComfyUI's comfy.sd imports every model family's
module, and some of those import packages the Wan path never calls (torchvision, torchaudio, torchsde ...); where
one is not installed, an empty module of that name lets the import finish (any use would fail loudly, not quietly).

The file is read by comfy.sd.load_diffusion_model exactly as a ComfyUI workflow's "Load Diffusion Model" node
reads it (model detection, the scaled fp8 / per-layer quantized ops), in float32 on the CPU; INPUTS (safetensors:
x [B, C, F, H, W], t [B], context [B, 512, 4096]) go through the loaded WanModel's forward."""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

OPTIONAL = ("torchvision", "torchaudio", "torchsde", "kornia", "spandrel", "av", "aiohttp", "alembic", "sqlalchemy")


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for OPTIONAL packages that are not installed (and their submodules)."""

    def __init__(self):
        self.missing = {name for name in OPTIONAL if importlib.util.find_spec(name) is None}

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.missing:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _placeholder
        return module

    def exec_module(self, module):
        pass


def _placeholder(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {})  # a class: usable in annotations and isinstance checks at import time only


def main(root: str, path: str, inputs_path: str, out_path: str) -> None:
    sys.path.insert(0, root)
    sys.meta_path.append(_Absent())
    import torch
    from safetensors.torch import load_file, save_file

    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # ComfyUI's --cpu
    import comfy.sd

    inputs = load_file(inputs_path)
    patcher = comfy.sd.load_diffusion_model(path, model_options={"dtype": torch.float32})
    net = patcher.model.diffusion_model.eval()
    with torch.no_grad():
        out = net(inputs["x"], inputs["t"], inputs["context"])
    save_file({"out": out.contiguous()}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:5])

"""GGUF files of Wan DiTs, as city96's ComfyUI-GGUF writes and reads them (``wan2.1-t2v-14b-Q4_K_M.gguf``, ...).

- ``general.architecture`` is ``"wan"``; tensors carry the official Wan names (a ``model.diffusion_model.`` prefix,
  if any, is stripped);
- dims are stored in GGUF order, the torch shape reversed;
- the block linears are in a ggml quantization (Q8_0, Q4_K, Q5_K, Q6_K, ...), while 1-D and small tensors, the
  modulation and the 5-D patch embedding (appended by ComfyUI-GGUF's ``fix_5d_tensors.py``) stay F32/F16/BF16.

Tensors are read through the gguf package (``GGUFReader`` maps the file; ``gguf.quants.dequantize``) one at a time,
each dequantized to float32 and cast at once to the target dtype, so the model never sits in float32 beside its
final copy. Quantizations outside QTYPES are refused before any data is read, naming them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wan_train.models.checkpoint.errors import CheckpointError
from wan_train.models.checkpoint.safetensors_io import TensorInfo

GGUF_SUFFIX = ".gguf"
ARCHITECTURE = "wan"
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
# the ggml quantizations read (dequantized by the gguf package): ComfyUI-GGUF's torch kernels cover the same
QTYPES = ("Q8_0", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K")


def read_gguf(path: Path) -> tuple[dict[str, TensorInfo], object]:
    """(entries by tensor name, prefix stripped, with torch shapes; the open GGUFReader). A quantized tensor's
    entry has dtype float32 (what it dequantizes to) and ``quant`` its ggml type."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the gguf package raises ValueError / struct errors / OSError on a bad file
        raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    field = reader.get_field("general.architecture")
    arch = field.contents() if field is not None else None
    if arch != ARCHITECTURE:
        raise CheckpointError(f"{path}: general.architecture is {arch!r}, not {ARCHITECTURE!r} (a Wan DiT GGUF)")
    entries: dict[str, TensorInfo] = {}
    unsupported: Counter = Counter()
    for tensor in reader.tensors:
        qtype = tensor.tensor_type.name
        name = next((tensor.name.removeprefix(p) for p in PREFIXES if tensor.name.startswith(p)), tensor.name)
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if qtype not in FLOATS and qtype not in QTYPES:
            unsupported[qtype] += 1
        entries[name] = TensorInfo(path, tensor.name, FLOATS.get(qtype, torch.float32), shape,
                                   quant=None if qtype in FLOATS else qtype)
    if "patch_embedding.weight" not in entries and "patch_embedding.bias" in entries:
        raise CheckpointError(f"{path}: no patch_embedding.weight: ComfyUI-GGUF's convert.py leaves this 5-D tensor "
                              "out; its tools/fix_5d_tensors.py appends it to the file")
    if unsupported:
        kinds = ", ".join(f"{q} ({n} tensors)" for q, n in unsupported.items())
        raise CheckpointError(f"{path}: quantized as {kinds}, which wan_train does not read (it reads "
                              f"{', '.join(QTYPES)}, F32, F16, BF16)")
    return entries, reader


def describe(entries: dict[str, TensorInfo]) -> str:
    """"GGUF (Q4_K 240, F32 600)": the file's tensor types by count."""
    names = {dtype: name for name, dtype in FLOATS.items()}
    types = Counter(info.quant or names[info.dtype] for info in entries.values())
    return "GGUF (" + ", ".join(f"{t} {n}" for t, n in types.most_common()) + ")"


def unquantized_dtype(entries: dict[str, TensorInfo]) -> torch.dtype:
    """The commonest dtype of the file's unquantized tensors of 2 or more dims, else float32."""
    dtypes = Counter(i.dtype for i in entries.values() if i.quant is None and len(i.shape) > 1)
    return dtypes.most_common(1)[0][0] if dtypes else torch.float32


def assign_gguf(model: nn.Module, found: dict[str, TensorInfo], reader, *, dtype: torch.dtype, keep_fp32: set[str],
                device: torch.device | str) -> None:
    """Each tensor of ``found`` (model names, checked) dequantized and cast to ``dtype`` (float32 for the
    ``keep_fp32`` names) straight into the meta-built model."""
    import gguf

    by_key = {t.name: t for t in reader.tensors}
    for name, info in found.items():
        target = torch.float32 if name in keep_fp32 else dtype
        if torch.device(device).type == "meta":  # what a load would hold, nothing read
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, nn.Parameter(torch.empty(info.shape, dtype=target,
                                                                                     device="meta")))
            continue
        tensor = by_key[info.key]
        try:
            array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise CheckpointError(f"{info.file}: tensor {info.key} ({tensor.tensor_type.name}): {e}") from None
        values = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(info.shape)  # a copy off the map
        values = values.to(device=device, dtype=target)
        module_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(module_name), attr, nn.Parameter(values))

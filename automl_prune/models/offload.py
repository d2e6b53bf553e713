"""Block-streamed models: decoder blocks whose weights live off the device, one block brought in at a time.

``offload``:

* ``none``: the whole model lives on the device (no store);
* ``cpu``: every block's weights are kept in host memory; a block is copied to the device while it
  is worked on (on a CPU device that copy is the same tensors);
* ``disk``: every block's weights stay in safetensors files, memory-mapped (``safetensors.safe_open``):
  the model's own checkpoint files until a block is written back (a pruned block), then a file per
  block in the offload folder. Host memory holds the non-block weights (embeddings, final norm,
  LM head) and one block.

Between uses a block's parameters are on the ``meta`` device: nothing runs through it by mistake.
What every block receives (attention masks, rotary embeddings) and the hidden states entering the
first block come from the model's own forward with the blocks passed through (``passthrough``),
so no block needs its weights for that.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..errors import UserError
from ..host_memory import trim_host_memory
from .adapters import decoder_blocks

OFFLOAD_MODES = ("none", "cpu", "disk")


def check_offload(mode: str) -> str:
    if mode not in OFFLOAD_MODES:
        raise UserError(f"offload must be one of {', '.join(OFFLOAD_MODES)}, not {mode!r}")
    return mode


def temporary_folder(parent: str | os.PathLike | None = None) -> Path:
    """A folder of this process's own for offloaded blocks (inside ``parent``, default the system's
    temporary folder), removed when the process ends: workers that share an offload folder never
    write each other's files."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="automl-prune-offload-", dir=parent))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _to_device(model: nn.Module, device: torch.device) -> None:
    """Every parameter and buffer that is not on the meta device (the blocks' weights are) to ``device``
    (tied parameters stay tied)."""
    model._apply(lambda t: t if t.device.type == "meta" or t.device == device else t.to(device))


def _owner(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (root.get_submodule(path) if path else root), leaf


def _set_param(root: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module, leaf = _owner(root, name)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


def _block_prefix(model: nn.Module, blocks: list[nn.Module]) -> list[str]:
    ids = {id(b): i for i, b in enumerate(blocks)}
    prefixes = [""] * len(blocks)
    for name, module in model.named_modules():
        if id(module) in ids:
            prefixes[ids[id(module)]] = name + "."
    return prefixes


class BlockStore:
    """Where the decoder blocks' parameters live between uses, and how one is brought to the device.

    ``sources[i]``: per parameter of block ``i`` (name relative to the block), for ``disk`` the
    (file, key) it is read from, for ``cpu`` the host tensor.
    """

    def __init__(self, model: nn.Module, blocks: list[nn.Module], mode: str, device: torch.device | str,
                 dtype: torch.dtype, sources: list[dict], folder: str | os.PathLike | None = None):
        self.model, self.blocks, self.mode = model, blocks, mode
        self.device, self.dtype = torch.device(device), dtype
        self.sources = sources
        self.folder = Path(folder) if folder is not None else None
        self.prefixes = _block_prefix(model, blocks)
        self.shapes = [{n: tuple(p.shape) for n, p in b.named_parameters()} for b in blocks]
        self.loads = 0  # blocks brought in so far (a figure for the benchmarks)
        for i in range(len(blocks)):
            self._release(i)

    # ----- building ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, blocks: list[nn.Module], mode: str, *, folder=None,
                   device: torch.device | str | None = None) -> "BlockStore":
        """Offload the blocks of a model loaded whole (``disk``: written block by block to a folder of
        this process's own inside ``folder``); ``device``: where a block runs and the rest of the
        model lives (default: where the model is; a model loaded on the host for a larger-than-device
        run is then moved there without its blocks)."""
        first = next(blocks[0].parameters())
        dtype = first.dtype
        device = first.device if device is None else torch.device(device)
        sources: list[dict] = []
        if mode == "disk":
            folder = temporary_folder(folder)
        for i, block in enumerate(blocks):
            params = {n: p.detach() for n, p in block.named_parameters()}
            if mode == "cpu":
                sources.append({n: t.to("cpu") for n, t in params.items()})
            else:
                path = folder / f"block-{i:04d}.safetensors"
                save_file({n: t.cpu().contiguous() for n, t in params.items()}, str(path))
                sources.append({n: (str(path), n) for n in params})
            for n, p in params.items():  # the block's memory is given back as soon as it is stored
                _set_param(block, n, torch.empty(p.shape, dtype=p.dtype, device="meta"))
        _to_device(model, device)
        return cls(model, blocks, mode, device, dtype, sources, folder)

    # ----- one block at a time ------------------------------------------------------------------
    def _read(self, i: int, device: torch.device | None = None, *, writable: bool = True) -> dict[str, torch.Tensor]:
        """Block ``i``'s weights on ``device`` (default the store's). ``writable``: a copy, so that what
        is done to them does not reach the store (from disk always a copy: safe_open's tensors are
        views of one memory map, which a change in place would reach); a read-only use of a ``cpu``
        store on a CPU device gets the host tensors themselves. Files are opened per read and closed
        after it, so the pages of a block read earlier do not stay mapped (and counted in the
        process's memory)."""
        device = self.device if device is None else device
        if self.mode == "cpu":
            return {n: t.to(device, self.dtype, copy=writable) for n, t in self.sources[i].items()}
        out: dict[str, torch.Tensor] = {}
        by_file: dict[str, list[tuple[str, str]]] = {}
        for n, (path, key) in self.sources[i].items():
            by_file.setdefault(path, []).append((n, key))
        for path, names in by_file.items():
            with safe_open(path, framework="pt", device="cpu") as f:
                for n, key in names:
                    out[n] = f.get_tensor(key).to(device, self.dtype, copy=True)
        return out

    def _release(self, i: int) -> None:
        block = self.blocks[i]
        for n, shape in self.shapes[i].items():
            _set_param(block, n, torch.empty(shape, dtype=self.dtype, device="meta"))
        trim_host_memory()

    def load(self, i: int, *, writable: bool = True) -> nn.Module:
        """Bring block ``i``'s weights to the device (``writable``: a copy the caller may change);
        returns the block."""
        for n, t in self._read(i, writable=writable).items():
            _set_param(self.blocks[i], n, t)
        self.loads += 1
        return self.blocks[i]

    def write_back(self, i: int) -> None:
        """Keep block ``i``'s weights as they are now (a pruned block) for its later uses."""
        params = {n: p.detach() for n, p in self.blocks[i].named_parameters()}
        if self.mode == "cpu":
            self.sources[i] = {n: t.to("cpu") for n, t in params.items()}  # the loaded copy: the store's now
            return
        path = self.folder / f"block-{i:04d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({n: t.cpu().contiguous() for n, t in params.items()}, str(tmp))
        os.replace(tmp, path)
        self.sources[i] = {n: (str(path), n) for n in params}

    @contextmanager
    def loaded(self, i: int, *, write_back: bool = False, writable: bool = True) -> Iterator[nn.Module]:
        """Block ``i`` on the device for the body (``writable: False``: the body only reads it); written
        back after it when ``write_back``; then released (also when the body raises: a half-pruned
        block is never written back)."""
        block = self.load(i, writable=writable or write_back)
        try:
            yield block
            if write_back:
                self.write_back(i)
        finally:
            self._release(i)

    def state_dict_of(self, i: int) -> dict[str, torch.Tensor]:
        """Block ``i``'s stored weights under the model's own parameter names (host tensors)."""
        prefix = self.prefixes[i]
        if self.mode == "cpu":
            return {prefix + n: t for n, t in self.sources[i].items()}
        return {prefix + n: t for n, t in self._read(i, torch.device("cpu")).items()}

    def block_bytes(self, i: int) -> int:
        return sum(int(torch.Size(s).numel()) * torch.tensor([], dtype=self.dtype).element_size() for s in self.shapes[i].values())

    def describe(self) -> dict:
        return dict(offload=self.mode, folder=str(self.folder) if self.folder else None, blocks=len(self.blocks),
                    block_mib=round(max(self.block_bytes(i) for i in range(len(self.blocks))) / 2**20, 1))


def read_block(blocks: list[nn.Module], i: int, store: "BlockStore | None" = None):
    """Block ``i`` to read, wherever its weights live: as it is in memory, or brought in from the
    store for the body of the ``with`` (read-only). Callers that only read blocks need not know
    whether the model is offloaded."""
    return store.loaded(i, writable=False) if store is not None else nullcontext(blocks[i])


@contextmanager
def passthrough(blocks: list[nn.Module]) -> Iterator[None]:
    """Every block returns its hidden-state input unchanged for the body (its weights are not read):
    the model's forward then computes the embeddings and every block's arguments, and, with the last
    block's output put in as the first block's input, the final norm and the LM head alone."""
    def identity(*args, **kwargs):
        return args[0] if args else kwargs["hidden_states"]

    saved = [b.__dict__.get("forward") for b in blocks]
    try:
        for b in blocks:
            b.forward = identity
        yield
    finally:
        for b, f in zip(blocks, saved):
            if f is None:
                del b.forward
            else:
                b.forward = f


def checkpoint_index(folder: Path) -> dict[str, str] | None:
    """Parameter name -> safetensors file of a Hugging Face folder, or None when it has none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: str(folder / v) for k, v in weight_map.items()}
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(str(single), framework="pt", device="cpu") as f:
            return {k: str(single) for k in f.keys()}
    return None


def load_streamed(folder: Path, dtype: torch.dtype, device: torch.device, mode: str, *, offload_folder=None):
    """(model, store): a model built without its weights (``accelerate.init_empty_weights``), its
    non-block weights read from the checkpoint, its blocks left in the checkpoint's files (``disk``,
    memory-mapped) or read into host memory block by block (``cpu``). None when the checkpoint's
    names are not the model's (then the caller loads the model whole and offloads it)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    index = checkpoint_index(folder)
    if index is None:
        return None
    config = AutoConfig.from_pretrained(str(folder))
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    blocks = decoder_blocks(model)
    prefixes = _block_prefix(model, blocks)
    names = dict(model.named_parameters(remove_duplicate=False))
    tied = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "tie_word_embeddings", False)
    missing = [n for n in names if n not in index and not (tied and n == "lm_head.weight")]
    if missing:
        return None
    sources: list[dict] = [{} for _ in blocks]
    groups: dict[tuple[str, int | None], list[str]] = {}  # (file, block or None) -> names
    for name in names:
        if name in index:
            block = next((i for i, p in enumerate(prefixes) if name.startswith(p)), None)
            groups.setdefault((index[name], block), []).append(name)
    for (path, block), group in groups.items():
        if block is not None and mode == "disk":
            sources[block].update({name[len(prefixes[block]):]: (path, name) for name in group})
            continue
        # copies, the file opened per block: no more than one block's pages stay mapped (safe_open's
        # tensors are views of its memory map)
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in group:
                if block is None:
                    _set_param(model, name, f.get_tensor(name).to(device, dtype, copy=True))
                else:
                    sources[block][name[len(prefixes[block]):]] = f.get_tensor(name).to(dtype, copy=True)
    if tied and "lm_head.weight" not in index:
        model.tie_weights()
    _to_device(model, device)  # the buffers built with the skeleton (rotary frequencies, embedding scales)
    model.eval()
    if mode == "disk":
        offload_folder = temporary_folder(offload_folder)
    store = BlockStore(model, blocks, mode, device, dtype, sources, offload_folder)
    return model, store


def full_state_dict(model: nn.Module, store: BlockStore) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """The model's weights as they are now, in parts: ("rest", the non-block weights), then
    (f"block {i}", block i's stored weights); host tensors, one block at a time."""
    block_names = {store.prefixes[i] + n for i in range(len(store.blocks)) for n in store.shapes[i]}
    rest = {n: t.detach().cpu() for n, t in model.state_dict().items() if n not in block_names and t.device.type != "meta"}
    yield "rest", rest
    for i in range(len(store.blocks)):
        yield f"block {i}", store.state_dict_of(i)

"""What the embedder, reranker and generator share: device and dtype resolution, checkpoint loading, the lock.

:class:`CheckpointModel` is their common base (sentence-transformers' ``BaseModel`` plays the same part): it
resolves the device and dtype, loads the processor and the model, freezes the model, moves it to the device once,
and keeps the pad id and the per-instance lock. The batching defaults for CPU and GPU live here too.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from .batching import Batch, collate
from .encoding import Encoded, MediaSettings
from .hub import prepare_hub_load

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound="CheckpointModel")

# Show a progress bar by default only when a call has at least this many inputs.
PROGRESS_MIN_ITEMS = 64
# Largest share of padding a batch may carry. On a CPU the matrix kernels are saturated by one sequence, so
# batching gains nothing and padding is pure loss; on a GPU, batching wins far more than padding costs.
CPU_MAX_PADDING = 0.05
GPU_MAX_PADDING = 0.5
# Padded tokens per forward pass. On a CPU, small batches keep activations cache-resident (measured here:
# 1024 tokens ran 1.04x one-at-a-time, 16384 ran 0.91x); on a GPU, large batches fill the device.
CPU_MAX_BATCH_TOKENS = 1024
GPU_MAX_BATCH_TOKENS = 16384

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
try:
    _libc: Any = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _libc = None

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``: the first CUDA device when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: {exc}; pass 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available; pass device='cpu'")
    return resolved


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bfloat16 natively: x86 with AVX512-BF16 or AMX-BF16 (Intel Cooper Lake,
    Sapphire Rapids and later, AMD Zen 4 and later), Arm with the BF16 extension (Graviton 3, Apple M2 and later).
    Elsewhere bfloat16 is emulated and slower than float32. ``cpuinfo``: the text of ``/proc/cpuinfo`` (tests).
    ``QWEN3VL_RAG_CPU_BF16=1`` / ``0`` overrides the check (e.g. where a VM hides the CPU's flags)."""
    override = os.environ.get("QWEN3VL_RAG_CPU_BF16", "").strip().lower()
    if cpuinfo is None and override in ("1", "true", "yes", "0", "false", "no"):
        return override in ("1", "true", "yes")
    if cpuinfo is None:
        if sys.platform == "darwin":
            return _sysctl_flag("hw.optional.arm.FEAT_BF16")
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _sysctl_flag(name: str) -> bool:
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == "1"


def auto_dtype(device: torch.device, *, native_bf16: bool | None = None) -> torch.dtype:
    """The fast dtype for ``device``: bfloat16 on CUDA; on the CPU bfloat16 where it is native
    (:func:`cpu_has_native_bf16`), else float32."""
    if device.type == "cuda":
        return torch.bfloat16
    native = cpu_has_native_bf16() if native_bf16 is None else native_bf16
    return torch.bfloat16 if native else torch.float32


# Quantized precisions: int8 weights with int8 matrix products on activations quantized per call (dynamic
# quantization), the rest in float32. CPU only.
QUANTIZED = ("int8",)
# int8's documented bound against the float32 reference, on the parity fixture (tests/test_parity.py), measured
# there as: embeddings' cosine >= 0.9965 (max |diff| 0.028), rerank scores within 0.031, no ranking changed
INT8_MIN_COSINE = 0.995
TRIM_EVERY = 8  # quantized layers between two returns of freed memory to the system while loading
INT8_MAX_SCORE_DIFF = 0.05


def quantization_of(dtype: Any) -> str | None:
    """``"int8"`` when ``dtype`` names a quantized precision, else None."""
    if isinstance(dtype, str) and dtype.removeprefix("torch.").lower() in QUANTIZED:
        return dtype.removeprefix("torch.").lower()
    return None


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``: bfloat16 on CUDA, float32 on the CPU (the reference numbers). ``"auto"``: :func:`auto_dtype`.
    ``"int8"``: float32, the dtype its unquantized parts compute in (see :func:`quantize_linears_in_place`)."""
    if quantization_of(dtype) is not None:
        if device.type != "cpu":
            raise ValueError(f"dtype {dtype!r} runs on the CPU; on {device.type} use bfloat16")
        return torch.float32
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.").lower()
        if name == "auto":
            return auto_dtype(device)
        if name in _DTYPE_NAMES:
            return _DTYPE_NAMES[name]
    raise ValueError(
        f"unsupported dtype {dtype!r}; pass a torch.dtype, 'auto', 'int8' or one of {sorted(set(_DTYPE_NAMES))}"
    )


def pop_dtype(torch_dtype: Any, kwargs: dict[str, Any]) -> Any:
    """``torch_dtype`` and its alias ``dtype`` (from_pretrained's new name) are the same setting."""
    dtype = kwargs.pop("dtype", None)
    if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
        raise ValueError(f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; pass one of them")
    return torch_dtype if torch_dtype is not None else dtype


def load_processor(model_name_or_path: str, **kwargs: Any) -> Any:
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs(kwargs))


def hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``from_pretrained`` arguments that say where a checkpoint comes from (for its processor and config)."""
    return {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}


def default_max_padding(device: torch.device) -> float:
    return GPU_MAX_PADDING if device.type == "cuda" else CPU_MAX_PADDING


def default_max_batch_tokens(device: torch.device) -> int:
    return GPU_MAX_BATCH_TOKENS if device.type == "cuda" else CPU_MAX_BATCH_TOKENS


def show_progress(show_progress_bar: bool | None, n_items: int) -> bool:
    return show_progress_bar if show_progress_bar is not None else n_items >= PROGRESS_MIN_ITEMS


def locked(method: F) -> F:
    """One model call at a time per instance: worker threads (async adapters, servers) share the weights."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ``from_pretrained`` options that transformers takes through ``**kwargs`` (its named parameters are read from its
# signature); the ones people pass to a frozen inference model.
FROM_PRETRAINED_OPTIONS = frozenset(
    {"dtype", "attn_implementation", "trust_remote_code", "subfolder", "variant", "device_map", "max_memory", "proxies"}
    | {"quantization_config", "offload_folder", "offload_buffers", "key_mapping", "adapter_name", "adapter_kwargs"}
    | {"low_cpu_mem_usage", "use_kernels", "gguf_file", "tp_plan", "tp_size", "output_loading_info"}
)


def check_model_kwargs(owner: Any, model_class: Any, name: str, kwargs: dict[str, Any]) -> None:
    """Refuse keyword arguments that neither ``owner`` (the class being built), ``from_pretrained`` nor the
    checkpoint's config take, before anything loads: e.g. ``top_k=`` given to an embedder would otherwise fail deep
    inside transformers ("Qwen3VLModel.__init__() got an unexpected keyword argument")."""
    import inspect

    taken = set(inspect.signature(model_class.from_pretrained).parameters) | FROM_PRETRAINED_OPTIONS
    unknown = sorted(k for k in kwargs if k not in taken)
    if unknown:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name, **hub_kwargs(kwargs))
        except (OSError, ValueError):
            config = None  # from_pretrained reports the checkpoint with its own message
        if config is not None:
            unknown = [k for k in unknown if not hasattr(config, k)]
    if unknown:
        raise UnknownArgumentError(unknown, owner)


class UnknownArgumentError(TypeError):
    """Keyword arguments that a model class, ``from_pretrained`` and the checkpoint's config all do not take."""

    def __init__(self, names: list[str], owner: type, adapter: tuple[str, list[str]] | None = None) -> None:
        import inspect

        self.names, self.owner = names, owner
        params = inspect.signature(owner.__init__).parameters.values()
        own = [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
        where = f"{adapter[0]} ({', '.join(adapter[1])}), " if adapter else ""
        super().__init__(
            f"{adapter[0] if adapter else owner.__name__}: unknown argument{'s' if len(names) > 1 else ''} "
            f"{', '.join(map(repr, names))}: not an option of {where}{owner.__name__} ({', '.join(own)}), of "
            "transformers' from_pretrained (e.g. attn_implementation, revision, trust_remote_code) or of the "
            "checkpoint's config"
        )

    def seen_from(self, adapter: type, fields: list[str]) -> UnknownArgumentError:
        """The same error as a framework adapter's (its own options listed first)."""
        return UnknownArgumentError(self.names, self.owner, (adapter.__name__, fields))


def settings(**values: Any) -> dict[str, Any]:
    """A model's constructor arguments as plain values (a dtype or device as its name), to build it again."""
    out = {}
    for key, value in values.items():
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        elif isinstance(value, torch.device):
            value = str(value)
        out[key] = value
    return out


def stored_dtype(model_name_or_path: str, from_pretrained_kwargs: dict[str, Any]) -> torch.dtype | None:
    """The dtype a checkpoint's weights are saved in (its config's ``dtype``), ``None`` when it does not say."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_name_or_path, **hub_kwargs(from_pretrained_kwargs))
    except (OSError, ValueError):
        return None  # from_pretrained reports it with its own message
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, str):
        value = _DTYPE_NAMES.get(value.removeprefix("torch.").lower())
    return value if isinstance(value, torch.dtype) else None


def widen_in_place(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Convert ``model``'s floating-point parameters and buffers to ``dtype`` one tensor at a time. A tensor read
    from a memory-mapped weight file gives its pages back as soon as its copy exists (they are clean file pages:
    dropping them loses nothing), so peak memory is the converted model plus one tensor."""
    regions = _mapped_weight_regions()
    with torch.no_grad():
        for module in model.modules():
            for tensor in [*module._parameters.values(), *module._buffers.values()]:
                if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                    continue
                old = tensor.data
                tensor.data = old.to(dtype)
                _drop_pages(old, regions)
    gc.collect()


def quantize_linears_in_place(model: torch.nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` by its int8 dynamically quantized form (torch.ao: int8 weights, per
    output channel; activations quantized per call; int8 matrix products on fbgemm / oneDNN), one layer at a time:
    each weight is widened to float32 only while its own int8 copy is made, and its memory-mapped pages are given
    back at once, so peak memory is the loaded model plus one float32 layer. Returns how many were replaced."""
    import warnings

    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    regions = _mapped_weight_regions()
    # By name, not by module: a list of the modules themselves would keep every replaced float32 layer alive until
    # the end (measured at the 2B size: 72 MB a layer, a 9.5 GB peak for a model that ends at 3.7 GB).
    names = [name for name, module in model.named_modules(remove_duplicate=False) if type(module) is torch.nn.Linear]
    replaced = 0
    # torch 2.14 marks torch.ao's quantized tensors deprecated (torchao is their successor); measured here,
    # torchao 0.18's int8 dynamic path ran these layers 1.4x faster than float32, torch.ao's 3.2x: this one is used
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        for qualified in names:
            parent_name, _, name = qualified.rpartition(".")
            parent = model.get_submodule(parent_name)
            child = getattr(parent, name)
            if type(child) is not torch.nn.Linear:  # pragma: no cover - a module shared by two names, done
                continue
            old = child.weight.data
            # a weight tied to an embedding (lm_head) is the embedding's too: the embedding is widened with it
            child.weight.data = old.float()
            if child.bias is not None:
                child.bias.data = child.bias.data.float()
            child.qconfig = per_channel_dynamic_qconfig
            setattr(parent, name, DynamicLinear.from_float(child))
            _drop_pages(old, regions)
            del child, old, parent
            replaced += 1
            if replaced % TRIM_EVERY == 0:  # the freed float32 copies go back to the system
                release_memory()
    release_memory()
    return replaced


def _mapped_weight_regions() -> list[tuple[int, int]]:
    """Address ranges of this process's memory-mapped ``.safetensors`` files (Linux; elsewhere none)."""
    regions = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 6 and parts[-1].endswith(".safetensors"):
                    start, end = (int(x, 16) for x in parts[0].split("-"))
                    regions.append((start, end))
    except OSError:
        return []
    return regions


def _drop_pages(tensor: torch.Tensor, regions: list[tuple[int, int]]) -> None:
    """Tell the kernel the whole pages of ``tensor`` are not needed, only where they lie in a mapped weight file
    (never anonymous memory: that would lose data another tensor may share)."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    for lo, hi in regions:
        a, b = max(start, lo), min(end, hi)
        a = (a + _PAGE - 1) // _PAGE * _PAGE
        b = b // _PAGE * _PAGE
        if b > a and _libc is not None:
            _libc.madvise(ctypes.c_void_p(a), ctypes.c_size_t(b - a), _MADV_DONTNEED)


def release_memory() -> None:
    """Give freed memory back to the system after a model is dropped: collect, trim glibc's heap, empty the CUDA
    cache."""
    gc.collect()
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class CheckpointModel:
    """Base of the model classes: a frozen checkpoint on one device, its processor, a lock, the pad id.

    A subclass calls :meth:`_load_checkpoint` from its constructor; it may override :meth:`_check_processor`
    (refuse a checkpoint before its weights load) and :meth:`_keep` (the part of the loaded model it runs).
    """

    model_name_or_path: str
    device: torch.device
    dtype: torch.dtype  # what it computes in (float32 for int8's unquantized parts)
    quantization: str | None  # "int8": its linear layers are quantized
    processor: Any
    model: torch.nn.Module
    # the constructor's arguments (besides the checkpoint), as given: ``type(m)(m.model_name_or_path,
    # **m.init_kwargs)`` builds the same model again (the framework adapters serialise and unpickle with it)
    init_kwargs: dict[str, Any]

    def _load_checkpoint(
        self,
        model_name_or_path: str,
        model_class: Any,
        *,
        device: str | torch.device | None,
        torch_dtype: str | torch.dtype | None,
        from_pretrained_kwargs: dict[str, Any],
    ) -> None:
        """Resolve the device and dtype, load the processor, then ``model_class`` (its :meth:`_keep` part frozen,
        in eval mode, moved to the device once). ``from_pretrained_kwargs`` loses its ``dtype`` alias."""
        self.model_name_or_path = str(model_name_or_path)
        check_model_kwargs(type(self), model_class, self.model_name_or_path, from_pretrained_kwargs)
        self.device = resolve_device(device)
        requested = pop_dtype(torch_dtype, from_pretrained_kwargs)
        self.quantization = quantization_of(requested)
        self.dtype = resolve_dtype(requested, self.device)
        logger.info("loading %s %s on %s (%s)", type(self).__name__, model_name_or_path, self.device, self.dtype)
        prepare_hub_load(self.model_name_or_path, from_pretrained_kwargs)  # seconds, not minutes, when offline
        self.processor = load_processor(self.model_name_or_path, **from_pretrained_kwargs)
        tokenizer = self.processor.tokenizer
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # One model call at a time per instance (async adapters and servers call from worker threads).
        self._lock = threading.RLock()
        self._check_processor()
        stored = stored_dtype(self.model_name_or_path, from_pretrained_kwargs)
        upcast = self.device.type == "cpu" and stored in (torch.bfloat16, torch.float16) and self.dtype == torch.float32
        # A 16-bit checkpoint read as float32 on the CPU: load it as stored (memory-mapped, no copy) and widen one
        # tensor at a time, so the file's pages and the float32 copy are never all resident at once.
        load_dtype: Any = stored if upcast else self.dtype
        if self.quantization and stored is None:  # the config does not say: "auto" reads the weights' own dtype
            load_dtype = "auto"
        loaded = model_class.from_pretrained(self.model_name_or_path, dtype=load_dtype, **from_pretrained_kwargs)
        model = self._keep(loaded)
        del loaded
        model.eval()
        model.requires_grad_(False)
        if self.quantization == "int8":  # the linear layers to int8 while loading, the rest widened to float32
            # the weights are still the file's pages (memory-mapped): each layer is widened to float32 only while
            # its int8 copy is made, so the whole model is never in memory in float32
            count = quantize_linears_in_place(model)
            logger.info("%s: %d linear layers quantized to int8 (dynamic)", type(self).__name__, count)
        if upcast or self.quantization:
            widen_in_place(model, self.dtype)
        self.model = model.to(self.device)

    def _configure_runs(
        self,
        *,
        max_length: int,
        media: MediaSettings,
        default_instruction: str,
        batch_size: int,
        max_batch_tokens: int | None,
        max_padding: float | None,
        url_timeout: float,
    ) -> None:
        """The settings of a model that runs batches of inputs (the embedder, the reranker); batching defaults
        follow the device (call after :meth:`_load_checkpoint`)."""
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self.media = media
        self.default_instruction = default_instruction
        self.batch_size = batch_size
        self.url_timeout = url_timeout
        self.max_padding = default_max_padding(self.device) if max_padding is None else max_padding
        self.max_batch_tokens = max_batch_tokens or default_max_batch_tokens(self.device)

    def _check_processor(self) -> None:
        """Raise ``ValueError`` when the processor shows the checkpoint is not the kind this class runs."""

    def _keep(self, loaded: torch.nn.Module) -> torch.nn.Module:
        """The part of the loaded model this class runs (all of it by default)."""
        return loaded

    def _collate(self, items: Sequence[Encoded]) -> Batch:
        """Right-padded batch of encoded items with this checkpoint's pad and vision token ids."""
        return collate(
            items,
            pad_token_id=self._pad_id,
            image_token_id=self.processor.image_token_id,
            video_token_id=self.processor.video_token_id,
            padding_side="right",
        )

    @property
    def precision(self) -> str:
        """What the numbers are computed in: ``"int8"`` for a quantized model, else its dtype's name."""
        return self.quantization or str(self.dtype).removeprefix("torch.")

    def to(self: M, device: str | torch.device) -> M:
        """Move the model (e.g. to the CPU between pipeline stages on a small GPU)."""
        if self.quantization and torch.device(device).type != "cpu":
            raise ValueError(f"an {self.quantization} model runs on the CPU only")
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

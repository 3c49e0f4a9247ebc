"""Reading weight files, safely: backbone state dicts, open_clip tags, artlib training checkpoints.

- :func:`load_state_dict_file`: a backbone's (or CLIP's) weights from safetensors, a plain
  ``torch.save`` state dict or OpenAI's TorchScript archive (``weights_only=True``).
- :func:`resolve_clip_pretrained`: an open_clip tag or a local path -> the local file.
- :func:`load_checkpoint`: an artlib training checkpoint (``checkpoint_epochNNNN.pt``, ``best.pt``),
  read with ``weights_only=True`` and its format checked; :class:`UnsafeCheckpointError` when the
  file would run code.
- :func:`weights_source`: the one reading of a ``pretrained`` value ("none" -> random weights).

It sits below ``models``, ``text`` and the engine (it imports torch and nothing of artlib but
``artlib._io``), so that a model loads without the trainer. Nothing here downloads. A tag is looked up in open_clip's own caches (the Hugging Face hub cache and
``~/.cache/clip``); if the file is not there, a FileNotFoundError says where it looked and asks for a
local path. open_clip is imported only when a tag (not a path) is given, so the models build on
machines without it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from artlib._io import torch_load_reason

_WEIGHT_SUFFIXES = (".pt", ".pth", ".pyth", ".bin", ".safetensors", ".ckpt", ".pkl")

# ``pretrained="none"`` asks for random weights on purpose (a run can then tell it from a
# ``pretrained`` that was never given, which is None).
RANDOM_WEIGHTS = "none"


def wants_random_weights(pretrained) -> bool:
    """True for ``pretrained="none"`` (any case): random weights asked for on purpose. None (not
    given) is False here, though ``build_backbone`` also builds random weights for it."""
    return isinstance(pretrained, str) and pretrained.strip().lower() == RANDOM_WEIGHTS


def weights_source(pretrained):
    """A ``pretrained`` value (a path, a tag, None or "none") -> None for random weights, else the
    value itself: the one place that reads the string "none"."""
    return None if pretrained is None or wants_random_weights(pretrained) else pretrained


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a ``pretrained`` argument points. ``tag`` is None for a plain path; ``quick_gelu`` is
    what open_clip's pretrained config says for that tag (OpenAI weights use QuickGELU)."""

    path: str
    tag: str | None = None
    quick_gelu: bool | None = None


def looks_like_path(pretrained: str | os.PathLike) -> bool:
    s = os.fspath(pretrained)
    return os.sep in s or "/" in s or s.endswith(_WEIGHT_SUFFIXES) or s.startswith((".", "~"))


def resolve_clip_pretrained(
    model_name: str, pretrained: str | os.PathLike, cache_dir: str | None = None
) -> ResolvedCheckpoint:
    """``pretrained`` (a local file, or an open_clip tag such as "openai" or "laion2b_s34b_b88k" for
    ``model_name`` such as "ViT-B-16") → the local file that holds the weights.

    Raises FileNotFoundError (naming the path, or the places searched for a tag), ValueError for a
    tag open_clip does not know for that model, ImportError if a tag is given without open_clip.
    """
    s = os.path.expanduser(os.fspath(pretrained))
    if os.path.isfile(s):
        return ResolvedCheckpoint(path=os.path.abspath(s))
    if looks_like_path(pretrained):
        raise FileNotFoundError(f"pretrained: checkpoint file not found: {s!r}")
    try:
        import open_clip
        from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            f"pretrained={pretrained!r} is an open_clip tag, which needs open_clip_torch installed "
            f"(pip install 'artlib[clip]'); or pass a local checkpoint path"
        ) from e
    del open_clip
    cfg = get_pretrained_cfg(model_name, s)
    if not cfg:
        tags = list_pretrained_tags_by_model(model_name)
        raise ValueError(
            f"pretrained: {s!r} is neither an existing file nor an open_clip tag for {model_name!r}; "
            f"known tags: {tags}"
        )
    searched = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)  # "org/repo/" → ("org/repo", ""): default file names
        names = (
            [filename]
            if filename
            else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        )
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover
            try_to_load_from_cache = None
        for name in names:
            searched.append(f"HF cache {repo_id}/{name}")
            if try_to_load_from_cache is not None:
                found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
                if isinstance(found, str) and os.path.isfile(found):
                    return ResolvedCheckpoint(found, s, cfg.get("quick_gelu"))
    url = cfg.get("url", "")
    if url:
        target = os.path.join(
            cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url)
        )
        searched.append(target)
        if os.path.isfile(target):
            return ResolvedCheckpoint(target, s, cfg.get("quick_gelu"))
    raise FileNotFoundError(
        f"pretrained: weights for {model_name!r} tag {s!r} are not in the local cache (searched: "
        f"{'; '.join(searched)}). artlib never downloads weights: fetch them once with open_clip "
        f"(open_clip.create_model({model_name!r}, pretrained={s!r})) on a machine with network "
        f"access, or pass the path of a local checkpoint file."
    )


def load_state_dict_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], bool]:
    """Read a checkpoint → (state dict on CPU, was_torchscript).

    Accepts safetensors, a plain ``torch.save`` state dict (optionally under "state_dict"
    (mmaction2, Lightning), "model_state" (SlowFast), "model" or "module", and with a "module."
    prefix) and OpenAI's TorchScript CLIP archives. Files are read with ``weights_only=True``
    (nothing in them is executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    jit = False
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj = load_file(path, device="cpu")
    else:
        try:
            with warnings.catch_warnings():  # "looks like a TorchScript archive": handled below
                warnings.filterwarnings("ignore", message=".*TorchScript", category=UserWarning)
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a plain state dict: maybe an OpenAI TorchScript archive
            try:
                obj = torch.jit.load(path, map_location="cpu").state_dict()
                jit = True
            except Exception:
                raise RuntimeError(
                    f"could not read checkpoint {path!r} with torch.load(weights_only=True) nor "
                    f"as TorchScript: {e}. If it pickles Python objects beside the weights and "
                    f"you trust it, convert it to plain types once: python -m "
                    f"artlib.convert_checkpoint {path} converted.pt --trust"
                ) from e
    if isinstance(obj, torch.jit.ScriptModule):
        obj, jit = obj.state_dict(), True
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise RuntimeError(f"checkpoint {path!r} does not hold a state dict")
    sd = {
        k[7:] if k.startswith("module.") else k: v for k, v in obj.items() if isinstance(v, Tensor)
    }
    return sd, jit


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (what the bank cache keys weights by). Remembered per process
    by (real path, size, mtime), so a 1.7 GB ViT-L/14 checkpoint is read once per run."""
    st = os.stat(path)
    memo_key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if memo_key in _SHA_MEMO:
        return _SHA_MEMO[memo_key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _SHA_MEMO[memo_key] = h.hexdigest()
    return _SHA_MEMO[memo_key]


def strip_prefix(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


# ------------------------------------------------------------------ artlib training checkpoints
FORMAT = "artlib.checkpoint"
FORMAT_VERSION = 1
CONVERT = "python -m artlib.convert_checkpoint"


class CheckpointError(ValueError):
    """A file that is not a usable artlib checkpoint (missing, truncated, another format, or
    weights that do not fit the model its config describes)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would need more than plain types (it could run code)."""

    def __init__(self, path: str | os.PathLike, asked: list[str]):
        self.path, self.asked = os.fspath(path), list(asked)
        what = ", ".join(self.asked) if self.asked else "objects outside the safe types"
        super().__init__(
            f"{self.path}: refused: loading it would unpickle {what}, which can run code "
            f"(artlib loads only tensors, numbers, strings, lists and dicts). If you trust where "
            f"the file comes from, convert it once: {CONVERT} {self.path} NEW.pt --trust"
        )


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """The globals (classes, functions) a torch.save file would import when unpickled beyond the
    safe types, read from the pickle without executing it; [] for a safe file."""
    return list(torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path)))


def load_checkpoint(path: str | os.PathLike, map_location="cpu", what: str = "checkpoint") -> dict:
    """Read an artlib training checkpoint safely (``weights_only=True``) and check its format.

    Raises FileNotFoundError (no file), :class:`UnsafeCheckpointError` (the file needs more than
    plain types: nothing of it ran) or :class:`CheckpointError` (not an artlib checkpoint, or a
    newer format). ``what`` names the argument in the messages (e.g. "--resume").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no checkpoint file at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            asked = unsafe_globals(path)
        except Exception:
            asked = []
        if asked or "GLOBAL" in str(e):
            raise UnsafeCheckpointError(path, asked) from None
        raise CheckpointError(
            f"{what}: {path} is not a torch.save file ({torch_load_reason(e)})"
        ) from None
    except Exception as e:  # noqa: BLE001 - random bytes fail torch's reader in many ways
        raise CheckpointError(
            f"{what}: {path} cannot be read (truncated or not a torch.save file: "
            f"{torch_load_reason(e)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        legacy = isinstance(obj, dict) and {"model", "optimizer", "epoch"} <= set(obj)
        hint = (
            f"it looks like an older artlib checkpoint: convert it once with {CONVERT} {path} "
            "NEW.pt --trust"
            if legacy
            else "a backbone's weights go to --pretrained instead"
        )
        raise CheckpointError(f"{what}: {path} is not an artlib training checkpoint ({hint})")
    check_format_version(obj, FORMAT_VERSION, f"{what}: {path}")
    return obj


def check_format_version(meta: Mapping, readable: int, where: str) -> None:
    """The one check of a saved file's ``format_version`` (a training checkpoint's, a model
    folder's ``config.json``): an integer this artlib reads (<= ``readable``), else one line
    naming ``where``, the version, the artlib that wrote it and what to do."""
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= readable:
        raise CheckpointError(
            f"{where} has format_version {version!r}, written by artlib "
            f"{meta.get('artlib_version')}; this artlib reads versions 1 to {readable}: "
            "upgrade artlib"
        )


__all__ = [
    "CONVERT",
    "FORMAT",
    "FORMAT_VERSION",
    "RANDOM_WEIGHTS",
    "CheckpointError",
    "ResolvedCheckpoint",
    "UnsafeCheckpointError",
    "check_format_version",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_file",
    "looks_like_path",
    "resolve_clip_pretrained",
    "strip_prefix",
    "unsafe_globals",
    "wants_random_weights",
    "weights_source",
]

"""The text-constrained semantics bank S⁰ (paper Sec. III-E): CLIP text embeddings of N_prom prompt
templates × N_cls class names, built once with **only** open_clip's text tower and cached on disk.

Shapes: N_prom templates, N_cls classes, C_t text width (512 for ViT-B/16 CLIP, 768 for ViT-L/14).

Training and inference never run the text encoder: they load the cached tensor
(``load_bank(path)`` → ``artlib.nn.SemanticBank``). open_clip is imported only while building.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from artlib._io import atomic_save_torch, cache_root
from artlib.nn.bank import SemanticBank, read_bank
from artlib.text.templates import TEMPLATES, check_templates, fill_templates
from artlib.weights_io import (
    file_sha256,
    load_state_dict_file,
    resolve_clip_pretrained,
    strip_prefix,
)

__all__ = [
    "bank_path",
    "build_semantic_bank",
    "build_text_tower",
    "default_cache_dir",
    "encode_prompts",
    "extract_text_state_dict",
    "load_bank",
    "read_bank",  # artlib.nn.bank's, the one reader of bank files
    "save_bank",
]

BANK_FORMAT = 1
RANDOM_SEED = 0
_TEXT_PREFIXES = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
)


def default_cache_dir() -> str:
    """``banks`` in artlib's cache folder (``artlib._io.cache_root``: ``$ARTLIB_CACHE``, ...)."""
    return os.path.join(cache_root(), "banks")


def _open_clip():
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError(
            "building a semantics bank needs open_clip_torch (pip install 'artlib[clip]'); "
            "a bank that was built once loads without it: artlib.text.load_bank(path)"
        ) from e
    return open_clip


def text_config(model_name: str) -> dict[str, Any]:
    """open_clip's config for ``model_name`` → {"embed_dim", "text_cfg", "quick_gelu", "custom_text"}.

    Raises ValueError naming the known models for an unknown name, and for towers that need a
    Hugging Face text model (they would download).
    """
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        known = [m for m in open_clip.list_models() if "ViT" in m or "RN" in m]
        raise ValueError(f"model_name: unknown open_clip model {model_name!r}; known: {known}")
    text_cfg = dict(cfg["text_cfg"])
    if text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name"):
        raise ValueError(
            f"model_name: {model_name!r} uses a Hugging Face text model, which artlib does not build "
            f"(it would download); use a CLIP text transformer such as 'ViT-B-16' or 'ViT-L-14'"
        )
    return {
        "embed_dim": int(cfg["embed_dim"]),
        "text_cfg": text_cfg,
        "quick_gelu": bool(cfg.get("quick_gelu", False)),
        "custom_text": bool(cfg.get("custom_text", False)),
    }


def extract_text_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The text-tower part of a full CLIP state dict, keyed as open_clip's ``TextTransformer``.

    Handles both layouts: ``CLIP`` (text keys at the top level beside ``visual.*``) and
    ``CustomTextCLIP`` (under ``text.``).
    """
    if any(k.startswith("text.") for k in sd):
        return strip_prefix(sd, "text.")
    return {k: v for k, v in sd.items() if k.startswith(_TEXT_PREFIXES)}


def _weights_id(model_name: str, pretrained, cache_dir: str | None, seed: int):
    """(id string for the cache key, resolved checkpoint or None)."""
    if pretrained is None:
        version = getattr(_open_clip(), "__version__", "?")
        return f"random:seed={seed}:open_clip={version}", None
    resolved = resolve_clip_pretrained(model_name, pretrained, cache_dir=cache_dir)
    return f"sha256:{file_sha256(resolved.path)}", resolved


def build_text_tower(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    quick_gelu: bool | None = None,
    clip_cache_dir: str | None = None,
    seed: int = RANDOM_SEED,
    _resolved=None,
) -> nn.Module:
    """Build only open_clip's text tower (a ``TextTransformer``: token embedding, transformer,
    ln_final, text projection) for ``model_name`` — never the image tower.

    pretrained: None → random weights from a fixed ``seed`` (deterministic; for tests and the
        synthetic data set only, such a bank carries no language knowledge); an open_clip tag
        ("openai", "laion2b_s34b_b88k", ...) found in the local cache; or a local checkpoint path.
        Only the text-tower keys of the checkpoint are read, and they must all be there.
    quick_gelu: None → what the model config or the tag says (OpenAI weights use QuickGELU; a
        TorchScript OpenAI archive implies it).
    The global RNG is left untouched. Output: ``tower(tokens (N, 77)) → (N, C_t)``, equivalent to
    ``open_clip.create_model(model_name, pretrained).encode_text(tokens)``.
    """
    open_clip = _open_clip()
    from open_clip.model import _build_text_tower

    cfg = text_config(model_name)
    resolved = _resolved
    if pretrained is not None and resolved is None:
        resolved = resolve_clip_pretrained(model_name, pretrained, cache_dir=clip_cache_dir)
    sd = None
    jit = False
    if resolved is not None:
        sd, jit = load_state_dict_file(resolved.path)
    if quick_gelu is None:
        quick_gelu = cfg["quick_gelu"] or bool(resolved and resolved.quick_gelu) or jit
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = _build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu=quick_gelu)
    if sd is not None:
        text_sd = extract_text_state_dict(sd)
        missing, unexpected = [], []
        try:
            result = tower.load_state_dict(text_sd, strict=False)
            missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        except RuntimeError as e:
            raise RuntimeError(
                f"pretrained: checkpoint {resolved.path!r} does not fit the text tower of "
                f"{model_name!r}: {e}"
            ) from e
        if missing or unexpected:
            raise RuntimeError(
                f"pretrained: checkpoint {resolved.path!r} does not fit the text tower of "
                f"{model_name!r}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
    del open_clip
    return tower.eval()


@torch.no_grad()
def encode_prompts(
    tower: nn.Module, tokenizer, prompts: Sequence[str], device="cpu", batch_size: int = 256
) -> Tensor:
    """Prompts → L2-normalised text embeddings (N, C_t), float32 on CPU."""
    tower = tower.to(device)
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = tokenizer(list(prompts[i : i + batch_size])).to(device)
        out.append(F.normalize(tower(tokens).float(), dim=-1).cpu())
    return torch.cat(out)


def bank_cache_key(
    class_names: Sequence[str],
    templates: Sequence[str],
    model_name: str,
    weights_id: str,
    extra=None,
) -> str:
    """SHA-256 over everything that decides the bank's values."""
    payload = {
        "format": BANK_FORMAT,
        "class_names": list(class_names),
        "templates": list(templates),
        "model_name": model_name,
        "weights": weights_id,
        "extra": extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_semantic_bank(
    class_names: Sequence[str],
    model_name: str = "ViT-B-16",
    pretrained: str | os.PathLike | None = None,
    templates: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    use_cache: bool = True,
    quick_gelu: bool | None = None,
    clip_cache_dir: str | None = None,
) -> Tensor:
    """S⁰ (N_prom, N_cls, C_t): L2-normalised CLIP text embeddings of every template × class name.

    ``S⁰[j, c] = normalize(encode_text(templates[j].format(class_names[c])))`` with only the text
    tower of ``model_name`` built (see ``build_text_tower`` for ``pretrained``: None is random
    weights with a fixed seed, for tests and the synthetic set only). Class names are used as
    given: clean them first (``artlib.text.clean_labels``).

    The result is cached in ``cache_dir`` (default ``default_cache_dir()``) under a key over the
    names, templates, model, text config and weights (a SHA-256 of the checkpoint file), so a second
    call with the same inputs reads the file and builds nothing. ``use_cache=False`` neither reads
    nor writes. Returns float32 on CPU.
    """
    if isinstance(class_names, str) or len(class_names) == 0:
        raise ValueError(f"class_names: expected a non-empty list of strings, got {class_names!r}")
    for i, n in enumerate(class_names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"class_names[{i}]: expected a non-empty string, got {n!r}")
    templates = check_templates(TEMPLATES if templates is None else templates)
    path, key, weights_id, resolved = _cache_entry(
        class_names, model_name, pretrained, templates, cache_dir, quick_gelu, clip_cache_dir
    )
    if not use_cache:
        path = None
    if path is not None:
        if os.path.isfile(path):
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("key") == key:
                return payload["bank"]
    tower = build_text_tower(
        model_name,
        pretrained,
        quick_gelu=quick_gelu,
        clip_cache_dir=clip_cache_dir,
        _resolved=resolved,
    )
    tokenizer = _open_clip().get_tokenizer(model_name)
    emb = encode_prompts(tower, tokenizer, fill_templates(class_names, templates), device=device)
    bank = emb.reshape(len(templates), len(class_names), -1).contiguous()
    if path is not None:
        save_bank(
            bank,
            path,
            key=key,
            class_names=list(class_names),
            templates=list(templates),
            model_name=model_name,
            weights=weights_id,
        )
    return bank


def save_bank(bank: Tensor, path: str | os.PathLike, **meta) -> str:
    """Write S⁰ (N_prom, N_cls, C_t) with its metadata, atomically (temp file + rename)."""
    if bank.dim() != 3:
        raise ValueError(f"bank: expected (N_prom, N_cls, C_t), got shape {tuple(bank.shape)}")
    path = os.fspath(path)
    atomic_save_torch({"format": BANK_FORMAT, "bank": bank.detach().float().cpu(), **meta}, path)
    return path


def load_bank(path: str | os.PathLike, momentum: float = 0.999, num_classes: int | None = None):
    """A bank file → ``artlib.nn.SemanticBank`` (S and the agent Sᵃ both start at S⁰), read and
    validated by ``read_bank`` (``SemanticBank.from_file``)."""
    return SemanticBank.from_file(path, momentum=momentum, num_classes=num_classes)


def _cache_entry(
    class_names, model_name, pretrained, templates, cache_dir, quick_gelu, clip_cache_dir
):
    """(cache file path, key, weights id, resolved checkpoint) for one bank."""
    cfg = text_config(model_name)
    weights_id, resolved = _weights_id(model_name, pretrained, clip_cache_dir, RANDOM_SEED)
    extra = {**cfg, "quick_gelu_arg": quick_gelu}
    key = bank_cache_key(class_names, templates, model_name, weights_id, extra=extra)
    root = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    path = os.path.join(root, f"{model_name.replace('/', '_')}-{key[:20]}.pt")
    return path, key, weights_id, resolved


def bank_path(
    class_names: Sequence[str],
    model_name: str = "ViT-B-16",
    pretrained: str | os.PathLike | None = None,
    templates: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    clip_cache_dir: str | None = None,
) -> str:
    """Where ``build_semantic_bank`` caches (or would cache) the bank for these inputs."""
    templates = check_templates(TEMPLATES if templates is None else templates)
    return _cache_entry(
        class_names, model_name, pretrained, templates, cache_dir, quick_gelu, clip_cache_dir
    )[0]

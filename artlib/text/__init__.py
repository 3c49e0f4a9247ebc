"""Text side of ART: prompt templates, class-name cleaning, and the CLIP semantics bank.

open_clip is imported only inside the functions that build a bank; reading a cached bank needs only
torch.
"""

from artlib.text.bank import (
    bank_path,
    build_semantic_bank,
    build_text_tower,
    default_cache_dir,
    encode_prompts,
    extract_text_state_dict,
    load_bank,
    read_bank,
    save_bank,
)
from artlib.text.labels import (
    FINEGYM_EVENTS,
    clean_diving48_label,
    clean_finegym_label,
    clean_label,
    clean_labels,
    parse_finegym_categories,
)
from artlib.text.templates import EXTRA_TEMPLATES, TEMPLATES, check_templates, fill_templates

__all__ = [
    "EXTRA_TEMPLATES",
    "FINEGYM_EVENTS",
    "TEMPLATES",
    "bank_path",
    "build_semantic_bank",
    "build_text_tower",
    "check_templates",
    "clean_diving48_label",
    "clean_finegym_label",
    "clean_label",
    "clean_labels",
    "default_cache_dir",
    "encode_prompts",
    "extract_text_state_dict",
    "fill_templates",
    "load_bank",
    "parse_finegym_categories",
    "read_bank",
    "save_bank",
]

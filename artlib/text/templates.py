"""Prompt templates for the text-constrained semantics bank (paper Sec. III-E).

Each template has one ``{}`` that the cleaned class name fills. ``TEMPLATES`` holds the default
N_prom = 8, the paper's two examples first; ``EXTRA_TEMPLATES`` adds eight more for N_prom = 16.
"""

from __future__ import annotations

from collections.abc import Sequence

TEMPLATES: tuple[str, ...] = (
    "This is a video about {}.",
    "The person is doing {}.",
    "a video of a person doing {}.",
    "a video of a person performing {}.",
    "a clip of an athlete doing {}.",
    "Human action of {}.",
    "a photo of a person doing {}.",
    "Look, the athlete is performing {}!",
)

EXTRA_TEMPLATES: tuple[str, ...] = (
    "a sports video of {}.",
    "Can you recognize the action of {}?",
    "Video classification of {}.",
    "a close-up video of a person doing {}.",
    "a slow-motion video of {}.",
    "a competition video showing {}.",
    "an example of {}.",
    "The action shown is {}.",
)


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """Validate prompt templates: a non-empty sequence of strings, each with exactly one ``{}``."""
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(
            f"templates: expected a non-empty sequence of strings with one '{{}}' each, "
            f"got {templates!r}"
        )
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(
                f"templates[{i}]: expected a string with exactly one '{{}}', got {t!r}"
            )
    return tuple(templates)


def fill_templates(class_names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """All prompts, template-major: index ``j * N_cls + c`` is template j filled with class c."""
    templates = check_templates(templates)
    return [t.format(name) for t in templates for name in class_names]

"""Teacher attribution rationales (Ballout et al. 2024): which words drive the teacher's decision.

One call shape for every method::

    teacher = load_teacher("builtin:minilm", "classifier")          # or "causal_lm" + labels
    results = Attributor(teacher, "integrated_gradients").attribute(texts, labels)
    results[0].rationale_words, results[0].scores

See docs/attribution.md. ``job`` holds the ``attribute`` queue's functions; ``quality`` the
rationale checks of the run report.
"""

from workers.attribution.attributor import Attribution, Attributor, attribute
from workers.attribution.methods import METHODS, Method, MethodOptions
from workers.attribution.teachers import (
    CausalLMTeacher,
    ClassifierTeacher,
    Teacher,
    load_teacher,
)
from workers.attribution.words import RationaleRule

__all__ = [
    "METHODS",
    "Attribution",
    "Attributor",
    "CausalLMTeacher",
    "ClassifierTeacher",
    "Method",
    "MethodOptions",
    "RationaleRule",
    "Teacher",
    "attribute",
    "load_teacher",
]

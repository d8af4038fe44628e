"""docs/spec.md gives every spec field its meaning, from the models' own descriptions.

That the committed page equals ``render()`` is checked in tests/test_spec.py
(``test_docs_spec_page_is_current``).
"""

from __future__ import annotations

import inspect
import typing

import pytest
from pydantic import BaseModel, Field

from distillq import spec as S
from orchestrator import specdoc


def _spec_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in distillq/spec.py that has fields."""
    return [cls for _, cls in inspect.getmembers(S, inspect.isclass)
            if issubclass(cls, BaseModel) and cls.__module__ == S.__name__ and cls.model_fields]


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The spec models an annotation names, through ``X | None``, ``list[X]`` and the like."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation] if annotation.__module__ == S.__name__ else []
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _reachable(cls: type[BaseModel], path: str = "") -> dict[str, type[BaseModel]]:
    """Section title (the YAML path, ``(top level)`` for RunSpec) → model, from ``cls`` down."""
    found = {path or "(top level)": cls}
    for name, field in cls.model_fields.items():
        for model in _models_in(field.annotation):
            found |= _reachable(model, f"{path}.{name}" if path else name)
    return found


@pytest.mark.parametrize("cls", _spec_models(), ids=lambda c: c.__name__)
def test_every_spec_field_has_a_description(cls: type[BaseModel]) -> None:
    missing = specdoc.undescribed(cls)
    assert not missing, f"{cls.__name__}: give these fields a Field(description=...): {missing}"


def test_every_section_field_has_a_description() -> None:
    missing = [f"{title}.{name}" for title, cls in specdoc.SECTIONS
               for name in specdoc.undescribed(cls)]
    assert not missing, f"fields without a description: {missing}"


def test_every_model_reachable_from_runspec_is_a_section() -> None:
    reachable = _reachable(S.RunSpec)
    assert len(reachable) > 1, "no sub-sections found: the walk over RunSpec is broken"
    sections = dict(specdoc.SECTIONS)
    missing = {title: cls.__name__ for title, cls in reachable.items() if title not in sections}
    assert not missing, f"specdoc.SECTIONS lacks {missing}"
    wrong = {title: (sections[title].__name__, cls.__name__) for title, cls in reachable.items()
             if sections[title] is not cls}
    assert not wrong, f"sections documenting the wrong model (has, should): {wrong}"
    extra = [title for title in sections if title not in reachable]
    assert not extra, f"sections no spec field leads to: {extra}"
    assert len(specdoc.SECTIONS) == len(sections), "a section is listed twice"


def test_every_spec_model_is_reachable_from_runspec() -> None:
    reachable = set(_reachable(S.RunSpec).values())
    unused = [cls.__name__ for cls in _spec_models() if cls not in reachable]
    assert not unused, f"spec models no RunSpec field leads to (so not documented): {unused}"


def test_render_refuses_a_field_without_description(monkeypatch: pytest.MonkeyPatch) -> None:
    class Bare(BaseModel):
        described: int = Field(default=1, description="has a meaning")
        bare: int = 2
        blank: str = Field(default="", description="  ")

    monkeypatch.setattr(specdoc, "SECTIONS", [*specdoc.SECTIONS, ("bare", Bare)])
    with pytest.raises(specdoc.MissingDescriptionError) as err:
        specdoc.render()
    assert "Bare.bare (bare)" in str(err.value) and "Bare.blank (bare)" in str(err.value)
    assert "described" not in str(err.value)


def test_page_shows_every_section_and_field() -> None:
    page = specdoc.render()
    for title, cls in specdoc.SECTIONS:
        assert f"## `{title}`" in page
        for name, field in cls.model_fields.items():
            assert f"| `{name}` |" in page
            assert str(field.description).replace("|", "/") in page


def test_mutable_defaults_are_shown_as_values_not_sections() -> None:
    page = specdoc.render()
    assert "| `label_descriptions` | `{}` |" in page
    assert "| `teacher` | (section) |" in page

"""Serialisation of the values kept in JSON columns, with this edge's own cattrs converter."""

from __future__ import annotations

from typing import Any, TypeVar

from cattrs.preconf.json import make_converter

from datadl.domain.policy import DownloadPolicy, PolicyOverride, Window

T = TypeVar("T", DownloadPolicy, PolicyOverride)

_converter = make_converter()
# Sets are written sorted and enums as their values, so equal policies store equal JSON.
_converter.register_unstructure_hook(Window, lambda value: value.value)
_converter.register_unstructure_hook_func(
    lambda cls: cls is frozenset or getattr(cls, "__origin__", None) is frozenset,
    lambda value: sorted(value),
)


def policy_to_json(policy: DownloadPolicy | PolicyOverride) -> dict[str, Any]:
    """The JSON document stored for a policy."""
    document: dict[str, Any] = _converter.unstructure(policy, unstructure_as=type(policy))
    return document


def policy_from_json(document: dict[str, Any], cls: type[T]) -> T:
    """The policy a stored JSON document holds; fields it lacks take their defaults."""
    return _converter.structure(document, cls)

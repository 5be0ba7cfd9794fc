"""Model routing: exact id, then the longest matching prefix, then the default provider."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import NotFound
from providers.base import Provider


class Router:
    """Resolves a model name to the provider that serves it, deterministically."""

    def __init__(self, providers: Mapping[str, Provider], default: str | None) -> None:
        self.providers = dict(providers)
        self.default = providers.get(default) if default else None
        self.exact: dict[str, Provider] = {}
        prefixes: list[tuple[str, Provider]] = []
        for provider in providers.values():
            for model in provider.settings.models:
                self.exact.setdefault(model, provider)
            prefixes += [(p, provider) for p in provider.settings.prefixes if p]
        # Longest first; ties keep config order, so the earlier provider wins.
        self.prefixes = sorted(prefixes, key=lambda item: -len(item[0]))

    def resolve(self, model: str) -> Provider:
        """The provider for `model`; NotFound naming the served models when there is none."""
        provider = self.exact.get(model)
        if provider is not None:
            return provider
        for prefix, candidate in self.prefixes:
            if model.startswith(prefix):
                return candidate
        if self.default is not None:
            return self.default
        served = ", ".join(self.served_models()) or "none"
        raise NotFound(
            f"The model {model!r} is not served here. Served models: {served}",
            param="model",
            code="model_not_found",
        )

    def served_models(self) -> list[str]:
        """Configured exact ids, then prefixes written as `prefix*`."""
        return [*self.exact, *(f"{p}*" for p, _ in self.prefixes)]


def duplicate_models(providers: Mapping[str, Provider]) -> list[str]:
    """One line per exact model id that more than one provider claims."""
    owner: dict[str, str] = {}
    problems = []
    for name, provider in providers.items():
        for model in provider.settings.models:
            if model in owner:
                problems.append(f"providers.{name}: model {model!r} is already served by {owner[model]!r}")
            else:
                owner[model] = name
    return problems

"""Any OpenAI-compatible server: the plugin for provider sections that name no plugin of their own."""

from providers.base import Provider


class OpenAICompatibleProvider(Provider):
    """An OpenAI-compatible endpoint configured entirely from its config section."""

    name = "openai"

"""open-llm-proxy: an OpenAI-compatible LLM gateway with provider plugins and durable JSONL logs."""

__version__ = "0.2.0"

from gateway.native import check_built

check_built()

"""Tool calls a model leaked into its answer's text, turned back into OpenAI `tool_calls`.

Models served by vLLM write their tool calls into `content` as markup when the server's tool parser misses
them. For a request that offered `tools`, and a model whose provider turns repair on, the proxy passes the
answer through a `ToolCallRepair`: `tools` (the offer and its schemas), `dialects` (the markups and their
readers), `scanner` (finding blocks in text that arrives in pieces) and `answer` (SSE events and bodies).
"""

from gateway.repair.answer import ToolCallRepair
from gateway.repair.tools import ToolCatalog

__all__ = ["ToolCallRepair", "ToolCatalog"]

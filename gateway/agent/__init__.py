"""The agent runner: replay an MCP tool-use session through the gateway (`scripts/agent_runner.py`).

Modules, from the outside in: `cli` (options) -> `runner` (one run) -> `loop` (the turns), which uses
`model` (the gateway, through the openai SDK) and `toolbox` (the MCP server, through the mcp SDK);
`replies`, `turns`, `stats` and `report` hold the values and the output; `errors` the exit codes.
"""

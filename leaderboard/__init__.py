"""Ranking and rendering of result records: the solutions and explanations boards (docs/leaderboard.md).

Modules: `records` (load files into frames), `boards` (pure aggregation and
ranking), `render` (terminal, Markdown, CSV, HTML), `figures` (matplotlib),
`cli` (the `leaderboard` and `report` commands). Heavy libraries are imported
by those modules, not here, so `import sparsebench.leaderboard` stays cheap.
"""

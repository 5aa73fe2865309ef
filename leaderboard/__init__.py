"""Ranking and rendering of result records: the solutions and explanations boards (docs/leaderboard.md).

Modules: `frames` (typed records into flat DataFrames), `boards` (pure aggregation
and ranking), `render` (terminal, Markdown, CSV, HTML), `figures` (matplotlib),
`build` (records to boards to text: what `sparsebench leaderboard` runs),
`synthetic` (demo records). Heavy libraries are imported by those modules, not
here, so `import sparsebench.leaderboard` stays cheap.
"""

"""The ticket pipeline of the second seed (Bebchuk & Shavit; docs/science.md §7, docs/design.md).

Dense training with snapshots (θ0, the detection steps, the end) -> detectors rank W1's
coordinates or feature-space sites -> masks at a sparsity (sites translated with a quota)
-> sparse retraining of every (seed, detector, step, sparsity, init mode) as one stacked
model -> metrics (sparse balanced accuracy, exact codes, clauses covered, same-site and
family recall, Jaccard to the oracle) -> one `TicketRecord` per variant.

- `config.py`: the tickets suite (TOML, `sparsebench/suites/tickets.toml`).
- `detectors.py`: the `Detector` interface and the built-in detectors (registry group
  `sparsebench.detectors`: a plugin adds its own and is ranked with them).
- `masks.py`: budgets, top-k masks, the site-to-mask translation.
- `dense.py`: dense training with snapshots, cached.
- `retrain.py`: stacked sparse retraining (all masks of a width in one batched model) and scoring.
- `pipeline.py`: plan, variants, record ids, the job (`sparsebench tickets`).
- `claims.py`: the paper's claims tested on the records (reproduced or not, with the numbers).
"""

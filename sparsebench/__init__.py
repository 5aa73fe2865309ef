"""sparsebench: a benchmark suite for superposition mechanisms.

How do tiny networks output sparse probability distributions over vocabularies
far larger than their width? sparsebench poses the tasks, trains the models,
holds candidate mechanisms (Bloom filter, JL superposition, the softmax
bottleneck's closed form, your own) against them, scores each explanation
with hook-based probes next to null baselines, and ranks it all.

Importing this package is cheap on purpose: it does not import torch's heavy
friends (TransformerLens is imported only when a transformer is built).
"""

__version__ = "0.1.0"

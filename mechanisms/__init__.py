"""Built-in mechanisms (installed as `sparsebench.mechanisms`), registered through entry points.

- `bloom`: the Bloom-filter construction of the post and its fit to trained weights.
- `jl`: linear (Johnson-Lindenstrauss) superposition, no MLP.
- `softmax-bottleneck`: the Basri & Jacobs minimum-norm closed form (an input-dependent oracle).
"""

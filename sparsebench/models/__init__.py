"""Built-in models: `mlp1` (the post's residual ReLU MLP) and `transformer` (TransformerLens 4)."""

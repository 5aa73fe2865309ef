"""Built-in tasks (installed as `sparsebench.tasks`)."""

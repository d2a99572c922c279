"""Model adapters: declarative specs (zoo/), the registry, each family's adapter, and the modules the export wraps."""

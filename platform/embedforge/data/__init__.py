"""Pure transforms of the unified multi-task framework (no Ray, no network)."""

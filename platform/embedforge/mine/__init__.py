"""Hard-negative mining: embedding actors, sharded faiss search, positive-aware selection."""

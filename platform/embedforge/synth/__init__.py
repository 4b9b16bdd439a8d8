"""LLM data synthesis: paraphrase, augmentation, hard negatives (QZhou-Embedding §data)."""

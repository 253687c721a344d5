"""The model side: CLIP weights and architecture (the one module that reads open_clip internals), the
vocabulary and its text embeddings."""

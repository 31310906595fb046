"""Models: GraphSAGE detector, LoRA adapters, embedder loader and the versioned model registry."""

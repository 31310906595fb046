"""Federated training with Flower: one ClientApp per mesh region, FedAvg/FedProx, then LoRA rounds."""

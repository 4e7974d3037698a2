"""Data layer: synthetic phantoms, dataset adapters and preprocessing."""

"""Models: backbone registry (timm), channel gate, DEIQT panel decoder, model cards and zoo."""

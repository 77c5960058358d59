"""Training: losses, feature perturbation, distillation and the training loop."""

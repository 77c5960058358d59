"""Data: image decoding, input policy (crops), input expansion; datasets and splits."""

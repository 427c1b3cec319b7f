"""cmbdetect models: networks, losses, samplers, training, inference and shipped weights."""

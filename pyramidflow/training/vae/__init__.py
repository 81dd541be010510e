"""The VAE's training pieces: config, data, losses, perceptual features, the latent cache."""

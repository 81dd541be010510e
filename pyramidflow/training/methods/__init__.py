"""Training methods: what the loop asks of an objective (base), flow matching, the VAE."""

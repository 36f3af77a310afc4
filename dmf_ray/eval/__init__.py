"""Scores of generated samples: latent-space metrics and image-space CMMD / FID."""

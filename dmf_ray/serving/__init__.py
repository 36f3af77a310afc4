"""Loading a trained or registered generator and mapping latents with it."""

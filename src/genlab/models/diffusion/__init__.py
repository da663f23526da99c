"""Diffusion models: schedules (pure functions), the UNet, and the diffusion process/samplers."""

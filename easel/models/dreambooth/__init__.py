"""DreamBooth fine-tuning of Stable Diffusion models: the config, the LightningModule, the
training loop with checkpoints that appear whole and resume exactly, what a resume may
honour of an edited config, and the export to a diffusers folder."""

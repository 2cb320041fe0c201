"""nulltext: edit real photos with words — Null-text Inversion + Prompt-to-Prompt on Stable Diffusion."""

__version__ = "0.1.0"

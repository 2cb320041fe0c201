"""The bundled model: a tiny Stable Diffusion trained by this project on synthetic captioned shapes."""

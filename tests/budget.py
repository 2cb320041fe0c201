"""The suite's step counts for claims that hold at fewer than the paper's 50 steps.

The Prompt-to-Prompt tests and the guidance table edit 25-step null-text inversions of the shared photos
(1, 5, 6): their claims are about the attention control and guidance, not about step count, and each
edit costs half. The paper's 50 steps stay where a claim is about them (null-text against DDIM and the
VAE bound, the default optimiser against the paper's Adam, the demo, the stock pipeline's replay)."""

EDIT_STEPS = 25

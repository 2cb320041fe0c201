"""The text conditioning a Stable Diffusion UNet receives, as one value for every model family.

SD 1.x and 2.x condition on token embeddings only: (B, tokens, dim) that cross-attention reads. SDXL
adds a pooled text embedding (B, P) of its second encoder, which enters the UNet beside the time
embedding (with the size micro-conditioning that `Model.predict` derives from the latent). The
algorithms pass a `TextConditioning` around without looking inside, so inversion, sampling and
editing have one code path; `Model` says which parts it needs (DESIGN.md, "Model families").

For null-text inversion (Mokady et al. 2023) the unconditional "null" ∅_t is such a bundle: on SD 1.x/2.x
the token embeddings of ψ(""); on SDXL the token embeddings (both encoders' features, concatenated) and
the pooled embedding, both optimised, because both enter the unconditional branch of classifier-free
guidance and freezing either would leave part of that branch unable to absorb the guided drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class TextConditioning:
    """Text conditioning of a batch: token embeddings (B, tokens, dim) and, for SDXL, pooled ones (B, P).

    Per-step sequences use the step as the batch dimension: (T, tokens, dim) and (T, P).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor | None = None

    @classmethod
    def of(cls, value: TextConditioning | torch.Tensor) -> TextConditioning:
        """A bundle as is; a bare tensor as token embeddings without a pooled part (SD 1.x/2.x)."""
        return value if isinstance(value, TextConditioning) else cls(value)

    @staticmethod
    def cat(items: list[TextConditioning | torch.Tensor]) -> TextConditioning:
        """Concatenate along the batch: the unconditional and conditional halves of one UNet batch."""
        items = [TextConditioning.of(x) for x in items]
        pooled = [x.pooled for x in items]
        if any(p is None for p in pooled) and not all(p is None for p in pooled):
            raise ValueError("cannot join text conditioning with and without pooled embeddings")
        return TextConditioning(torch.cat([x.tokens for x in items]),
                                None if pooled[0] is None else torch.cat(pooled))

    def join_rows(self, other: TextConditioning) -> TextConditioning:
        """Per-step sequences side by side along the row dimension: (T, B₁, …) and (T, B₂, …) → (T, B₁+B₂, …)."""
        if (self.pooled is None) != (other.pooled is None):
            raise ValueError("cannot join text conditioning with and without pooled embeddings")
        return TextConditioning(torch.cat([self.tokens, other.tokens], 1),
                                None if self.pooled is None else torch.cat([self.pooled, other.pooled], 1))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TextConditioning:
        """The same function applied to each part."""
        return TextConditioning(fn(self.tokens), None if self.pooled is None else fn(self.pooled))

    def tensors(self) -> list[torch.Tensor]:
        """The parts that exist: what an optimiser of ∅_t updates."""
        return [self.tokens] if self.pooled is None else [self.tokens, self.pooled]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int | slice | list[int]) -> TextConditioning:
        """Rows of the batch; an integer keeps the batch dimension (row i as a batch of one)."""
        rows = slice(index, index + 1) if isinstance(index, int) else index
        if isinstance(index, int) and index == -1:
            rows = slice(-1, None)
        return self.map(lambda t: t[rows])

    def expand(self, n: int) -> TextConditioning:
        """A batch of one repeated n times (a view, no copy)."""
        return self.map(lambda t: t.expand(n, *t.shape[1:]))

    def to(self, *args, **kwargs) -> TextConditioning:
        return self.map(lambda t: t.to(*args, **kwargs))

    def float(self) -> TextConditioning:
        return self.map(lambda t: t.float())

    def detach(self) -> TextConditioning:
        return self.map(lambda t: t.detach())

    def clone(self) -> TextConditioning:
        return self.map(lambda t: t.clone())

    def requires_grad_(self, flag: bool = True) -> TextConditioning:
        for t in self.tensors():
            t.requires_grad_(flag)
        return self

    def grads_finite(self) -> bool:
        return all(t.grad is None or bool(torch.isfinite(t.grad).all()) for t in self.tensors())

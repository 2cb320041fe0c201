"""The core math: DDIM steps in both directions and schedules (`ddim`), the text-conditioning bundle
(`conditioning`), classifier-free guided sampling (`sampling`). Pure tensor math over a model's
`predict`; knows nothing of files, inversion or editing."""

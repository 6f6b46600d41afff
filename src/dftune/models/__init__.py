"""Models: the small local presets and every model dftune loads (causal, masked/diffusion, quantised, adapters,
DPO's policy and reference).

Module order: reference, merge > loading; presets > pretrained > catalog. `catalog` is the presets' names and
shapes as plain data (what parsers import: no torch). Every `from_pretrained` that loads a model's weights is in
`loading` (safetensors only); `pretrained` reads the SmolLM2 GGUF, a format that holds no code.
"""

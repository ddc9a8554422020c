"""fastscale inside other libraries. Each integration is its own module, imported only on request so
the core package never needs the library it integrates with:

- fastscale.integrations.transformers: Hugging Face transformers (the "fastscale" attention
  implementation and `apply_fastscale(model)`, the causal-LM loss without logits); extra `[hf]`.
"""

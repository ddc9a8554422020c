"""fastscale in Hugging Face transformers (install the extra: pip install 'fastscale[hf]').

Importing this module registers the "fastscale" attention implementation:

    import fastscale.integrations.transformers
    model = AutoModelForCausalLM.from_config(config, attn_implementation="fastscale")

and `apply_fastscale(model)` also routes the causal-LM loss through
fastscale.ops.linear_cross_entropy, so training never materializes the [tokens, vocab] logits:

    from fastscale.integrations.transformers import apply_fastscale
    model = apply_fastscale(AutoModelForCausalLM.from_pretrained(name))

attention.py has the attention design (kernel path, packed batches, fallbacks), loss.py the loss's.
"""

from .attention import NAME, fastscale_attention_forward, fastscale_mask, register
from .loss import SUPPORTED, FusedLinearHead, apply_fastscale

register()

__all__ = ["NAME", "SUPPORTED", "FusedLinearHead", "apply_fastscale", "fastscale_attention_forward",
           "fastscale_mask", "register"]

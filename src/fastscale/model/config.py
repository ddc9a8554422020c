"""The GPT configuration family: shapes from a parameter budget, parameter counts and presets.

Conventions follow Kaplan et al. (2020), Table 1: the non-embedding parameter count of a decoder-only
transformer with n_layer blocks, width d_model, attention width d_attn and MLP width d_ff is

    N = 2 * d_model * n_layer * (2 * d_attn + d_ff) ~= 12 * n_layer * d_model**2

when d_attn = d_model and d_ff = 4 * d_model. Biases and norms are left out of N (they are in the exact
count, `GPT.num_params()` / `GPTConfig.n_params_exact`). Embeddings (token, position, output) are not
counted in N. Nothing here allocates a tensor, so the ladder up to 1e10 can be checked on a laptop.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

POSITIONS = ("learned", "rotary")


def _fail(name: str, value, expectation: str) -> None:
    raise ValueError(f"GPTConfig: {name}={value!r}; expected {expectation}")


@dataclass
class GPTConfig:
    """Shape and options of a pre-norm decoder-only GPT.

    n_kv_head < n_head gives grouped-query attention (1 is multi-query); d_ff defaults to 4 * d_model.
    positions: "learned" (GPT-2) or "rotary" (RoPE on q and k). tie_embeddings shares the token
    embedding with the output projection. attention_backend / loss_backend go to fastscale.ops.
    """

    vocab_size: int
    seq_len: int
    n_layer: int
    d_model: int
    n_head: int
    n_kv_head: int | None = None
    d_ff: int | None = None
    positions: str = "learned"
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    bias: bool = True
    dropout: float = 0.0
    window: int | None = None
    init_std: float = 0.02
    attention_backend: str = "auto"
    loss_backend: str = "auto"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "seq_len", "n_layer", "d_model", "n_head", "n_kv_head", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, value, "a positive integer")
        if self.d_model % self.n_head:
            _fail("n_head", self.n_head, f"a divisor of d_model={self.d_model}")
        if self.n_head % self.n_kv_head:
            _fail("n_kv_head", self.n_kv_head, f"a divisor of n_head={self.n_head}")
        if self.positions not in POSITIONS:
            _fail("positions", self.positions, f"one of {POSITIONS}")
        if self.positions == "rotary" and self.head_dim % 2:
            _fail("positions", self.positions, f"an even head_dim for rotary (got {self.head_dim})")
        if not 0.0 <= self.dropout < 1.0:
            _fail("dropout", self.dropout, "a probability in [0, 1)")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            _fail("window", self.window, "None or a positive integer")

    # ---------------------------------------------------------------- shapes
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_attn(self) -> int:
        """Width of the attention's q (and output) projection."""
        return self.n_head * self.head_dim

    @property
    def d_kv(self) -> int:
        """Width of each of the k and v projections (smaller than d_attn under GQA/MQA)."""
        return self.n_kv_head * self.head_dim

    # ---------------------------------------------------------------- counts
    @property
    def n_params(self) -> int:
        """Kaplan's non-embedding N: weight matrices of the blocks, no biases, norms or embeddings.
        Equals 12 * n_layer * d_model**2 for multi-head attention with d_ff = 4 * d_model."""
        d = self.d_model
        attention = d * self.d_attn + 2 * d * self.d_kv + self.d_attn * d  # q, k, v, out
        mlp = 2 * d * self.d_ff
        return self.n_layer * (attention + mlp)

    @property
    def n_params_exact(self) -> int:
        """Every trainable non-embedding scalar of GPT(self): N plus biases and norm gains/shifts."""
        d, b = self.d_model, int(self.bias)
        per_layer = self.n_params // self.n_layer
        per_layer += b * (self.d_attn + 2 * self.d_kv + d + self.d_ff + d)  # qkv, out, fc, proj biases
        per_layer += 2 * (d + b * d)  # two LayerNorms (weight, and bias when bias=True)
        return self.n_layer * per_layer + (d + b * d)  # final LayerNorm

    @property
    def n_embedding_params(self) -> int:
        """Token embedding, learned positions, and the output projection when it is not tied."""
        count = self.vocab_size * self.d_model
        if self.positions == "learned":
            count += self.seq_len * self.d_model
        if not self.tie_embeddings:
            count += self.vocab_size * self.d_model
        return count

    @property
    def n_params_total(self) -> int:
        return self.n_params_exact + self.n_embedding_params

    # ---------------------------------------------------------------- FLOPs
    def flops_per_token(self, context: int | None = None) -> int:
        """Training FLOPs per token (forward + backward = 3 x forward), Kaplan's C = 6N + attention:
        forward 2N + 2 * n_layer * n_ctx * d_attn, n_ctx = context (default seq_len)."""
        n_ctx = self.seq_len if context is None else context
        return 6 * self.n_params + 6 * self.n_layer * n_ctx * self.d_attn

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.update(n_params=self.n_params, n_params_exact=self.n_params_exact, n_params_total=self.n_params_total)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "GPTConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        derived = {"n_params", "n_params_exact", "n_params_total"}
        unknown = sorted(set(data) - names - derived)
        if unknown:
            raise ValueError(f"GPTConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    # ---------------------------------------------------------------- from a budget
    @classmethod
    def from_params(
        cls,
        n: float,
        vocab_size: int,
        seq_len: int,
        *,
        aspect_ratio: float = 64.0,
        head_dim: int = 64,
        **options,
    ) -> "GPTConfig":
        """The shape whose non-embedding N = 12 * n_layer * d_model**2 is nearest to n, with
        d_model / n_layer held near aspect_ratio (Kaplan's sweeps: N is what matters, the aspect ratio
        barely does; 64 is GPT-2 small's 768 / 12).

        d_model is a multiple of head_dim (so n_head = d_model / head_dim heads of width head_dim).
        Among the n_layer values around the ideal (n / (12 * aspect_ratio**2)) ** (1/3), the one whose
        rounded shape has the smallest |log(N / n)| + 0.25 * |log(aspect / aspect_ratio)| wins.
        Extra options (positions, n_kv_head as a ratio is not supported: give it explicitly, ...) pass
        to GPTConfig.
        """
        if not isinstance(n, (int, float)) or isinstance(n, bool) or not math.isfinite(n) or n <= 0:
            raise ValueError(f"from_params: n={n!r}; expected a positive parameter count such as 1e6")
        if aspect_ratio <= 0:
            raise ValueError(f"from_params: aspect_ratio={aspect_ratio!r}; expected a positive number")
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"from_params: head_dim={head_dim!r}; expected a positive integer")
        if 12 * head_dim**2 > 4 * n:
            raise ValueError(
                f"from_params: n={n:g} is too small for head_dim={head_dim}: one layer of width {head_dim} already has "
                f"{12 * head_dim**2} parameters; pass a smaller head_dim"
            )
        ideal = (n / (12 * aspect_ratio**2)) ** (1 / 3)
        best = None
        for n_layer in range(max(1, int(ideal / 2)), int(ideal * 2) + 2):
            width = math.sqrt(n / (12 * n_layer))
            d_model = max(head_dim, head_dim * round(width / head_dim))
            actual = 12 * n_layer * d_model**2
            score = abs(math.log(actual / n)) + 0.25 * abs(math.log((d_model / n_layer) / aspect_ratio))
            if best is None or score < best[0]:
                best = (score, n_layer, d_model)
        _, n_layer, d_model = best
        return cls(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, d_model=d_model, n_head=d_model // head_dim, **options)


# The preset ladder of a scaling study: half-decades of non-embedding parameters, 1e5 to 1e10.
LADDER = tuple(float(f"{m}e{e}") for e in range(5, 10) for m in (1, 3)) + (1e10,)


def preset(n: float, vocab_size: int = 256, seq_len: int = 1024, **options) -> GPTConfig:
    """A member of the ladder: head_dim 32 below 1e7 parameters (so small models still have a few
    heads), 64 from 1e7 up to 3e9 and 128 from 1e9 up, aspect ratio 64."""
    head_dim = 32 if n < 1e7 else 64 if n < 1e9 else 128
    return GPTConfig.from_params(n, vocab_size, seq_len, head_dim=head_dim, **options)

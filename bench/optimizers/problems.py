"""The benchmark problems: three matrix problems from PolarGrad, small real networks (an MLP, a
byte-level transformer and its mixture-of-experts variant) and two problems on the Stiefel
manifold (an eigenspace and an MLP with semi-orthogonal hidden matrices).

Every problem builds its data once, deterministically, from a fixed data seed (or from files
that ship with Python or scikit-learn: nothing is downloaded). A run seed only changes the
initial weights and the minibatch order, so the spread over seeds is the optimizer's.

The matrix problems follow the official PolarGrad code (timlautk/polargrad:
``mat_quad_reg.py``, ``mat_log_reg.py``, ``low_rank_mat_comp.py``): same shapes, same data
distributions, same U(−1, 1) initialisation, same (summed) losses. They also give the closed-form
gradient of the full objective, from which the runner logs ‖∇f‖_* and κ₂(∇f) as the paper does.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polarkernels.optim import MatrixView, project_to_stiefel_, split_params

#: Data seed of the PolarGrad scripts (``seed=42``); the data never depend on the run seed.
DATA_SEED = 42


@dataclass(frozen=True)
class Budget:
    """Steps of one run and how often the evaluation metric is logged."""

    steps: int
    evals: int = 30

    def eval_steps(self) -> list[int]:
        """Steps after which the runner evaluates: 0, then ``evals`` evenly spaced, last = steps."""
        return sorted({0, *(round(self.steps * (i + 1) / self.evals) for i in range(self.evals))})


class Problem(ABC):
    """One benchmark problem.

    ``evaluate(model)["loss"]`` is the selection metric (lower is better): f − f* where f* is
    known, the full-data objective otherwise, a held-out loss for the networks.
    """

    name: str
    title: str
    metric: str
    log_scale: bool
    #: step budgets by mode: "full", "quick", and "test" (the test suite's smoke run)
    budgets: dict[str, Budget]
    #: whether the sweep tunes weight decay here (not where it would change the objective)
    tunes_weight_decay: bool = True
    #: further keys of ``evaluate``'s result that the report tabulates (final, seed-mean)
    reported: tuple[str, ...] = ()

    def provenance(self) -> dict[str, object]:
        """What a reader needs to know the data were the same: recorded in the results JSON."""
        return {"title": self.title, "metric": self.metric, "data_seed": DATA_SEED}

    @abstractmethod
    def build(self, seed: int) -> nn.Module:
        """A freshly initialised model; ``seed`` fixes its initial weights."""

    @abstractmethod
    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        """The loss whose gradient the optimizer sees at one step (``gen`` draws the minibatch)."""

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """``{"loss": selection metric, ...}`` on the full data / held-out split (no grad)."""


class MatrixProblem(Problem):
    """A problem whose parameters are plain matrices; the runner also logs ‖∇f‖_* and κ₂(∇f)."""

    tunes_weight_decay = False

    @abstractmethod
    def gradient(self, model: nn.Module) -> dict[str, Tensor]:
        """Closed-form gradient of the full objective at ``model``, by parameter name."""


class Matrix(nn.Module):
    """Parameters that are plain matrices, initialised U(−1, 1) as in the PolarGrad scripts."""

    def __init__(self, seed: int, **shapes: tuple[int, int]) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.rand(shape, generator=gen) * 2 - 1))


class QuadraticRegression(MatrixProblem):
    """Matrix quadratic regression f(X) = ½‖AXB − C‖²_F, A p×m, B n×q, C p×q Gaussian.

    f is a strongly convex quadratic (A, B of full rank) with Hessian (BBᵀ) ⊗ (AᵀA), so
    f(X) − f* = ½‖A(X − X*)B‖²_F = ½⟨E, AᵀA E BBᵀ⟩ with E = X − X*: the runner trains on this
    exact expansion (no cancellation against f* ≈ 1e5, and 2.5× fewer flops than AXB), with X*
    from two float64 least-squares solves, X* = A⁺ C B⁺.
    """

    name = "quadratic"
    title = "Matrix quadratic regression (X 500×100)"
    metric = "f − f*"
    log_scale = True
    budgets = {"full": Budget(500, 25), "quick": Budget(100, 10), "test": Budget(4, 2)}

    def __init__(self, m: int = 500, n: int = 100, p: int = 1000, q: int = 250) -> None:
        self.shape = (m, n)
        gen = torch.Generator().manual_seed(DATA_SEED)
        self.a = torch.randn(p, m, generator=gen)
        self.b = torch.randn(n, q, generator=gen)
        self.c = torch.randn(p, q, generator=gen)

    @cached_property
    def x_star(self) -> Tensor:
        """X* = A⁺ C B⁺ in float64 (A has full column rank, B full row rank)."""
        a, b, c = (t.double() for t in (self.a, self.b, self.c))
        y = torch.linalg.lstsq(a, c).solution                     # A⁺ C, m×q
        return torch.linalg.lstsq(b.mT, y.mT).solution.mT          # (A⁺ C) B⁺, m×n

    @cached_property
    def f_star(self) -> float:
        return self.objective(self.x_star)

    @cached_property
    def _grams(self) -> tuple[Tensor, Tensor]:
        a, b = self.a.double(), self.b.double()
        return a.mT @ a, b @ b.mT                                  # AᵀA (m×m), BBᵀ (n×n)

    def objective(self, x: Tensor) -> float:
        """f(X) = ½‖AXB − C‖²_F straight from the definition, in float64."""
        a, b, c = (t.double() for t in (self.a, self.b, self.c))
        return 0.5 * float(((a @ x.detach().double() @ b - c) ** 2).sum())

    def build(self, seed: int) -> nn.Module:
        return Matrix(seed, X=self.shape)

    def _gap(self, x: Tensor) -> Tensor:
        """f(X) − f* = ½⟨E, AᵀA E BBᵀ⟩, E = X − X*, computed in ``x.dtype``."""
        gram_a, gram_b = (g.to(x.dtype) for g in self._grams)
        e = x - self.x_star.to(x.dtype)
        return 0.5 * (e * (gram_a @ e @ gram_b)).sum()

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        return self._gap(model.X) + self.f_star

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(self._gap(model.X.double()))}

    def gradient(self, model: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad():
            return {"X": self.a.mT @ (self.a @ model.X @ self.b - self.c) @ self.b.mT}   # Aᵀ(AXB − C)Bᵀ


class LogisticRegression(MatrixProblem):
    """Matrix logistic regression f(X) = Σᵢⱼ log(1 + exp(−Cᵢⱼ (AXB)ᵢⱼ)), minibatched over rows.

    A N×m and B n×q Gaussian, labels C = 2·[z > 0.5] − 1 with z standard normal (≈ 31% of +1,
    as in the official script). Each step draws ``batch`` rows of A and C with replacement and
    takes the summed loss over them (the script's choice, so SGD and PolarGrad learning rates
    are on the paper's scale). The reported metric is the full objective per entry, f/(Nq).
    """

    name = "logistic"
    title = "Matrix logistic regression (X 1000×100, minibatch 1000 of 10000 rows)"
    metric = "f / (N·q)"
    log_scale = False
    budgets = {"full": Budget(200, 10), "quick": Budget(40, 4), "test": Budget(4, 2)}

    def __init__(self, m: int = 1000, n: int = 100, rows: int = 10000, q: int = 400,
                 batch: int = 1000) -> None:
        self.shape = (m, n)
        self.batch = batch
        gen = torch.Generator().manual_seed(DATA_SEED)
        self.a = torch.randn(rows, m, generator=gen)
        self.b = torch.randn(n, q, generator=gen)
        self.c = 2.0 * (torch.randn(rows, q, generator=gen) > 0.5).float() - 1.0

    @staticmethod
    def loss(x: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
        """Σ log(1 + exp(−C ∘ AXB)) = Σ softplus(−C ∘ AXB)."""
        return F.softplus(-c * (a @ x @ b)).sum()

    def build(self, seed: int) -> nn.Module:
        return Matrix(seed, X=self.shape)

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        rows = torch.randint(0, self.a.shape[0], (self.batch,), generator=gen)
        return self.loss(model.X, self.a[rows], self.b, self.c[rows])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(self.loss(model.X, self.a, self.b, self.c)) / self.c.numel()}

    def gradient(self, model: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad():
            s = -self.c * torch.sigmoid(-self.c * (self.a @ model.X @ self.b))   # ∂f/∂(AXB)
            return {"X": self.a.mT @ s @ self.b.mT}                             # Aᵀ S Bᵀ


class MatrixCompletion(MatrixProblem):
    """Low-rank matrix completion in factored form: f(X, Y) = ‖P_Ω(XYᵀ − M)‖²_F / |Ω|.

    M = U Vᵀ (m×n, rank r, Gaussian factors), Ω a Bernoulli(0.3) mask; X (m×r), Y (n×r). The
    true factors give f = 0, so f* = 0 and the metric is f itself.
    """

    name = "completion"
    title = "Low-rank matrix completion (500×250, rank 5, 30% observed)"
    metric = "f − f* (f* = 0)"
    log_scale = True
    budgets = {"full": Budget(1000), "quick": Budget(200, 20), "test": Budget(4, 2)}

    def __init__(self, m: int = 500, n: int = 250, rank: int = 5, observed: float = 0.3) -> None:
        self.shapes = {"X": (m, rank), "Y": (n, rank)}
        gen = torch.Generator().manual_seed(DATA_SEED)
        self.u = torch.randn(m, rank, generator=gen)
        self.v = torch.randn(n, rank, generator=gen)
        self.target = self.u @ self.v.mT
        self.mask = (torch.rand(m, n, generator=gen) < observed).float()

    f_star = 0.0

    def objective(self, x: Tensor, y: Tensor) -> Tensor:
        return ((self.mask * (x @ y.mT - self.target)) ** 2).sum() / self.mask.sum()

    def build(self, seed: int) -> nn.Module:
        return Matrix(seed, **self.shapes)

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        return self.objective(model.X, model.Y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(self.objective(model.X, model.Y))}

    def gradient(self, model: nn.Module) -> dict[str, Tensor]:
        with torch.no_grad():
            r = 2 * self.mask * (model.X @ model.Y.mT - self.target) / self.mask.sum()
            return {"X": r @ model.Y, "Y": r.mT @ model.X}          # ∂f/∂X = 2R Y/|Ω|, ∂f/∂Y = 2Rᵀ X/|Ω|


class MLP(nn.Module):
    """in → width → width → classes with ReLU; the last layer is named ``head`` (the output
    head, which the hybrid optimizers give to AdamW)."""

    def __init__(self, inputs: int, width: int, classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class DigitsMLP(Problem):
    """A 64-128-128-10 ReLU MLP on scikit-learn's bundled 8×8 digits (1797 images).

    Fixed split from the data seed: 60% train, 20% validation (the selection metric:
    cross-entropy), 20% test (accuracy and loss reported, never used to choose).
    """

    name = "digits_mlp"
    title = "MLP 64-128-128-10 on scikit-learn digits"
    metric = "val loss"
    reported = ("test_accuracy",)
    log_scale = True
    budgets = {"full": Budget(600, 30), "quick": Budget(150, 15), "test": Budget(4, 2)}

    def __init__(self, width: int = 128, batch: int = 64) -> None:
        from sklearn.datasets import load_digits   # ships its data; no download

        self.width, self.batch = width, batch
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
        n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
        parts = order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]
        self.train, self.val, self.test = ((x[i], y[i]) for i in parts)

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return MLP(64, self.width, 10)

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        x, y = self.train
        rows = torch.randint(0, len(y), (self.batch,), generator=gen)
        return F.cross_entropy(model(x[rows]), y[rows])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        (xv, yv), (xt, yt) = self.val, self.test
        logits = model(xt)
        return {"loss": float(F.cross_entropy(model(xv), yv)),
                "test_loss": float(F.cross_entropy(logits, yt)),
                "test_accuracy": float((logits.argmax(-1) == yt).float().mean())}


def stdlib_corpus() -> tuple[list[Path], list[Path]]:
    """The top-level ``*.py`` files of the running Python's standard library, sorted by name;
    every 10th goes to validation (a split by file, so no text is shared)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if len(files) < 20:
        raise RuntimeError(f"found only {len(files)} standard-library sources under {root}")
    return [f for i, f in enumerate(files) if i % 10], files[::10]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x) (GPT-2 layout)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, w))
        return x + self.ffn(self.ln2(x))

    def ffn(self, x: Tensor) -> Tensor:
        """The position-wise MLP."""
        return self.fc_proj(F.gelu(self.fc(x)))


class Experts(nn.Module):
    """``experts`` GELU MLPs as two (E, out, in) stacks (the layout MoE codebases use): one batched
    product per layer. ``split_params`` views each stack as E matrices (a user module's 3-D weight)."""

    def __init__(self, experts: int, width: int, hidden: int) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.empty(experts, hidden, width))
        self.w_out = nn.Parameter(torch.empty(experts, width, hidden))

    def forward(self, x: Tensor, gates: Tensor) -> Tensor:
        """Σₑ gₑ(x) · MLPₑ(x) for x (..., width) and gates (..., E); every expert runs densely (small E)."""
        h = F.gelu(torch.einsum("...w,ehw->...eh", x, self.w_in))
        return torch.einsum("...eh,ewh,...e->...w", h, self.w_out, gates)


class MoEBlock(Block):
    """:class:`Block` with a top-k mixture of experts for its MLP, and a fused QKV projection that
    declares its Q, K and V blocks (``matrix_views``), so each is orthogonalized on its own."""

    def __init__(self, width: int, heads: int, experts: int, top_k: int) -> None:
        super().__init__(width, heads)
        del self.fc, self.fc_proj
        self.qkv.matrix_views = {"weight": MatrixView(blocks=("q", "k", "v"))}
        self.top_k = top_k
        self.router = nn.Linear(width, experts, bias=False)
        self.experts = Experts(experts, width, 4 * width)

    def ffn(self, x: Tensor) -> Tensor:
        logits = self.router(x)
        top, idx = logits.topk(self.top_k, dim=-1)           # softmax over the k chosen (Mixtral)
        gates = torch.zeros_like(logits).scatter(-1, idx, top.softmax(-1))
        return self.experts(x, gates)


class CharTransformer(nn.Module):
    """Byte-level GPT: token + position embeddings, ``layers`` blocks, final LN, untied head.

    With ``experts`` > 0 the blocks are :class:`MoEBlock` (top-``top_k`` of ``experts``).
    """

    def __init__(self, width: int, layers: int, heads: int, context: int, vocab: int = 256,
                 experts: int = 0, top_k: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(MoEBlock(width, heads, experts, top_k) if experts else Block(width, heads)
                                    for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class StdlibCharLM(Problem):
    """A small byte-level transformer language model on the standard library's own sources.

    The model predicts the next byte (vocabulary 256; the sources are nearly all ASCII, so
    bytes are characters). Training windows are drawn uniformly from the concatenated training
    files; the validation loss (the metric, nats per byte) is the mean over a fixed set of
    windows evenly spaced through the validation files.
    """

    name = "stdlib_lm"
    title = "Byte-level transformer LM (2 layers, width 128) on the stdlib sources"
    #: extra CharTransformer arguments (the MoE variant sets experts)
    model_options: dict[str, int] = {}
    metric = "val loss (nats/byte)"
    log_scale = False
    budgets = {"full": Budget(200, 10), "quick": Budget(40, 4), "test": Budget(3, 1)}

    def __init__(self, width: int = 128, layers: int = 2, heads: int = 4, context: int = 64,
                 batch: int = 16, val_windows: int = 64) -> None:
        self.width, self.layers, self.heads, self.context, self.batch = width, layers, heads, context, batch
        train_files, val_files = stdlib_corpus()
        self.train_text = _read_bytes(train_files)
        self.val_text = _read_bytes(val_files)
        self.corpus = {"python": platform.python_version(), "files": len(train_files) + len(val_files),
                       "train_bytes": len(self.train_text), "val_bytes": len(self.val_text),
                       "train_sha256": hashlib.sha256(self.train_text.numpy().tobytes()).hexdigest()[:16]}
        starts = torch.linspace(0, len(self.val_text) - context - 2, val_windows).long()
        self.val_x, self.val_y = self._windows(self.val_text, starts)

    def provenance(self) -> dict[str, object]:
        return {**super().provenance(), "corpus": self.corpus}

    def _windows(self, text: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
        idx = starts[:, None] + torch.arange(self.context + 1)
        chunk = text[idx].long()
        return chunk[:, :-1], chunk[:, 1:]

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = CharTransformer(self.width, self.layers, self.heads, self.context, **self.model_options)
        for name, p in model.named_parameters():                  # GPT-2 init: N(0, 0.02²)
            if p.ndim >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
        return model

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        starts = torch.randint(0, len(self.train_text) - self.context - 1, (self.batch,), generator=gen)
        x, y = self._windows(self.train_text, starts)
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(F.cross_entropy(model(self.val_x).flatten(0, 1), self.val_y.flatten()))}


class StdlibMoELM(StdlibCharLM):
    """:class:`StdlibCharLM` with mixture-of-experts blocks (4 experts, top 2) and fused QKV split
    into Q, K, V for the polar update: expert stacks and QKV blocks through ``split_params``'
    defaults. Same data, budgets and lr family as the dense model."""

    name = "stdlib_moe_lm"
    family = "stdlib_lm"
    title = "Byte-level MoE transformer LM (2 layers, width 128, 4 experts top 2) on the stdlib sources"
    model_options = {"experts": 4, "top_k": 2}


class StiefelProblem(Problem):
    """A problem whose hidden matrices (the polar group of ``split_params``) belong on the Stiefel
    manifold St(m, n) = {W : WᵀW = I} (a wide W: WWᵀ = I). They start there (``build`` projects
    them); the manifold optimizers keep them there, the unconstrained ones need not.
    ``evaluate`` also reports ``orthogonality``: max over them of ‖WᵀW − I‖_F (‖WWᵀ − I‖_F if wide)."""

    #: the manifold optimizers of :mod:`bench.optimizers.optimizers`, unconstrained Muon and AdamW
    optimizers = ("stiefel_muon", "stiefel_dual", "stiefel_admm", "spel", "rsgd", "muon")
    reported = ("orthogonality",)

    @staticmethod
    def on_manifold(model: nn.Module) -> list[nn.Parameter]:
        """The parameters on the manifold: ``split_params``' polar ones."""
        return [p for g in split_params(model) if g["algorithm"] == "polar" for p in g["params"]]

    @staticmethod
    def orthogonality(model: nn.Module) -> float:
        errors = []
        for w in StiefelProblem.on_manifold(model):
            w = w.detach().double()
            gram = w.mT @ w if w.shape[0] >= w.shape[1] else w @ w.mT
            errors.append(float(torch.linalg.matrix_norm(gram - torch.eye(len(gram), dtype=gram.dtype))))
        return max(errors)


class Subspace(nn.Module):
    """One m×n matrix ``w`` (a basis of an n-dimensional subspace of ℝᵐ)."""

    def __init__(self, m: int, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(m, n))


class StiefelTrace(StiefelProblem):
    """The top-n eigenspace of an m×m symmetric A with a known spectrum, as maximisation of the
    generalised Rayleigh quotient tr((WᵀW)⁻¹WᵀAW) over W ∈ ℝ^{m×n} (= tr(WᵀAW) on the manifold).

    It is invariant to W → WR, so unconstrained optimizers are well posed on it. A = Q diag(λ) Qᵀ
    with λ = linspace(1, 0.01, m)² (gap λₙ/λₙ₊₁ ≈ 1.02 at n = 8) and Q Haar-random from the data
    seed. Metric: 1 − tr((WᵀW)⁻¹WᵀAW)/(λ₁ + … + λₙ), in float64 (float32 floors it at ~1e-7).
    """

    name = "stiefel_trace"
    title = "Stiefel: top-8 eigenspace of a 96×96 matrix"
    metric = "relative eigenvalue-sum gap"
    log_scale = True
    tunes_weight_decay = False          # scale-invariant objective: λ would only shrink W
    budgets = {"full": Budget(30, 10), "quick": Budget(10, 2), "test": Budget(3, 1)}

    def __init__(self, m: int = 96, n: int = 8) -> None:
        gen = torch.Generator().manual_seed(DATA_SEED)
        q = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=torch.float64))[0]
        spectrum = torch.linspace(1.0, 0.01, m, dtype=torch.float64) ** 2
        self.a = (q * spectrum) @ q.mT
        self.best = float(spectrum[:n].sum())
        self.shape = (m, n)

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = Subspace(*self.shape)
        project_to_stiefel_(model.w)
        return model

    def _gap(self, w: Tensor) -> Tensor:
        a = self.a.to(w.dtype)
        return 1 - torch.trace(torch.linalg.solve(w.mT @ w, w.mT @ a @ w)) / self.best

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        return self._gap(model.w)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(self._gap(model.w.double())), "orthogonality": self.orthogonality(model)}


class TanhMLP(nn.Module):
    """inputs → hidden[0] → … → classes with tanh: the ``hidden`` Linear layers, then ``head``."""

    def __init__(self, inputs: int, hidden: tuple[int, ...], classes: int) -> None:
        super().__init__()
        sizes = (inputs, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.head = nn.Linear(sizes[-1], classes)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.hidden:
            x = torch.tanh(layer(x))
        return self.head(x)


class StiefelDigitsMLP(StiefelProblem):
    """A 64 → 96 → 32 → 10 tanh MLP on scikit-learn's digits whose two hidden matrices (96×64 tall,
    32×96 wide) are on the manifold; biases and the head are ordinary parameters (AdamW's in every
    hybrid). Inputs standardised per pixel; fixed split from the data seed, 1400 train, the rest
    (397) held out. Metric: held-out cross-entropy; minibatch 64."""

    name = "stiefel_digits"
    title = "Stiefel: MLP 64-96-32-10 (tanh) on digits"
    metric = "val loss"
    log_scale = True
    budgets = {"full": Budget(150, 15), "quick": Budget(30, 3), "test": Budget(3, 1)}

    def __init__(self, batch: int = 64) -> None:
        from sklearn.datasets import load_digits   # ships its data; no download

        self.batch = batch
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32)
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
        self.train = x[order[:1400]], y[order[:1400]]
        self.val = x[order[1400:]], y[order[1400:]]

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = TanhMLP(64, (96, 32), 10)
        project_to_stiefel_(self.on_manifold(model))
        return model

    def train_loss(self, model: nn.Module, gen: torch.Generator) -> Tensor:
        x, y = self.train
        rows = torch.randint(0, len(y), (self.batch,), generator=gen)
        return F.cross_entropy(model(x[rows]), y[rows])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = self.val
        return {"loss": float(F.cross_entropy(model(x), y)), "orthogonality": self.orthogonality(model)}


def _read_bytes(files: list[Path]) -> Tensor:
    return torch.frombuffer(bytearray(b"".join(f.read_bytes() for f in files)), dtype=torch.uint8)


PROBLEMS: dict[str, type[Problem]] = {p.name: p for p in (
    MatrixCompletion, DigitsMLP, QuadraticRegression, LogisticRegression, StdlibCharLM, StdlibMoELM,
    StiefelTrace, StiefelDigitsMLP)}

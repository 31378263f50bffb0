"""What every multi-task model shares: the config fields that rebuild its inputs, one fused
embedding lookup for the hashed ids, the encoder of the user's recent events, a declared
dataset's categorical fields and token bags, and the interface that training, fine-tuning and
serving rely on (`forward(user, item, category, dense, sequence, codes, bags)` -> logits
(batch, tasks); `codes` and `bags` only for a model with declared fields)."""

from __future__ import annotations

import itertools
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from shopguide.feature_spec import OTHER_BEHAVIOUR_CODE
from shopguide.model.tasks import AuxTask, log_odds

# Multiplicative hashing spreads raw ids over the buckets; unknown ids need no vocabulary.
_HASH = 2654435761


class ModelConfig(BaseModel):
    """Fields every model needs; each model's config adds a `kind` and its own architecture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: tuple[str, ...]
    dense_features: tuple[str, ...]
    dense_mean: tuple[float, ...]
    dense_std: tuple[float, ...]
    user_buckets: int
    item_buckets: int
    category_buckets: int
    embedding_dim: int
    tower_hidden: tuple[int, ...]
    dropout: float
    aux_tasks: tuple[AuxTask, ...] = ()  # trained beside `tasks`, never served
    # Training positive rate of each binary task: the output biases start at their log-odds.
    # Empty (configs saved before output layers existed): no output layer, as those models.
    base_rates: tuple[float, ...] = ()
    wide: bool = False  # the output layer also has a linear term on the dense features
    # The user's last events in the input (features.sequence_length) and how they are read:
    # din (target attention, the candidate as the query), mean, or none. Models saved before
    # sequences existed have neither.
    sequence_length: int = 0
    sequence_encoder: Literal["din", "mean", "none"] = "none"
    # The ids with rows of their own in the embedding table; the others share one row.
    id_embeddings: tuple[Literal["user", "item", "category"], ...] = ("user", "item", "category")
    # A declared dataset's inputs (shopguide.dataset): categorical fields, each its own
    # `categorical_buckets` rows of one table; token bags (text n-grams, multi-valued fields)
    # pooled from a table of `bag_buckets` rows (row 0: the empty slot): averaged, or with
    # `bag_idf` summed with each token weighed by its inverse document frequency (a buffer
    # set from the training rows, `Encoder.set_idf`) and each bag's weights L2-normalised, as
    # TF-IDF weighs them.
    categorical_features: tuple[str, ...] = ()
    categorical_buckets: int = 10_007
    bag_features: tuple[str, ...] = ()
    bag_buckets: int = 262_144
    bag_idf: bool = False
    # Dense inputs are counts, log1p'd before standardising; False: declared numerics (already
    # transformed as their schema says), standardised as given.
    dense_log1p: bool = True
    # Rows of the per-category task layer (categories hashed to them); 0: none.
    category_task_buckets: int = 0

    def table_buckets(self) -> tuple[int, int, int]:
        """Rows of the user, item and category parts of the embedding table (1: not embedded,
        every id reads the same learned row)."""
        buckets = (self.user_buckets, self.item_buckets, self.category_buckets)
        names = ("user", "item", "category")
        return tuple(
            b if n in self.id_embeddings else 1 for n, b in zip(names, buckets, strict=True)
        )

    def head_names(self) -> tuple[str, ...]:
        """Every task with a head: the binary `tasks`, then the auxiliary ones."""
        return (*self.tasks, *(a.name for a in self.aux_tasks))

    def id_width(self) -> int:
        """Columns of an encoder block taken by the user, item and category embeddings (the
        sequence's summary and the dense features follow them)."""
        return 3 * self.embedding_dim

    def sequence_width(self) -> int:
        """Columns of an encoder block taken by the summary of the user's recent events."""
        if self.sequence_encoder == "none" or not self.sequence_length:
            return 0
        return 2 * self.embedding_dim

    def side_width(self) -> int:
        """Columns of an encoder block taken by the declared categorical fields and bags."""
        return (len(self.categorical_features) + len(self.bag_features)) * self.embedding_dim

    def head_widths(self) -> tuple[int, ...]:
        """Output columns of each head, in `head_names` order."""
        return (1,) * len(self.tasks) + tuple(a.width for a in self.aux_tasks)


class PooledDropout(nn.Module):
    """Inverted dropout whose mask is a random window of a fixed pool of i.i.d. scaled masks.
    Drawing fresh Bernoulli masks costs more CPU than the layers it regularises at these sizes
    (a third of an MMoE step); a window at a random offset costs one multiply. Elements of a
    mask are i.i.d. as with nn.Dropout; masks of different steps are shifted windows of one
    sequence. The pool comes from its own fixed seed and offsets from the global generator,
    so runs stay reproducible under `torch.manual_seed`."""

    _pools: ClassVar[dict[tuple[float, str], torch.Tensor]] = {}  # (p, device) -> pool
    POOL_SEED = 20180722

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def _pool(self, need: int, device: torch.device) -> torch.Tensor:
        key = (self.p, str(device))
        pool = self._pools.get(key)
        if pool is None or pool.numel() < 2 * need:
            size = max(1 << 22, 4 * need)
            keep = torch.rand(size, generator=torch.Generator().manual_seed(self.POOL_SEED))
            pool = ((keep >= self.p).float() / (1 - self.p)).to(device)
            self._pools[key] = pool
        return pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        pool = self._pool(x.numel(), x.device)
        offset = int(torch.randint(0, pool.numel() - x.numel() + 1, ()))
        return x * pool[offset : offset + x.numel()].view_as(x)


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, o in itertools.pairwise(sizes):
        layers += [nn.Linear(i, o), nn.ReLU(), PooledDropout(dropout)]
    return nn.Sequential(*layers)


def parallel_mlps(mlps: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """The outputs (batch, len(mlps), out) of same-shaped `mlp`s on one input, computed as one
    wide matmul for the first layer and one batched matmul per later layer (a few large
    kernels instead of many small ones; the same function as running them one by one)."""
    first = [m[0] for m in mlps]
    h = torch.addmm(torch.cat([f.bias for f in first]), x, torch.cat([f.weight for f in first]).t())
    h = mlps[0][2](torch.relu(h)).unflatten(1, (len(mlps), -1)).transpose(0, 1)  # (E, B, H)
    for i in range(3, len(mlps[0]), 3):
        layers = [m[i] for m in mlps]
        weight = torch.stack([f.weight for f in layers]).transpose(1, 2)  # (E, in, out)
        bias = torch.stack([f.bias for f in layers]).unsqueeze(1)  # (E, 1, out)
        h = mlps[0][i + 2](torch.relu(torch.baddbmm(bias, h, weight)))
    return h.transpose(0, 1)


def tower(in_dim: int, config: ModelConfig, width: int = 1) -> nn.Sequential:
    """A task head: an MLP ending in `width` outputs (one logit for a binary task)."""
    return nn.Sequential(
        mlp([in_dim, *config.tower_hidden], config.dropout),
        nn.Linear(config.tower_hidden[-1] if config.tower_hidden else in_dim, width),
    )


# Ages of the recent events fall into buckets of whole powers of two seconds (1 s to 97 days).
AGE_BUCKETS = 24


class SequencePooling(nn.Module):
    """The user's recent events as one vector. Each event is its item's and category's rows of
    the encoder's table (the same rows a candidate with that item or category gets, so an item
    seen before matches itself) plus embeddings of its behaviour and its age bucket. `din`
    weighs the events by a small MLP of [candidate, event, product, difference] (Deep Interest
    Network, Zhou et al. 2018: sigmoid weights, not normalised, so how much of the history
    matches counts too) and sums them over the sequence length; `mean` averages them."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = 2 * config.embedding_dim
        self.kind = config.sequence_encoder
        self.length = config.sequence_length
        self.behaviour = nn.Embedding(OTHER_BEHAVIOUR_CODE + 1, width, padding_idx=0)
        self.age = nn.Embedding(AGE_BUCKETS + 1, width)
        for table in (self.behaviour, self.age):
            nn.init.normal_(table.weight, std=0.01)
        self.attention = (
            nn.Sequential(nn.Linear(4 * width, 32), nn.ReLU(), nn.Linear(32, 1))
            if self.kind == "din"
            else None
        )

    def forward(
        self, query: torch.Tensor, events: torch.Tensor, sequence: torch.Tensor
    ) -> torch.Tensor:
        """`query` (batch, width) the candidate's item and category rows; `events` (batch,
        length, width) the events' item and category rows; `sequence` the raw input."""
        behaviour, age = sequence[..., 2], sequence[..., 3].clamp_min(0)
        valid = (behaviour > 0).float().unsqueeze(-1)
        bucket = torch.log2(age.float() + 1).floor().long().clamp_max(AGE_BUCKETS)
        events = events + self.behaviour(behaviour) + self.age(bucket)
        if self.attention is None:
            return (events * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        q = query.unsqueeze(1).expand_as(events)
        weight = torch.sigmoid(self.attention(torch.cat([q, events, q * events, q - events], -1)))
        return (weight * valid * events).sum(1) / self.length


class Encoder(nn.Module):
    """Hashed user/item/category embeddings from one table (a single fused lookup per batch),
    the summary of the user's recent events (`SequencePooling`, when the config has one), a
    declared dataset's categorical fields and mean-pooled token bags, and standardised dense
    features (log1p'd counts, or declared numerics as given)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.buckets = config.table_buckets()
        self.embedding = nn.Embedding(sum(self.buckets), config.embedding_dim)
        nn.init.normal_(self.embedding.weight, std=0.01)
        offsets = torch.tensor([0, self.buckets[0], self.buckets[0] + self.buckets[1]])
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("sizes", torch.tensor(self.buckets), persistent=False)
        self.register_buffer("dense_mean", torch.tensor(config.dense_mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(config.dense_std, dtype=torch.float32))
        self.id_width = config.id_width()
        self.dense_width = len(config.dense_features)
        self.sequence = SequencePooling(config) if config.sequence_width() else None
        self.dense_log1p = config.dense_log1p
        fields, buckets = len(config.categorical_features), config.categorical_buckets
        self.fields = nn.Embedding(fields * buckets, config.embedding_dim) if fields else None
        self.register_buffer("field_offsets", torch.arange(fields) * buckets, persistent=False)
        self.bag_idf = config.bag_idf and bool(config.bag_features)
        pool = "sum" if self.bag_idf else "mean"
        self.bags = (
            nn.EmbeddingBag(config.bag_buckets, config.embedding_dim, mode=pool, padding_idx=0)
            if config.bag_features
            else None
        )
        if self.bag_idf:
            self.register_buffer("idf", torch.ones(config.bag_buckets))
        for table in (self.fields, self.bags):
            if table is not None:
                nn.init.normal_(table.weight, std=0.01)
        # With `config.wide`, the bags' tokens also get a linear term per head output (the
        # wide part of Wide & Deep over sparse tokens: a hashed bag-of-n-grams regression
        # that text needs beside the pooled embeddings), carried in the block before `dense`.
        self.wide_width = sum(config.head_widths()) if config.wide and config.bag_features else 0
        self.bag_wide = (
            nn.EmbeddingBag(config.bag_buckets, self.wide_width, mode=pool, padding_idx=0)
            if self.wide_width
            else None
        )
        if self.bag_wide is not None:
            nn.init.zeros_(self.bag_wide.weight)
        # With `config.category_task_buckets`, each category (hashed to one of that many rows)
        # is its own task: per head output a bias and a linear term on the standardised dense
        # features of its own, added to the head's logit. Also carried before `dense`; zero
        # at the start, so the model starts as the one without it.
        heads = sum(config.head_widths())
        self.category_width = heads if config.category_task_buckets else 0
        self.category_task = (
            nn.Embedding(config.category_task_buckets, heads * (self.dense_width + 1))
            if self.category_width
            else None
        )
        if self.category_task is not None:
            nn.init.zeros_(self.category_task.weight)
        self.heads_width = heads
        self.out_dim = (
            self.id_width
            + config.sequence_width()
            + config.side_width()
            + self.wide_width
            + self.category_width
            + self.dense_width
        )

    def token_weights(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """(bags, tokens) L2-normalised IDF weights of the tokens (0 for empty slots); None
        when bags are averaged."""
        if not self.bag_idf:
            return None
        weights = self.idf[tokens] * (tokens > 0)
        return weights / weights.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def set_idf(self, tokens: torch.Tensor) -> None:
        """Inverse document frequencies from the training rows' `bags` (rows, bags, tokens):
        log((1 + bags) / (1 + bags holding the token)) + 1, as scikit-learn smooths them."""
        flat = tokens.flatten(0, 1)
        seen = torch.zeros(self.idf.shape[0], dtype=torch.float64)
        present = flat[flat > 0]
        seen.index_add_(0, present, torch.ones(len(present), dtype=torch.float64))
        idf = torch.log((1.0 + flat.shape[0]) / (1.0 + seen)) + 1.0
        self.idf.copy_(idf.float())

    def tables(self) -> list[nn.Module]:
        """Its embedding tables: the ids', then the declared fields', the bags' and the
        per-category task layer's if any."""
        tables = (self.embedding, self.fields, self.bags, self.bag_wide, self.category_task)
        return [t for t in tables if t is not None]

    def rows(self, user: torch.Tensor, item: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """(..., 3) rows of the fused table that the user, item and category ids hash to."""
        ids = torch.stack([user, item, category], dim=-1)
        return (ids * _HASH) % self.sizes + self.offsets

    def forward(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        category: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        codes: torch.Tensor | None = None,
        bags: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.dense_log1p:
            dense = torch.log1p(dense.clamp_min(0))
        dense = (dense - self.dense_mean) / self.dense_std
        ids = self.embedding(self.rows(user, item, category))  # (batch, 3, dim)
        parts = [ids.flatten(1)]
        if self.sequence is not None:
            seq_item, seq_category = sequence[..., 0], sequence[..., 1]
            # the events' item and category rows (the user slot is unused: any valid id)
            rows = self.rows(seq_item, seq_item, seq_category)[..., 1:]
            events = self.embedding(rows).flatten(2)  # (batch, length, 2 * dim)
            parts.append(self.sequence(ids[:, 1:].flatten(1), events, sequence))
        if self.fields is not None:
            parts.append(self.fields(codes + self.field_offsets).flatten(1))
        if self.bags is not None:  # (batch, bags, tokens): every bag of every row at once
            tokens = bags.flatten(0, 1)
            weights = self.token_weights(tokens)
            # explicit sizes, not -1: an empty batch (a route with no rows) must reshape too
            pooled = self.bags(tokens, per_sample_weights=weights)
            parts.append(pooled.unflatten(0, bags.shape[:2]).flatten(1))
        if self.bag_wide is not None:
            wide = self.bag_wide(tokens, per_sample_weights=weights)
            parts.append(wide.unflatten(0, bags.shape[:2]).sum(1))
        if self.category_task is not None:  # (batch, heads, dense + 1) per row's category
            rows = (category * _HASH) % self.category_task.num_embeddings
            layer = self.category_task(rows).unflatten(1, (self.category_width, -1))
            parts.append(torch.bmm(layer[..., :-1], dense.unsqueeze(2)).squeeze(2) + layer[..., -1])
        return torch.cat([*parts, dense], dim=1)

    def split(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A `forward` output as (id embeddings, standardised dense features)."""
        return block[:, : self.id_width], block[:, block.shape[1] - self.dense_width :]

    def wide(self, block: torch.Tensor) -> torch.Tensor | None:
        """A `forward` output's per-head terms to add to the logits (the token bags' linear
        term, the category's own task layer), summed; None when it has neither."""
        width = self.wide_width + self.category_width
        if not width:
            return None
        end = block.shape[1] - self.dense_width
        return block[:, end - width : end].unflatten(1, (-1, self.heads_width)).sum(1)


class OutputLayer(nn.Module):
    """What every head adds to its tower's logit: a bias that starts at the task's prior
    log-odds (an auxiliary head: its classes' log-shares), and with `config.wide` a linear
    term on the standardised dense features (the "wide" part of Wide & Deep). With positive
    rates of 0.4-2% a zero-initialised bias costs the first epochs of training on learning the
    base rate, by when the towers have begun to memorise ids; the linear term keeps the
    monotone effects of counts that a deep tower trained on few positives loses (measured on
    taobao-mtl-v1, docs/benchmarks.md)."""

    def __init__(self, config: ModelConfig, rates: list[float]) -> None:
        """`rates`: the positive rate each binary head's own output starts at."""
        super().__init__()
        widths = config.head_widths()
        self.dense = (
            nn.Linear(len(config.dense_features), sum(widths), bias=False) if config.wide else None
        )
        if self.dense is not None:
            nn.init.zeros_(self.dense.weight)
        aux = [b for a in config.aux_tasks for b in a.initial_bias()]
        bias = [log_odds(r) for r in rates] + aux
        self.bias = nn.Parameter(torch.tensor(bias, dtype=torch.float32))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """(batch, heads) to add to the logits, from the standardised dense features."""
        if self.dense is None:
            return self.bias
        return self.bias + self.dense(dense)


class MultiTaskModel(nn.Module):
    """Base of every model: `encode` turns raw inputs into the input representation, `heads`
    turns it into one logit per task (`task_logits` of the subclass, from the representation
    and the layer every task reads, `shared_output`, plus the shared output layer, then
    `combine`). GradNorm and MGDA-UB weigh the tasks' gradients on `shared_output`, so each
    task's extra backward pass runs through its own layers only."""

    config: ModelConfig

    def __init__(self, config: ModelConfig, encoders: int = 1) -> None:
        super().__init__()
        self.config = config
        self.encoders = nn.ModuleList(Encoder(config) for _ in range(encoders))
        self.in_dim = self.encoders[0].out_dim
        self.output = OutputLayer(config, self.prior_rates()) if config.base_rates else None

    def prior_rates(self) -> list[float]:
        """The rate each binary head's own output models; a chained task overrides this."""
        return list(self.config.base_rates)

    def encode(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """(batch, encoders * in_dim) from the raw inputs (see `forward`): one block per
        encoder (only the single-task model has more than one)."""
        return torch.cat([e(*inputs) for e in self.encoders], dim=1)

    def blocks(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`encode`'s output `x` as (id embeddings, dense features), one pair per encoder."""
        return [e.split(b) for e, b in zip(self.encoders, x.split(self.in_dim, dim=1), strict=True)]

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """The last activations every task reads, from `encode`'s output `x` (a shared bottom's
        output, MMoE's experts); `x` itself for a model whose tasks share nothing beyond it."""
        return x

    def task_logits(self, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        """The towers' outputs side by side, (batch, sum of `config.head_widths()`), from the
        representation `x` and `shared = shared_output(x)`."""
        raise NotImplementedError

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """Heads computed from other heads' logits (ESMM's chain); others as they are."""
        return logits

    def heads(self, x: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """Every head's outputs side by side, (batch, sum of `config.head_widths()`);
        `shared`: `shared_output(x)` when the caller has it already."""
        logits = self.task_logits(x, self.shared_output(x) if shared is None else shared)
        if self.output is not None:
            first = x[:, : self.in_dim]
            logits = logits + self.output(self.encoders[0].split(first)[1])
            wide = self.encoders[0].wide(first)
            if wide is not None:
                logits = logits + wide
        return self.combine(logits)

    def outputs(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """Every head's outputs from raw inputs, (batch, sum of `config.head_widths()`)."""
        return self.heads(self.encode(*inputs))

    def forward(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        category: torch.Tensor,
        dense: torch.Tensor,
        sequence: torch.Tensor,
        codes: torch.Tensor | None = None,
        bags: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the binary tasks, (batch, tasks): what evaluation, the gate and serving
        use. Ids are raw int64; dense features are raw values (`feature_spec.dense_inputs`);
        `sequence` (batch, length, 4) int64 (`feature_spec.sequence_inputs`); `codes`
        (batch, fields) and `bags` (batch, bags, tokens) int64 (`shopguide.dataset.inputs`)."""
        out = self.outputs(user, item, category, dense, sequence, codes, bags)
        return out[:, : len(self.config.tasks)]

    def shared_modules(self) -> list[nn.Module]:
        """The representation layers (beyond the embeddings) that fine-tuning freezes."""
        return []

    def shared_parameters(self) -> list[nn.Parameter]:
        modules = [self.encoders, *self.shared_modules()]
        return [p for m in modules for p in m.parameters()]

    def shared_representation(self, x: torch.Tensor) -> torch.Tensor:
        """What all tasks read from `encode`'s output `x` before their own layers; adversarial
        transfer makes it indistinguishable between old and new categories."""
        return x

    def shared_width(self) -> int:
        """Columns of `shared_representation`, from the configuration alone."""
        return len(self.encoders) * self.in_dim

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [t.weight for m in self.modules() if isinstance(m, Encoder) for t in m.tables()]

    def set_sparse_embeddings(self, sparse: bool) -> None:
        """Whether the embedding tables emit sparse gradients (for a lazy sparse optimizer)."""
        for m in self.modules():
            if isinstance(m, Encoder):
                for table in m.tables():
                    table.sparse = sparse

    def embedding_square_sum(self, representation: torch.Tensor) -> torch.Tensor:
        """Sum of squares of the embedding rows a batch looked up (`representation` is
        `encode`'s output): the L2 term that keeps the tables' gradients sparse, unlike a
        penalty on whole tables."""
        return sum(ids.pow(2).sum() for ids, _ in self.blocks(representation))

    def penalty(self, logits: torch.Tensor) -> torch.Tensor:
        """A model's own regulariser added to the task losses (zero unless a model needs one);
        `logits` are the heads' outputs."""
        return logits.new_zeros(())

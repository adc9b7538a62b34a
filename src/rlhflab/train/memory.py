"""Peak training memory per process, estimated from a model's config: what each method holds.

A pure calculation (no weights are read; a config is instantiated on the ``meta`` device only to
count its parameters exactly), for ``rlhflab memory`` and the README's table. Everything below
follows what rlhflab's loop (:mod:`rlhflab.train.loop`) actually keeps:

- **Weights, gradients, AdamW.** Weights are stored fp32 (``--dtype float32``); ``--mixed_precision
  bf16`` is autocast, so gradients stay fp32 and AdamW (``torch.optim.AdamW``, fused) keeps two fp32
  moments per trained parameter plus a 4-byte ``step`` per trained tensor: 4 + 4 + 8 bytes per
  trained parameter. LoRA trains only the adapters (r·(d_in + d_out) per linear layer of the
  decoder); the base weights are held, frozen, and the reference is the adapter-disabled model.
- **Autocast.** Under bf16 each linear layer's fp32 weight is cast to bf16 per use, and that copy
  is saved for the backward pass: 2 bytes per linear weight of the trained model, whatever the
  sharding (the copy is of the gathered weight). With checkpointing the copies are recomputed with
  their layer (autocast's cast cache holds them only until the forward's autocast block ends,
  before the backward pass, where the peak is), so the head's and one layer's remain.
- **Activations** (bytes autograd saves per token, Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", Sec. 4.1, counted again for transformers' Llama
  decoder layer as rlhflab runs it: RMSNorm upcasting to fp32, SwiGLU, SDPA, which saves a
  logsumexp per head instead of the a·s² attention matrix of their formula's 5as/h term, padded
  batches so keys and values are saved repeated to every query head, no dropout). Per layer, with
  h the hidden size, q = heads × head_dim, f the MLP width, a the heads:
  fp32: 4·(6h + 4q + 4f + a + 2); bf16 autocast: 26h + 8q + 8f + 4a + 8 (the residual stream and
  the norms stay fp32, and autocast makes one bf16 copy of the normed input per projection).
  With gradient checkpointing only each layer's fp32 input (4h) is kept, and the backward pass
  recomputes one layer at a time (one layer's activations more, at the peak).
- **Tied embeddings.** The embedding's backward makes a dense V x h fp32 gradient before it is
  summed into the output head's (one more V x h fp32 tensor at the end of the backward pass).
- **Logits.** rlhflab's log-probs upcast the logits of the completion positions to fp32
  (B·T·V·4 bytes, saved by the log-softmax) and their gradient is another fp32 tensor of that size:
  often the largest single tensor for a small model with a 49k vocabulary.
- **Sharding.** DDP replicates everything. FSDP (rlhflab's FSDP2 ``fully_shard``, one unit per
  decoder layer and per model) keeps 1/N of the *trained* models' weights, gradients and AdamW
  state, plus what is gathered for compute: the root unit (embeddings, final norm, head: FSDP2
  does not reshard the root between forward and backward) and two decoder layers (the one
  computing and the one prefetched), and the unsharded gradients of the root and of one layer
  before their reduce-scatter. Frozen models (reference, reward model) are not sharded by
  rlhflab. ZeRO-3 partitions the same three things the same way, so its column is FSDP's (rlhflab
  runs it for SFT, reward and the DPO family: ``accelerate launch --use_deepspeed --zero_stage 3``).

The total is the sum of the components: an upper bound on the true peak, which comes during the
backward pass while gradients are built as saved activations are freed (allocator slack and
communication buffers are not counted). Left out: the rollout phase of the RL methods (the
sampling key/value cache), which precedes the update rather than adding to it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from rlhflab.errors import ConfigError
from rlhflab.models.registry import resolve_model

GIB = 1024**3
FP32, BF16 = 4, 2

# Published config dimensions of the sizes the README tabulates (their config.json on the hub), so
# that an estimate needs no download. SmolLM2-135M is also the repo's offline policy.
PUBLISHED_CONFIGS: dict[str, dict] = {
    "smollm2-135m-instruct": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "smollm2-1.7b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
}
MODEL_ALIASES = {"smollm2-135m": "smollm2-135m-instruct", "smollm2-1.7b-instruct": "smollm2-1.7b"}
# Decoders whose layer is the Llama layer the activation count above describes.
LLAMA_LAYER_MODELS = ("llama", "mistral", "qwen2")
STRATEGIES = ("ddp", "fsdp", "zero3")


@dataclass(frozen=True)
class Method:
    """How a method runs on the loop, as far as memory goes."""

    rows_per_example: int  # sequences through the trained model per example (DPO: chosen and rejected)
    lm_head: bool  # log-probs over the vocabulary (False: a reward model's scalar score)
    reference: bool  # a frozen pi_ref (a second copy unless LoRA or precomputed log-probs)
    reward_model: bool  # a frozen reward model scores rollouts
    critic: bool  # a value function (ppo, a2c)
    reference_precomputable: bool = False  # the DPO family caches pi_ref's log-probs before training


_DPO = Method(2, True, True, False, False, reference_precomputable=True)
_ONLINE = Method(1, True, True, True, False)
METHODS: dict[str, Method] = {
    "sft": Method(1, True, False, False, False),
    "reward": Method(2, False, False, False, False),
    "dpo": _DPO,
    "ipo": _DPO,
    "cdpo": _DPO,
    "rdpo": _DPO,
    "kto": _DPO,  # (example, mismatched example): 2 rows as well
    "slic": Method(2, True, False, False, False),
    "ppo": dataclasses.replace(_ONLINE, critic=True),
    "a2c": dataclasses.replace(_ONLINE, critic=True),
    "reinforce": _ONLINE,
    "rloo": _ONLINE,
    "grpo": _ONLINE,
}


@dataclass(frozen=True)
class ModelShape:
    """A decoder's dimensions and its exact parameter counts (from the meta-device instantiation)."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied: bool
    causal_lm_params: int  # AutoModelForCausalLM, tied weights once
    causal_lm_tensors: int
    classifier_params: int  # AutoModelForSequenceClassification, one label (a reward model)
    classifier_tensors: int
    trunk_params: int  # AutoModel (a separate critic's trunk)
    trunk_tensors: int
    layer_params: int  # one decoder layer
    layer_linear_weights: int  # weights of one layer's linear maps (what autocast casts)
    layer_linears: int  # how many linear maps a layer has
    lora_params_per_rank: int  # sum over one layer's linear maps of (d_in + d_out)

    @property
    def lm_head_weights(self) -> int:
        return self.vocab_size * self.hidden_size


def _config(name: str):
    """A transformers config: a published size by name, else the config a registry name, hub id
    or directory resolves to (offline: from the local cache)."""
    from transformers import AutoConfig, LlamaConfig

    key = MODEL_ALIASES.get(name.lower(), name.lower())
    if key in PUBLISHED_CONFIGS:
        return LlamaConfig(**PUBLISHED_CONFIGS[key])
    try:
        return AutoConfig.from_pretrained(resolve_model(name))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--model {name}: no config ({first}); give {', '.join(PUBLISHED_CONFIGS)}, a registry name or a model directory"
        ) from None


def _count(model) -> tuple[int, int]:
    params = list(model.parameters())  # tied weights once, as the optimiser sees them
    return sum(p.numel() for p in params), len(params)


@functools.lru_cache(maxsize=16)
def model_shape(name: str) -> ModelShape:
    """The dimensions and parameter counts of ``name`` (see :func:`_config`)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _config(name)
    model_type = getattr(config, "model_type", "?")
    if model_type not in LLAMA_LAYER_MODELS:
        raise ConfigError(
            f"--model {name}: a {model_type} model; the activation count covers Llama-style decoders "
            f"({', '.join(LLAMA_LAYER_MODELS)})"
        )
    values = {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id")}
    config = config.__class__.from_dict({**values, "num_labels": 1, "pad_token_id": 0})
    with torch.device("meta"):
        causal = AutoModelForCausalLM.from_config(config)
        classifier = AutoModelForSequenceClassification.from_config(config)
        trunk = AutoModel.from_config(config)
    layer = causal.model.layers[0]
    linears = [m for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    heads = config.num_attention_heads
    return ModelShape(
        name=name,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab_size=config.vocab_size,
        tied=bool(getattr(config, "tie_word_embeddings", False)),
        causal_lm_params=_count(causal)[0],
        causal_lm_tensors=_count(causal)[1],
        classifier_params=_count(classifier)[0],
        classifier_tensors=_count(classifier)[1],
        trunk_params=_count(trunk)[0],
        trunk_tensors=_count(trunk)[1],
        layer_params=_count(layer)[0],
        layer_linear_weights=sum(m.weight.numel() for m in linears),
        layer_linears=len(linears),
        lora_params_per_rank=sum(m.in_features + m.out_features for m in linears),
    )


# ---- activations ---------------------------------------------------------------------------------
def layer_activation_bytes_per_token(shape: ModelShape, mixed_precision: str) -> int:
    """Bytes one decoder layer saves for backward per token (module docstring's count)."""
    h, f, a = shape.hidden_size, shape.intermediate_size, shape.num_heads
    q = a * shape.head_dim
    if mixed_precision == "bf16":
        return 26 * h + 8 * q + 8 * f + 4 * a + 8
    return FP32 * (6 * h + 4 * q + 4 * f + a + 2)


def saved_for_backward_bytes(
    shape: ModelShape,
    rows: int,
    seq_len: int,
    head_positions: int,
    mixed_precision: str,
    gradient_checkpointing: bool,
) -> int:
    """Bytes autograd saves during one training forward of ``rows`` sequences of ``seq_len`` tokens
    whose last ``head_positions`` positions go through the LM head (0: a scalar-score model),
    parameters themselves excluded: what :func:`torch.autograd.graph.saved_tensors_hooks` sees.
    Includes the bf16 weight copies autocast saves (:func:`autocast_weight_bytes` counts them as
    held); the logits' fp32 upcast is counted once, without its gradient."""
    h, tokens = shape.hidden_size, rows * seq_len
    bf16 = mixed_precision == "bf16"
    if gradient_checkpointing:
        layers = shape.num_layers * tokens * FP32 * h  # each layer's input: the fp32 residual stream
    else:
        layers = shape.num_layers * tokens * layer_activation_bytes_per_token(shape, mixed_precision)
    # final norm (input, normalised, and the head's input: fp32 over all positions, or a bf16 cast of the kept ones)
    final_norm = tokens * (FP32 * 2 * h + FP32) + (rows * head_positions * BF16 * h if bf16 else tokens * FP32 * h)
    mask = rows * seq_len * seq_len  # the padded batch's boolean (B, 1, S, S) attention mask, shared by all layers
    inputs = tokens * 8 + (0 if gradient_checkpointing else mask + tokens * 2 * FP32 * shape.head_dim)
    logits = logit_bytes(shape, rows, head_positions, mixed_precision)
    weights = saved_weight_copy_bytes(shape, bool(head_positions), mixed_precision, gradient_checkpointing)
    return layers + final_norm + inputs + logits + weights


def saved_weight_copy_bytes(shape: ModelShape, head: bool, mixed_precision: str, gradient_checkpointing: bool) -> int:
    """The bf16 weight copies among the saved tensors: every linear layer's, or with checkpointing
    only the head's (the layers' are recomputed with the layers)."""
    if mixed_precision != "bf16":
        return 0
    layers = 0 if gradient_checkpointing else shape.num_layers * shape.layer_linear_weights
    return BF16 * (layers + (shape.lm_head_weights if head else 0))


def logit_bytes(shape: ModelShape, rows: int, head_positions: int, mixed_precision: str) -> int:
    """The fp32 logits the log-probs are taken from, with the log-softmax's row sums and the
    gathered tokens' indices (rlhflab keeps T + 1 head positions and upcasts the T it uses)."""
    if not head_positions:
        return 0
    kept = head_positions - 1 if mixed_precision == "bf16" else head_positions
    return rows * (kept * shape.vocab_size * FP32 + (head_positions - 1) * (FP32 + 8))


def autocast_weight_bytes(shape: ModelShape, gradient_checkpointing: bool, head: bool) -> int:
    """bf16 copies of the trained model's linear weights held at the backward pass's peak: all of
    them (saved for backward), or with checkpointing the head's and one recomputed layer's (the
    copies autocast cached during the forward are dropped when the loss's autocast block ends)."""
    head_bytes = BF16 * shape.lm_head_weights if head else 0
    layers = 1 if gradient_checkpointing else shape.num_layers
    return head_bytes + BF16 * layers * shape.layer_linear_weights


class SavedTensorBytes:
    """Bytes autograd saves for backward while the block runs: the unique storages that
    :func:`torch.autograd.graph.saved_tensors_hooks` is handed, less those of ``exclude``'s
    parameters (weights are held anyway). The measurement the estimate is checked against.

        with SavedTensorBytes(model) as saved:
            loss = ...
        saved.bytes"""

    def __init__(self, exclude=None):
        self.skip = {p.untyped_storage().data_ptr() for p in exclude.parameters()} if exclude is not None else set()
        self.storages: dict[int, int] = {}

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.skip:
            self.storages.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    def __enter__(self):
        import torch

        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


# ---- the estimate --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryRequest:
    """One training configuration to estimate (per micro-batch, fp32 weights)."""

    model: str
    method: str = "sft"
    num_processes: int = 1
    strategy: str = "ddp"
    batch_size: int = 8  # examples (RL: sampled sequences) per micro-batch across all processes
    max_length: int = 512  # tokens per sequence, prompt + completion
    completion_length: int = 0  # tokens that carry the loss (0: all but the first)
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    lora_r: int = 0
    critic: str = "shared"  # ppo, a2c: a value head on the policy, or a separate value model
    precompute_reference: bool = True  # DPO family: pi_ref's log-probs cached, the model dropped
    reward_model: str | None = None  # RL: the reward model's size (default: the policy's)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method}: unknown; choose from {', '.join(METHODS)}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy {self.strategy}: unknown; choose from {', '.join(STRATEGIES)}")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"--mixed_precision {self.mixed_precision}: the estimate covers no and bf16")
        for name in ("num_processes", "batch_size", "max_length"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.lora_r < 0 or self.completion_length < 0:
            raise ConfigError("--lora_r and --completion_length must be non-negative")
        if self.completion_length >= self.max_length:
            raise ConfigError(
                f"--completion_length {self.completion_length} leaves no prompt token in --max_length {self.max_length}"
            )
        if self.critic not in ("shared", "separate"):
            raise ConfigError(f"--critic {self.critic}: choose shared or separate")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process by component, and what one micro-batch is on each process."""

    request: MemoryRequest
    components: dict[str, int]
    rows_per_process: int
    trained_params: int
    saved_for_backward: int

    @property
    def total(self) -> int:
        return sum(self.components.values())


def estimate_memory(request: MemoryRequest) -> MemoryEstimate:
    """Peak memory per process of one optimiser step of ``request`` (module docstring)."""
    request.validate()
    r, method = request, METHODS[request.method]
    shape = model_shape(r.model)
    lora = r.lora_r > 0
    sharded = r.strategy in ("fsdp", "zero3") and r.num_processes > 1
    n = r.num_processes if sharded else 1
    rows = math.ceil(r.batch_size / r.num_processes) * method.rows_per_example
    head_positions = (r.completion_length or r.max_length - 1) + 1 if method.lm_head else 0
    checkpointing = r.gradient_checkpointing
    bf16 = r.mixed_precision == "bf16"

    # The trained models: (parameters held, parameters trained, trained tensors) of each.
    main_params = shape.causal_lm_params if method.lm_head else shape.classifier_params
    main_tensors = shape.causal_lm_tensors if method.lm_head else shape.classifier_tensors
    if lora:
        trained = r.lora_r * shape.lora_params_per_rank * shape.num_layers
        trained_tensors = 2 * shape.layer_linears * shape.num_layers
        if not method.lm_head:  # the fresh score head trains in full beside the adapters
            trained, trained_tensors = trained + shape.hidden_size, trained_tensors + 1
        models = [(main_params + trained, trained, trained_tensors)]
    else:
        models = [(main_params, main_params, main_tensors)]
    critic_separate = method.critic and r.critic == "separate"
    if method.critic:
        value_head = shape.hidden_size + 1
        if critic_separate:
            models.append((shape.trunk_params + value_head,) * 2 + (shape.trunk_tensors + 2,))
        else:
            held, train, tensors = models[0]
            models[0] = (held + value_head, train + value_head, tensors + 2)
    held = sum(m[0] for m in models)
    trained = sum(m[1] for m in models)
    tensors = sum(m[2] for m in models)

    components = {"weights (fp32)": FP32 * math.ceil(held / n)}
    if sharded:
        root = main_params - shape.num_layers * shape.layer_params
        gathered = 2 * root + 3 * shape.layer_params if not lora else root + 2 * shape.layer_params
        components["FSDP gathered: root unit + 2 layers, their unsharded grads"] = FP32 * gathered
    components["gradients (fp32)"] = FP32 * math.ceil(trained / n)
    if shape.tied and method.lm_head and not lora:
        # the embedding's backward makes a dense V x h gradient, then summed into the tied head's
        components["tied-embedding gradient buffer"] = FP32 * shape.lm_head_weights
    components["AdamW moments + step (fp32)"] = 2 * FP32 * math.ceil(trained / n) + FP32 * tensors

    frozen = 0
    if method.reference and not lora and not (method.reference_precomputable and r.precompute_reference):
        frozen += shape.causal_lm_params
    if method.reward_model:
        frozen += model_shape(r.reward_model or r.model).classifier_params
    components["frozen models (fp32: reference, reward model)"] = FP32 * frozen

    if bf16:
        copies = autocast_weight_bytes(shape, checkpointing, method.lm_head)
        if critic_separate:
            copies += autocast_weight_bytes(shape, checkpointing, False)
        components["autocast bf16 weight copies"] = copies

    seq = r.max_length
    saved = saved_for_backward_bytes(shape, rows, seq, head_positions, r.mixed_precision, checkpointing)
    logits = logit_bytes(shape, rows, head_positions, r.mixed_precision)
    # (the weight copies and logits among the saved tensors are their own components)
    activations = saved - logits - saved_weight_copy_bytes(shape, method.lm_head, r.mixed_precision, checkpointing)
    if critic_separate:
        activations += saved_for_backward_bytes(shape, rows, seq, 0, r.mixed_precision, checkpointing)
        activations -= saved_weight_copy_bytes(shape, False, r.mixed_precision, checkpointing)
    components["activations (saved for backward)"] = activations
    if checkpointing:
        components["one layer recomputed (checkpointing)"] = (
            rows * seq * layer_activation_bytes_per_token(shape, r.mixed_precision)
        )
    components["logits (fp32) and their gradient"] = 2 * logits
    return MemoryEstimate(r, components, rows, trained, saved)


# ---- tables --------------------------------------------------------------------------------------
def gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def format_estimate(estimate: MemoryEstimate) -> str:
    """One estimate as a component → GiB table (markdown)."""
    r = estimate.request
    shape = model_shape(r.model)
    params = shape.causal_lm_params if METHODS[r.method].lm_head else shape.classifier_params
    lines = [
        f"{r.method} on {r.model} ({params / 1e6:,.1f}M parameters, {estimate.trained_params / 1e6:,.1f}M trained), "
        f"{r.strategy} over {r.num_processes} process{'es' if r.num_processes > 1 else ''}: "
        f"{estimate.rows_per_process} sequences x {r.max_length} tokens per process, "
        f"mixed_precision {r.mixed_precision}, gradient_checkpointing {r.gradient_checkpointing}"
        + (f", LoRA r={r.lora_r}" if r.lora_r else ""),
        "",
        "| component | GiB per process |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {gib(value)} |" for name, value in estimate.components.items()]
    lines.append(f"| **total (sum: an upper bound on the peak)** | **{gib(estimate.total)}** |")
    return "\n".join(lines)


TABLE_MODELS = ("smollm2-135m-instruct", "smollm2-1.7b", "llama-3.1-8b")
TABLE_METHODS = ("sft", "reward", "dpo", "ppo", "grpo")


def format_table(base: MemoryRequest) -> str:
    """The README table: each size x method, under DDP, FSDP and ZeRO-3 over ``base.num_processes``,
    as total GiB per process (weights + grads + AdamW | activations incl. logits)."""
    head = (
        f"Peak GiB per process, {base.num_processes} processes, {base.batch_size} examples per micro-batch across "
        f"them, {base.max_length} tokens, mixed_precision {base.mixed_precision}, gradient_checkpointing "
        f"{base.gradient_checkpointing}; each cell: total (weights+grads+AdamW / activations+logits)."
    )
    lines = [head, "", "| model | method | DDP | FSDP | ZeRO-3 (= FSDP) |", "|---|---|---:|---:|---:|"]
    for model in TABLE_MODELS:
        for method in TABLE_METHODS:
            cells = []
            for strategy in ("ddp", "fsdp", "zero3"):
                e = estimate_memory(dataclasses.replace(base, model=model, method=method, strategy=strategy))
                state = sum(v for k, v in e.components.items() if k.split()[0] in ("weights", "gradients", "AdamW"))
                acts = sum(v for k, v in e.components.items() if k.split()[0] in ("activations", "one", "logits"))
                cells.append(f"{gib(e.total)} ({gib(state)} / {gib(acts)})")
            lines.append(f"| {model} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

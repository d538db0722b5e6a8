"""HiDream-I1 (HiDreamImageTransformer2DModel): double-stream then single-stream blocks with
mixture-of-experts feed-forwards, text from T5 and from 32 Llama-3.1 hidden states.

Signal (upstream TeaCache4HiDream-I1): ``t_embedder(timesteps)``, the timestep embedding
alone (the pooled-text embedding ``p_embedder`` is added to it after the signal is taken).
Its rows are equal, so the one ratio over the batched CFG call is the ratio of one row.
One state per call: HiDreamImagePipeline batches [uncond, cond] into one unnamed call.
Forced: the first ``ceil(0.1 N)`` calls (upstream compares ``cnt < 0.1 * N`` in floating
point: 3 calls at 25 or 28 steps, 5 at 50); the last call is not forced.
Cached: the image-token residual through all double and single blocks (the text stream is
not cached: nothing after the blocks reads it); ``final_layer`` and the unpatchify always run.

Graphs:
- context: what a generation keeps fixed: the 48 (per block) Llama projections, the T5
  projection, and the pooled-text embedding;
- embed: patchify + ``x_embedder``, the timestep embedding (the signal), ``temb``, and the
  image tokens' rotary table;
- blocks: the model's block loop; each MoE feed-forward runs every expert on every token and
  weights it by its gate (zero for the experts the router did not pick), which equals the
  model's eval-mode routing (``moe_infer``: argsort, a host ``bincount`` and a Python loop
  over experts) without data-dependent shapes; the routed experts cost
  ``num_routed_experts / num_activated_experts`` (4/2 = 2x) their routed FLOPs;
- head: ``final_layer`` and the unpatchify.

Square latents only: the model pads non-square latents to ``max_resolution`` tokens and masks
the padding (``hidden_states_masks``), another sequence length and another graph; they are
refused with the sizes to use.  The model builds its rotary table in float64 (TensorRT has no
float64): here each axis' table is computed once, with the model's own ``rope`` in float64,
and stored in fp32 as the model casts it, then gathered by patch row and column: the same
values, up to ``max_resolution`` (the axes are clamped to it).
"""
from __future__ import annotations

import contextlib
from typing import ClassVar

import torch

from ..errors import TeaCacheError
from .base import AxisLimit, Family, ForcedSteps, Part, TimestepScale, Variant, criterion_sums
from .inputs import Axis, Input
from .registry import register

# Inputs a caller may pass that this export does not take (the model's pre-patchified path).
PATCHIFIED_KWARGS = ("img_ids", "img_sizes", "hidden_states_masks")


def dense_moe(ff, x: torch.Tensor) -> torch.Tensor:
    """MOEFeedForwardSwiGLU's eval-mode output with every expert run on every token.

    The router (the model's own gate) picks ``top_k`` experts per token with their weights;
    expert ``e`` is added with its weight where it was picked and with weight 0 elsewhere, in
    increasing expert order as ``moe_infer`` adds them: the same sums (adding 0 leaves a float
    unchanged; an expert's matmul over all rows may round its last bit differently from one
    over its routed rows), and no shape that depends on the routing.
    """
    topk_idx, topk_weight, _ = ff.gate(x)
    flat = x.reshape(-1, x.shape[-1])
    experts = torch.arange(len(ff.experts), device=x.device)
    # (tokens, k, experts) one-hot of the picks, times their weights, summed over k.
    picked = (topk_idx.unsqueeze(-1) == experts).to(topk_weight.dtype)
    gates = (picked * topk_weight.unsqueeze(-1)).sum(dim=1)
    y = torch.zeros_like(flat)
    for e, expert in enumerate(ff.experts):
        y = y + expert(flat) * gates[:, e:e + 1].to(flat.dtype)
    return y.view(x.shape) + ff.shared_experts(x)


@contextlib.contextmanager
def dense_experts(model):
    """Within: the model's MoE feed-forwards run as :func:`dense_moe` (instance attributes,
    restored on exit; the class and other instances are untouched)."""
    from diffusers.models.transformers.transformer_hidream_image import MOEFeedForwardSwiGLU

    moes = [m for m in model.modules() if isinstance(m, MOEFeedForwardSwiGLU)]
    for m in moes:
        m.forward = (lambda x, ff=m: dense_moe(ff, x))
    try:
        yield
    finally:
        for m in moes:
            del m.forward


class RotaryTables(torch.nn.Module):
    """The rotary table of image tokens at patch (row, col), as the model computes it.

    The model's ``pe_embedder`` applies ``rope`` (float64, cast to fp32) to each axis of the
    position ids and concatenates: axis 0 is 0 for every image and text token, axes 1 and 2 are
    the patch row and column.  Each axis' table over the positions ``max_resolution`` allows is
    computed here once by that same function, and gathered per token.
    """

    def __init__(self, model):
        super().__init__()
        from diffusers.models.transformers.transformer_hidream_image import rope

        cfg = model.config
        p = cfg.patch_size
        self.positions = max(cfg.max_resolution) // p
        pos = torch.arange(self.positions, dtype=torch.float64)[None, :]
        theta = model.pe_embedder.theta
        dims = list(model.pe_embedder.axes_dim)
        tables = [rope(pos, d, theta)[0] for d in dims]  # (positions, d/2, 2, 2) fp32 each
        self.register_buffer("axis0", tables[0][:1], persistent=False)  # position 0 only
        self.register_buffer("rows", tables[1], persistent=False)
        self.register_buffer("cols", tables[2], persistent=False)
        # Text tokens sit at position 0 on every axis.
        self.register_buffer("text", torch.cat([t[0] for t in tables], dim=0), persistent=False)

    def image(self, rows: int, cols: int) -> torch.Tensor:
        """(1, rows*cols, 1, head_rope/2, 2, 2): the image tokens in the model's order."""
        r = torch.arange(rows, device=self.rows.device)[:, None].expand(rows, cols).flatten()
        c = torch.arange(cols, device=self.cols.device)[None, :].expand(rows, cols).flatten()
        n = r.shape[0]
        table = torch.cat([self.axis0.expand(n, -1, -1, -1), self.rows[r], self.cols[c]], dim=1)
        return table[None, :, None]


class HiDreamContext(Part):
    """What a generation keeps fixed: the caption projections and the pooled embedding."""

    input_names = ("encoder_hidden_states_t5", "encoder_hidden_states_llama3", "pooled_embeds")
    output_names = ("t5_text", "llama_text", "pooled_temb")

    def forward(self, encoder_hidden_states_t5, encoder_hidden_states_llama3, pooled_embeds):
        m = self.model
        proj = m.caption_projection
        # One projected Llama state per block, batch first: (B, blocks, L, D).
        llama = torch.stack([proj[i](encoder_hidden_states_llama3[k])
                             for i, k in enumerate(m.config.llama_layers)], dim=1)
        return proj[-1](encoder_hidden_states_t5), llama, m.p_embedder(pooled_embeds)


class HiDreamEmbed(Part):
    input_names = ("hidden_states", "timestep", "pooled_temb", "prev_signal")
    output_names = ("hidden", "temb", "image_rotary", "signal", "l1_diff", "l1_prev")

    def __init__(self, model):
        super().__init__(model)
        self.tables = RotaryTables(model)

    def forward(self, hidden_states, timestep, pooled_temb, prev_signal):
        m = self.model
        p = m.config.patch_size
        b, c, height, width = hidden_states.shape
        # The model's patchify of square latents (no padding, no mask); its own method also
        # builds position ids with torch.tensor(sizes), which ties the batch to a traced size.
        tokens = hidden_states.reshape(b, c, height // p, p, width // p, p).permute(0, 2, 4, 3, 5, 1)
        hidden = m.x_embedder(tokens.reshape(b, (height // p) * (width // p), p * p * c))
        t = m.t_embedder(timestep, hidden_states.dtype)
        temb = t + pooled_temb
        image_rotary = self.tables.image(height // p, width // p)
        l1_diff, l1_prev = criterion_sums(t, prev_signal)
        return hidden, temb, image_rotary, t, l1_diff, l1_prev


class HiDreamBlocks(Part):
    input_names = ("hidden", "temb", "image_rotary", "t5_text", "llama_text")
    output_names = ("residual",)

    def __init__(self, model):
        super().__init__(model)
        self.tables = RotaryTables(model)

    def forward(self, hidden, temb, image_rotary, t5_text, llama_text):
        m = self.model
        blocks = llama_text.shape[1]
        # Rotary table over [image, T5, Llama (last block's), Llama (this block's)] tokens:
        # the text tokens sit at position 0.
        text = t5_text.shape[1] + 2 * llama_text.shape[2]
        rotary = torch.cat([image_rotary, self.tables.text.expand(1, text, 1, -1, -1, -1)], dim=1)
        h = hidden
        initial = torch.cat([t5_text, llama_text[:, blocks - 1]], dim=1)
        fixed = initial.shape[1]
        k = 0
        with dense_experts(m):
            for block in m.double_stream_blocks:
                h, initial = block(hidden_states=h, hidden_states_masks=None,
                                   encoder_hidden_states=torch.cat([initial, llama_text[:, k]], dim=1),
                                   temb=temb, image_rotary_emb=rotary)
                initial = initial[:, :fixed]
                k += 1
            image = h.shape[1]
            h = torch.cat([h, initial], dim=1)
            joint = h.shape[1]
            for block in m.single_stream_blocks:
                h = block(hidden_states=torch.cat([h, llama_text[:, k]], dim=1), hidden_states_masks=None,
                          encoder_hidden_states=None, temb=temb, image_rotary_emb=rotary)
                h = h[:, :joint]
                k += 1
        return h[:, :image] - hidden


class HiDreamHead(Part):
    # hidden_states (the model's latent input) only lends its size to the unpatchify.
    input_names = ("hidden_states", "hidden", "residual", "temb")
    output_names = ("output",)

    def forward(self, hidden_states, hidden, residual, temb):
        m = self.model
        b, _, height, width = hidden_states.shape
        p, channels = m.config.patch_size, m.out_channels
        out = m.final_layer(hidden + residual, temb)
        # The model's per-sample unpatchify; every sample has the same (rows, cols) here.
        out = out.reshape(b, height // p, width // p, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, channels, height, width)


@register
class HiDream(Family):
    name = "hidream"
    class_name = "HiDreamImageTransformer2DModel"
    inputs = (
        Input("hidden_states", ("batch", "in_channels", "size", "size"), "latents"),
        # fp32 at every precision: the scheduler's timesteps (UniPC int64, FlowMatchEuler fp32),
        # which the model embeds in fp32
        Input("timestep", ("batch",), "timestep", dtype=torch.float32),
        Input("encoder_hidden_states_t5", ("batch", "t5_seq", "t5_dim")),
        # (Llama layers, B, L, D): the pipeline stacks the hidden states with batch on dim 1
        Input("encoder_hidden_states_llama3", ("llama_states", "batch", "llama_seq", "llama_dim")),
        Input("pooled_embeds", ("batch", "text_emb_dim")),
    )
    # The model's keyword is ``timesteps``; ``timestep`` (the graph input) is accepted too, as
    # the tools pass graph names.
    forward_kwargs = ("hidden_states", "timesteps", "timestep", "encoder_hidden_states_t5",
                      "encoder_hidden_states_llama3", "pooled_embeds", *PATCHIFIED_KWARGS)
    variants: ClassVar = {
        "HiDream-I1-Full": Variant(
            "HiDream-I1-Full",
            (-3.13605009e4, -7.12425503e2, 4.91363285e1, 8.26515490, 1.08053901e-1),
            # Upstream: 0.17 -> 1.5x, 0.25 -> 1.7x, 0.3 -> 2x, 0.45 -> 2.6x (its script runs
            # 0.3).  The default is the lowest published setting, as for the other families.
            default_threshold=0.17,
            forced=ForcedSteps(first=0, last=False, first_fraction=0.1),
        ),
    }
    # HiDream-I1 at 1024x1024 (128x128 latents, 2x2 patches = its max_resolution, 4096 image
    # tokens): the pipeline rescales every request to that area. T5 and Llama prompts are
    # 128 tokens (max_sequence_length).
    axes = (
        Axis("batch", 1, 2, 4, help="batch size: CFG doubles it (the pipeline batches uncond and cond)"),
        Axis("size", 2, 128, 128, multiple_of=2,
             help="latent height = width (pixels/8; square only), at most max_resolution"),
        Axis("t5_seq", 1, 128, 128, help="T5 tokens (max_sequence_length=128)"),
        Axis("llama_seq", 1, 128, 128, help="Llama-3.1 tokens (max_sequence_length=128)"),
    )
    signal = "t_embedder(timesteps), the timestep embedding without the pooled text"
    signal_dims = {0: "batch"}
    signal_block_count = "num_layers"  # the rotary and the block loop assume double blocks first
    cached = ("hidden_states",)
    coefficients_source = "upstream TeaCache4HiDream-I1 (HiDream-I1-Full)"
    note = ("The image-token residual through all double and single blocks is cached. The MoE "
            "feed-forwards run every expert and weight it by its gate (0 where not routed): equal "
            "to the model's routing, at num_routed_experts/num_activated_experts times the routed "
            "experts' FLOPs. Square latents only.")
    timestep_scale = TimestepScale("flow", 1000.0)  # the pipeline passes the scheduler's sigma * 1000

    @classmethod
    def check_config(cls, config):
        blocks = (config.get("num_layers") or 0) + (config.get("num_single_layers") or 0)
        layers = config.get("llama_layers") or []
        if len(layers) != blocks:
            raise TeaCacheError(
                f"HiDreamImageTransformer2DModel config has {len(layers)} llama_layers for "
                f"num_layers + num_single_layers = {blocks} blocks: the model projects one Llama "
                f"state per block, so the two must match (the checkpoints have 48 and 48)"
            )
        if not config.get("patch_size"):
            raise TeaCacheError("HiDreamImageTransformer2DModel config has no patch_size: set it (2)")
        super().check_config(config)

    @classmethod
    def axes_for(cls, config):
        p = config["patch_size"]
        limit = min(config.get("max_resolution") or (128, 128))
        limit -= limit % p
        batch, size, t5, llama = cls.axes
        return (batch, Axis("size", p, min(size.opt, limit), limit, p,
                            f"{size.help} ({limit} for this config)"), t5, llama)

    @classmethod
    def axis_limits(cls, config):
        sizes = tuple(config.get("max_resolution") or (128, 128))
        return {"size": AxisLimit(min(sizes), "max_resolution", list(sizes),
                                  "the rotary tables the graphs gather from cover max_resolution latents")}

    @classmethod
    def parts(cls, model, variant=None):
        return {"context": HiDreamContext(model), "embed": HiDreamEmbed(model), "blocks": HiDreamBlocks(model),
                "head": HiDreamHead(model)}

    @classmethod
    def pipeline_attributes(cls, config):
        # HiDreamImagePipeline reads transformer.max_seq for its scheduler shift.
        return {"max_seq": config["max_resolution"][0] * config["max_resolution"][1] // config["patch_size"] ** 2}

    @classmethod
    def config_sizes(cls, config):
        t5_dim, llama_dim = config["caption_channels"]
        return {**super().config_sizes(config), "t5_dim": t5_dim, "llama_dim": llama_dim,
                "llama_states": max(config["llama_layers"]) + 1}

    @classmethod
    def example_inputs(cls, config, dims, dtype, seed=0):
        limit = min(config.get("max_resolution") or (128, 128))
        if dims["size"] > limit:
            raise TeaCacheError(
                f"size={dims['size']}: this HiDream config's max_resolution is {tuple(config['max_resolution'])} "
                f"latents, which its rotary table covers; use --axis size=MIN:OPT:MAX with MAX <= {limit}"
            )
        return super().example_inputs(config, dims, dtype, seed)

    @classmethod
    def feed_from_kwargs(cls, kwargs):
        given = [k for k in PATCHIFIED_KWARGS if kwargs.get(k) is not None]
        if given:
            raise TeaCacheError(
                f"{', '.join(given)} given: the exported HiDream graphs take unpatchified square latents "
                f"(batch, channels, size, size) and patchify them themselves; pass hidden_states only"
            )
        hidden = kwargs["hidden_states"]
        if hidden.ndim != 4 or hidden.shape[-2] != hidden.shape[-1]:
            raise TeaCacheError(
                f"hidden_states has shape {tuple(hidden.shape)}: the exported HiDream graphs take square "
                f"latents (batch, channels, size, size). The model pads non-square latents to "
                f"max_resolution tokens with a mask, which is not exported; generate a square image "
                f"(HiDreamImagePipeline height == width)"
            )
        if kwargs.get("timesteps") is not None:  # the model's keyword for the graph's timestep
            kwargs = {**kwargs, "timestep": kwargs["timesteps"]}
        return super().feed_from_kwargs(kwargs)

    @classmethod
    def kwargs_from_feed(cls, feed):
        kwargs = dict(feed)
        kwargs["timesteps"] = kwargs.pop("timestep")
        return kwargs


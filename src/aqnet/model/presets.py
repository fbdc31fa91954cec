"""Model configuration and presets.

:class:`ModelConfig` is the complete, plain-typed description of a :class:`Forecaster`; it
round-trips through :meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict` so checkpoints can
store it. Presets are small functions that tests, the demo and the pipeline share:

* :func:`tiny` - a fast CPU model for the demo grid (32 x 64) and the test grid (16 x 32);
* :func:`paper` - the published baseline: 128 x 256 grid, patch 2, 15 variables, embed 768,
  depth 6, 8 heads, a 3-layer head;
* :func:`from_pipeline_config` - the model of a pipeline run (``model`` section, grid, variables
  and the wind normalisation from the cache statistics);
* :func:`baseline_of` - the same architecture with TopoFlow switched off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from aqnet.config import MODEL_VARIABLES, POLLUTANTS

WindScanMode = Literal["off", "global", "regional", "reference"]
AttentionImpl = Literal["auto", "flex", "sdpa", "chunked", "reference"]
PosEmbed = Literal["sincos", "learned"]
ElevationBiasDirection = Literal["uphill", "downhill"]

WIND_SCAN_MODES: tuple[str, ...] = ("off", "global", "regional", "reference")
ATTENTION_IMPLS: tuple[str, ...] = ("auto", "flex", "sdpa", "chunked", "reference")
POS_EMBEDS: tuple[str, ...] = ("sincos", "learned")

# Keys of the pipeline config's ``model`` section that map one-to-one onto ModelConfig fields.
_PIPELINE_KEYS: tuple[str, ...] = (
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "head_layers",
    "topoflow_blocks",
    "h_scale_m",
    "elevation_bias",
    "elevation_bias_direction",
    "wind_scan",
    "region_patches",
    "rel_pos_bias",
    "attention_impl",
    "pos_embed",
    "patch_embed_norm",
    "lead_time_scale_h",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of a :class:`aqnet.model.Forecaster` (all fields plain Python types).

    Attributes:
        img_size: ``(H, W)`` of the input grid.
        patch_size: square patch side in grid cells; must divide both grid sides.
        in_variables: input channel names, in channel order (``aqnet.config.MODEL_VARIABLES``).
        out_variables: predicted channel names, a subset of ``in_variables``, in output order.
        embed_dim: token width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads per block; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        head_layers: linear layers of the prediction head (the baseline has 3).
        topoflow_blocks: indices of the blocks with elevation-biased attention; ``()`` is the
            baseline.
        h_scale_m: elevation scale of the TopoFlow bias, in metres.
        elevation_bias: whether the TopoFlow blocks apply the elevation bias (ablation switch;
            the parameters exist either way so checkpoints stay compatible).
        elevation_bias_direction: ``"uphill"`` (the TopoFlow formula: a query is penalised for
            attending keys *above* it, ``relu(elev_k - elev_q)``) or ``"downhill"`` (the
            reverse, ``relu(elev_q - elev_k)``: a test of the hypothesis' sign).
        wind_scan: ``"off"``, ``"global"`` or ``"regional"`` wind-ordered patch scanning, or
            ``"reference"``, the researchers' scan (:mod:`aqnet.model.reference_scan`).
        region_patches: ``(rh, rw)`` region size in patches (regional scan mode).
        rel_pos_bias: add a learnable bucketed 2-D relative-position bias in TopoFlow blocks.
        attention_impl: ``"auto"``, ``"flex"``, ``"sdpa"``, ``"chunked"`` or ``"reference"``.
        wind_norm: ``(u_mean, u_std, v_mean, v_std)`` used to de-normalise the ``u``/``v``
            input channels before the wind sector is computed.
        lead_time_scale_h: lead times are divided by this (hours) before their embedding (the
            researchers' baseline takes raw hours: 1).
        pos_embed: ``"sincos"`` - the fixed 2-D sin-cos table (a derived buffer, not saved) - or
            ``"learned"`` - a parameter ``pos_embed`` ``(1, L, D)`` initialised to that table and
            loaded from the checkpoint, as the researchers' ClimaX backbone has.
        patch_embed_norm: a LayerNorm over each variable's patch tokens after the patch embedding
            (``patch_embed.norm``, as the published TopoFlow release has).
    """

    img_size: tuple[int, int]
    patch_size: int
    in_variables: tuple[str, ...] = MODEL_VARIABLES
    out_variables: tuple[str, ...] = POLLUTANTS
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    head_layers: int = 3
    topoflow_blocks: tuple[int, ...] = (0,)
    h_scale_m: float = 1000.0
    elevation_bias: bool = True
    elevation_bias_direction: ElevationBiasDirection = "uphill"
    wind_scan: WindScanMode = "regional"
    region_patches: tuple[int, int] = (2, 4)
    rel_pos_bias: bool = False
    attention_impl: AttentionImpl = "auto"
    wind_norm: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
    lead_time_scale_h: float = 100.0
    pos_embed: PosEmbed = "sincos"
    patch_embed_norm: bool = False

    def __post_init__(self) -> None:
        # Normalise sequences to tuples (from_dict / YAML give lists) so the config is hashable.
        def _set(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        _set("img_size", tuple(int(s) for s in self.img_size))
        _set("in_variables", tuple(str(v) for v in self.in_variables))
        _set("out_variables", tuple(str(v) for v in self.out_variables))
        _set("topoflow_blocks", tuple(sorted(int(i) for i in self.topoflow_blocks)))
        _set("region_patches", tuple(int(s) for s in self.region_patches))
        _set("wind_norm", tuple(float(s) for s in self.wind_norm))
        _set("patch_size", int(self.patch_size))
        _set("mlp_ratio", float(self.mlp_ratio))
        _set("h_scale_m", float(self.h_scale_m))
        _set("lead_time_scale_h", float(self.lead_time_scale_h))
        self._validate()

    def _validate(self) -> None:
        if len(self.img_size) != 2:
            raise ValueError(f"ModelConfig: img_size must be (H, W), got {self.img_size}")
        h, w = self.img_size
        p = self.patch_size
        if p < 1 or h % p or w % p:
            raise ValueError(f"ModelConfig: patch_size {p} must divide the grid img_size {h}x{w}")
        hp, wp = self.grid_patches
        rh, rw = self.region_patches
        if len(self.region_patches) != 2 or rh < 1 or rw < 1 or hp % rh or wp % rw:
            raise ValueError(
                f"ModelConfig: region_patches {rh}x{rw} must divide the patch grid {hp}x{wp} "
                f"(img_size {h}x{w} / patch_size {p})"
            )
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ValueError(
                f"ModelConfig: num_heads {self.num_heads} must divide embed_dim {self.embed_dim}"
            )
        if self.embed_dim % 4:
            raise ValueError(
                f"ModelConfig: embed_dim {self.embed_dim} must be a multiple of 4 "
                "(2-D sin-cos position embedding)"
            )
        if self.depth < 1 or self.head_layers < 1:
            raise ValueError(
                f"ModelConfig: depth ({self.depth}) and head_layers ({self.head_layers}) "
                "must be >= 1"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"ModelConfig: mlp_ratio must be > 0, got {self.mlp_ratio}")
        bad = [i for i in self.topoflow_blocks if not 0 <= i < self.depth]
        if bad or len(set(self.topoflow_blocks)) != len(self.topoflow_blocks):
            raise ValueError(
                f"ModelConfig: topoflow_blocks {list(self.topoflow_blocks)} must be distinct "
                f"block indices in [0, {self.depth})"
            )
        if self.h_scale_m <= 0:
            raise ValueError(f"ModelConfig: h_scale_m must be > 0 metres, got {self.h_scale_m}")
        if self.wind_scan not in WIND_SCAN_MODES:
            raise ValueError(
                f"ModelConfig: wind_scan must be one of {WIND_SCAN_MODES}, got {self.wind_scan!r}"
            )
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"ModelConfig: attention_impl must be one of {ATTENTION_IMPLS}, "
                f"got {self.attention_impl!r}"
            )
        if len(set(self.in_variables)) != len(self.in_variables):
            raise ValueError(f"ModelConfig: in_variables has duplicates: {self.in_variables}")
        missing = [v for v in self.out_variables if v not in self.in_variables]
        if missing or not self.out_variables:
            raise ValueError(
                f"ModelConfig: out_variables {missing or '()'} are not among the in_variables "
                f"{self.in_variables}"
            )
        if self.wind_scan != "off":
            lacking = [v for v in ("u", "v") if v not in self.in_variables]
            if lacking:
                raise ValueError(
                    f"ModelConfig: wind_scan={self.wind_scan!r} needs the input variables "
                    f"{lacking} to find the wind sector"
                )
        if len(self.wind_norm) != 4 or self.wind_norm[1] <= 0 or self.wind_norm[3] <= 0:
            raise ValueError(
                "ModelConfig: wind_norm must be (u_mean, u_std, v_mean, v_std) with stds > 0, "
                f"got {self.wind_norm}"
            )
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(
                f"ModelConfig: pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}"
            )
        if self.lead_time_scale_h <= 0:
            raise ValueError(
                f"ModelConfig: lead_time_scale_h must be > 0, got {self.lead_time_scale_h}"
            )

    @property
    def grid_patches(self) -> tuple[int, int]:
        """``(Hp, Wp)``: the patch grid."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        """``N = Hp * Wp``: the token sequence length."""
        hp, wp = self.grid_patches
        return hp * wp

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, not tuples): safe for YAML, JSON and ``weights_only`` loads."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(
                f"ModelConfig.from_dict: unknown keys {unknown} (known: {sorted(names)})"
            )
        return cls(**dict(d))

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def tiny(**overrides: Any) -> ModelConfig:
    """A small, fast model for tests and the CPU demo (32 x 64 grid unless overridden).

    Patch 2, embed 64, depth 2, 4 heads, a 3-layer head; works on the demo grid 32 x 64 and the
    test grid 16 x 32 (``tiny(img_size=(16, 32))``).
    """
    base: dict[str, Any] = {
        "img_size": (32, 64),
        "patch_size": 2,
        "embed_dim": 64,
        "depth": 2,
        "num_heads": 4,
        "mlp_ratio": 4.0,
        "head_layers": 3,
    }
    return ModelConfig(**{**base, **overrides})


def paper(**overrides: Any) -> ModelConfig:
    """The published architecture: 128 x 256 grid, patch 2, 15 variables, embed 768, depth 6,
    8 heads, a 3-layer head (Linear-GELU-Linear-GELU-Linear)."""
    base: dict[str, Any] = {
        "img_size": (128, 256),
        "patch_size": 2,
        "embed_dim": 768,
        "depth": 6,
        "num_heads": 8,
        "mlp_ratio": 4.0,
        "head_layers": 3,
    }
    return ModelConfig(**{**base, **overrides})


PRESETS = {"tiny": tiny, "paper": paper}


def from_pipeline_config(
    cfg: Mapping[str, Any], *, stats: Mapping[str, Mapping[str, float]] | None = None
) -> ModelConfig:
    """The model of a pipeline run.

    Args:
        cfg: a validated pipeline config (``aqnet.config.load_config`` / ``load_resolved``): the
            ``model`` section (``preset`` plus overrides), ``grid.ny``/``grid.nx``; the inputs are
            ``model.in_variables`` (a permutation of ``aqnet.config.MODEL_VARIABLES``; null is that
            order) and the outputs ``aqnet.config.POLLUTANTS``.
        stats: the cache's ``{var: {"mean": float, "std": float}}``; ``u`` and ``v`` give the wind
            normalisation. ``None`` means identity normalisation ``(0, 1, 0, 1)``.

    Raises:
        ValueError: unknown preset, missing config section or wind statistics.
    """
    for section in ("model", "grid"):
        if section not in cfg:
            raise ValueError(f"from_pipeline_config: the config lacks the {section!r} section")
    model = cfg["model"]
    preset = model.get("preset", "tiny")
    if preset not in PRESETS:
        raise ValueError(
            f"from_pipeline_config: unknown model.preset {preset!r} (known: {sorted(PRESETS)})"
        )
    overrides: dict[str, Any] = {k: model[k] for k in _PIPELINE_KEYS if k in model}
    overrides["img_size"] = (int(cfg["grid"]["ny"]), int(cfg["grid"]["nx"]))
    overrides["in_variables"] = input_variables(cfg)
    overrides["out_variables"] = POLLUTANTS
    if stats is not None:
        try:
            overrides["wind_norm"] = (
                float(stats["u"]["mean"]),
                float(stats["u"]["std"]),
                float(stats["v"]["mean"]),
                float(stats["v"]["std"]),
            )
        except KeyError as exc:
            raise ValueError(
                f"from_pipeline_config: the cache statistics lack {exc} for the wind "
                "normalisation (need stats['u'|'v']['mean'|'std'])"
            ) from exc
    return PRESETS[preset](**overrides)


def input_variables(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The model's input channel order: ``model.in_variables``, or ``MODEL_VARIABLES`` when null.

    Raises:
        ValueError: a list that is not a permutation of ``MODEL_VARIABLES`` (naming the names
            missing and the ones not known), since the cache provides exactly those channels.
    """
    names = cfg.get("model", {}).get("in_variables")
    if names is None:
        return MODEL_VARIABLES
    names = tuple(str(n) for n in names)
    missing = [v for v in MODEL_VARIABLES if v not in names]
    unknown = [v for v in names if v not in MODEL_VARIABLES]
    if missing or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"model.in_variables {list(names)} must order the {len(MODEL_VARIABLES)} cache "
            f"channels {list(MODEL_VARIABLES)} exactly once each: missing {missing}, unknown "
            f"{unknown}"
        )
    return names


def baseline_of(mcfg: ModelConfig) -> ModelConfig:
    """The same architecture with TopoFlow switched off (``topoflow_blocks=()``)."""
    return mcfg.replace(topoflow_blocks=())

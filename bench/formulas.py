"""Closed-form parameter and MAC counts of the suite's operators (docs/operators.md), per stage path.

One unit inside: MACs (multiply-accumulates). FLOPs = 2 MACs appear only in
labelled output. Counts are per image (batch 1).

Every count is a list of `Term`s: (path relative to the operator, part name,
category, MACs). The category decides, through `Conventions`, whether a term
is counted:

    mac        products and their accumulation (convs, linears, q.k logits,
               weighted sums, the elementwise products of Stage II): always
    pool       pooling layers (adaptive/average pool): always (as fvcore)
    bias       bias adds of convs / linears / the decomposed conv (one per output element)
    norm       BatchNorm (eval: 2 per element with affine, 1 without) and
               LayerNorm / GroupNorm (5 per element with affine, 4 without): fvcore's rules
    softmax    one per logit
    act        one per activation output element (ReLU, GELU, ...)
    shift_add  the adds of a tensor shift (docs/operators.md: "k^2 C HW shift-sum adds");
               the code runs k^2 - 1 adds per output element, and that is what is counted

Not counted in any voice the suite controls (documented, not switchable):
scalar scalings (q * d^-0.5, alpha * att), residual and mixing adds, the
positional differences (pe[p] - PE[p+o]) of the reference attention, data
movement (pad, unfold, slicing, roll, cat, reshape), mask construction, and
reductions done with `mean` outside a pooling module.

Operators are counted as they run (their `impl`, "fast" by default). The
fast sliding-window attention is an exact algebraic rewrite of docs/operators.md
section 3 that costs slightly more than the formula as written: its
positional term becomes 2 extra query channels per head (W_p^T q, 2 C H'W'
MACs, instead of the positional 1x1 conv 2 d H W) dotted with the padded
coordinate grid (2 N k_a^2 H'W' more logit MACs). `acmix_spec_parts` gives the
parts exactly as docs/operators.md lists them, and the "reference" impl formulas count
them that way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

CATEGORIES = ("mac", "pool", "bias", "norm", "softmax", "act", "shift_add")


@dataclass(frozen=True)
class Conventions:
    """Which cost categories count (see the module docstring). Defaults reproduce fvcore's
    numbers for standard layers (torchvision resnet50 at 224: 4,111,512,576 MACs) and add
    the true Stage II costs."""

    bias: bool = False
    norms: bool = True
    softmax: bool = False
    activations: bool = False
    shift_adds: bool = True

    def counts(self, category: str) -> bool:
        if category in ("mac", "pool"):
            return True
        flag = {"bias": self.bias, "norm": self.norms, "softmax": self.softmax, "act": self.activations,
                "shift_add": self.shift_adds}.get(category)
        if flag is None:
            return False  # "elem" and anything unknown: never counted
        return flag

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, spec: str | dict | "Conventions | None") -> "Conventions":
        """From a dict, a Conventions, or "bias=1,softmax=on,norms=off" (names: the fields)."""
        if spec is None or isinstance(spec, Conventions):
            return spec or cls()
        if isinstance(spec, dict):
            items = spec.items()
        else:
            items = []
            for tok in filter(None, (t.strip() for t in str(spec).split(","))):
                if "=" not in tok:
                    raise ValueError(f"convention {tok!r} must look like name=on|off; names: "
                                     f"{', '.join(f.name for f in fields(cls))}")
                k, v = tok.split("=", 1)
                items.append((k.strip(), v.strip()))
        names = {f.name for f in fields(cls)}
        out = {}
        for k, v in items:
            if k not in names:
                raise ValueError(f"unknown convention {k!r}; allowed: {', '.join(sorted(names))}")
            if isinstance(v, str):
                low = v.lower()
                if low not in ("1", "0", "on", "off", "true", "false", "yes", "no"):
                    raise ValueError(f"convention {k}={v!r}: use on|off (or 1|0, true|false)")
                v = low in ("1", "on", "true", "yes")
            out[k] = bool(v)
        return cls(**out)


@dataclass
class Term:
    path: str        # relative to the operator: "stage1", "stage2.attention", "stage2.conv", "stage2", "proj", ""
    part: str        # what it is, in docs/operators.md's words where it has one
    category: str    # one of CATEGORIES
    macs: int


@dataclass
class OpCost:
    terms: list[Term] = field(default_factory=list)
    params: dict[str, int] = field(default_factory=dict)  # relative path -> parameter count

    def add(self, path: str, part: str, category: str, macs: int) -> "OpCost":
        self.terms.append(Term(path, part, category, int(macs)))
        return self

    def param(self, path: str, n: int) -> "OpCost":
        self.params[path] = self.params.get(path, 0) + int(n)
        return self

    def extend(self, other: "OpCost", prefix: str = "") -> "OpCost":
        j = (lambda p: f"{prefix}.{p}" if p else prefix) if prefix else (lambda p: p)
        for t in other.terms:
            self.terms.append(Term(j(t.path), t.part, t.category, t.macs))
        for p, n in other.params.items():
            self.param(j(p), n)
        return self

    def total(self, conventions: Conventions | None = None, path_prefix: str | None = None) -> int:
        c = conventions or Conventions()
        return sum(t.macs for t in self.terms if c.counts(t.category)
                   and (path_prefix is None or t.path == path_prefix or t.path.startswith(path_prefix + ".")))

    def total_params(self) -> int:
        return sum(self.params.values())


def out_size(n: int, stride: int) -> int:
    return (n - 1) // stride + 1


# ----------------------------------------------------------------------------- Stage II pieces


def shift_cost(d: int, k: int, copies: int, H: int, W: int, stride: int, shift: str, impl: str = "fast") -> OpCost:
    """ShiftAggregation (docs/operators.md section 3): input (d k^2, H, W) -> (d N, H', W'), N = copies.

    tensor      (k^2 - 1) d H'W' shift adds (k^2 maps summed); copies are free
    fixed       grouped conv with d outputs, k^2 inputs each: d k^4 H'W'; the copies repeat it
    learnable   as fixed, d k^4 parameters
    multigroup  grouped conv with d N outputs: d N k^4 H'W' (docs/operators.md: k^4 C HW), d N k^4 parameters
    The "reference" impl runs every weighted form with its full (d N) kernel: d N k^4 H'W'.
    """
    Ho, Wo = out_size(H, stride), out_size(W, stride)
    c = OpCost()
    k4 = k ** 4
    if shift == "tensor":
        c.add("", "shift-and-sum adds (k^2 - 1 per output)", "shift_add", (k * k - 1) * d * Ho * Wo)
    elif shift in ("fixed", "learnable"):
        outs = d * copies if impl == "reference" else d
        c.add("", f"grouped conv, {shift} one-hot kernels ({outs} outputs)", "mac", outs * k4 * Ho * Wo)
        if shift == "learnable":
            c.param("", d * k4)
    elif shift == "multigroup":
        c.add("", "grouped conv, one kernel per output (release)", "mac", d * copies * k4 * Ho * Wo)
        c.param("", d * copies * k4)
    else:
        raise ValueError(f"unknown shift implementation {shift!r}; allowed: tensor, fixed, learnable, multigroup")
    return c


def conv_path_cost(heads: int, d: int, k: int, H: int, W: int, stride: int, shift: str, fc_bias: bool,
                   impl: str = "fast", fused: bool = False, in_groups: int | None = None) -> OpCost:
    """ACmix convolution path: light FC 3N -> k^2 over (3N, d, H W) at full resolution, then the shift.
    Light FC as released (authors' correction of the paper's 3N x k^2 N): k^2 3N d H W MACs, k^2 3N params.

    fused (the fast path for shift="multigroup" without FC bias, modules/operators.py ConvPath): the FC
    is folded into the grouped conv's kernels once per forward (d N k^2 k^2 3N MACs, independent of the
    batch) and one grouped conv (groups d, 3N -> N per group, k x k) runs: C 3N k^2 H'W' MACs. That
    equals FC + grouped conv (k^2 3N d H W + C k^4 H'W') only when 3N = 3 + k^2 at stride 1 (N = 4, k = 3).
    in_groups: the FC's input maps T when not 3N (SAN-ACmix: 2 + N); every 3N above reads T.
    """
    k2 = k * k
    N = heads
    T = 3 * N if in_groups is None else in_groups
    c = OpCost()
    c.param("", k2 * T + (k2 if fc_bias else 0))
    if fused:
        Ho, Wo = out_size(H, stride), out_size(W, stride)
        c.add("", "light FC folded into the grouped conv kernels (per forward)", "mac", d * N * k2 * k2 * T)
        c.add("", f"fused light FC + grouped conv (groups d, {T} -> N each)", "mac", d * N * T * k2 * Ho * Wo)
        c.param("", d * N * k2 * k2)  # the multigroup kernels
        return c
    c.add("", f"light FC {T} -> k^2", "mac", k2 * T * d * H * W)
    if fc_bias:
        c.add("", "light FC bias", "bias", k2 * d * H * W)
    return c.extend(shift_cost(d, k, N, H, W, stride, shift, impl))


def local_attention_cost(C: int, heads: int, kernel_att: int, H: int, W: int, stride: int = 1,
                         impl: str = "fast") -> OpCost:
    """Sliding-window attention path (docs/operators.md section 4), C = N d channels, output H' x W'.

    reference (the formulas as written): positional 1x1 conv 2 -> d on the grid (2 d H W; its bias add
      cancels in pe[p] - PE[p+o] and is not counted),
      logits C k_a^2 H'W', aggregation C k_a^2 H'W', softmax N k_a^2 H'W'.
    fast (what the suite runs): W_p^T q per head (2 C H'W'), logits over d + 2 channels per head
      ((C + 2N) k_a^2 H'W'), aggregation C k_a^2 H'W', softmax N k_a^2 H'W'.
    """
    N, ka = heads, kernel_att
    d = C // N
    Ho, Wo = out_size(H, stride), out_size(W, stride)
    P = Ho * Wo
    c = OpCost()
    c.param("", 2 * d + d)  # positional 1x1 conv 2 -> d with bias
    if impl == "reference":
        c.add("", "positional 1x1 conv 2 -> d", "mac", 2 * d * H * W)  # its bias add: an uncounted add
        c.add("", "attention logits q.(k + pe - PE)", "mac", C * ka * ka * P)
    else:
        c.add("", "positional projection W_p^T q per head (fast path)", "mac", 2 * C * P)
        c.add("", "attention logits q.k", "mac", C * ka * ka * P)
        c.add("", "attention logits, positional channels (2 per head, fast path)", "mac", 2 * N * ka * ka * P)
    c.add("", "softmax over the window", "softmax", N * ka * ka * P)
    c.add("", "attention aggregation sum_j w_j v_j", "mac", C * ka * ka * P)
    return c


def window_attention_cost(C: int, heads: int, window: int, H: int, W: int) -> OpCost:
    """Swin window attention path (docs/operators.md section 5): per window of L = M^2 tokens and head,
    L x L logits of d MACs and L x L weighted sums of d MACs: 2 H W M^2 C in all; (2M-1)^2 N params."""
    M, N = window, heads
    c = OpCost()
    c.param("", (2 * M - 1) ** 2 * N)
    c.add("", "window logits q k^T", "mac", H * W * M * M * C)
    c.add("", "softmax over the window", "softmax", H * W * M * M * N)
    c.add("", "window aggregation softmax . v", "mac", H * W * M * M * C)
    return c


# ----------------------------------------------------------------------------- operators


def qkv_conv_cost(C_in: int, C: int, H: int, W: int, bias: bool = True) -> OpCost:
    c = OpCost().add("", "1x1 convs q, k, v", "mac", 3 * C_in * C * H * W)
    if bias:
        c.add("", "q, k, v bias", "bias", 3 * C * H * W)
    return c.param("", 3 * C_in * C + (3 * C if bias else 0))


def conv_cost(C_in: int, C_out: int, k: int, H: int, W: int, stride: int = 1, bias: bool = False,
              groups: int = 1) -> OpCost:
    """Plain k x k conv (fused; Stage II is an identity): k^2 C_in/g C_out H'W'."""
    Ho, Wo = out_size(H, stride), out_size(W, stride)
    c = OpCost().add("stage1", f"{k}x{k} conv (fused shift-and-sum)", "mac", k * k * (C_in // groups) * C_out * Ho * Wo)
    if bias:
        c.add("stage1", "conv bias", "bias", C_out * Ho * Wo)
    return c.param("stage1", k * k * (C_in // groups) * C_out + (C_out if bias else 0))


def decomposed_conv_cost(C_in: int, C_out: int, k: int, H: int, W: int, stride: int = 1, bias: bool = False,
                         shift: str = "tensor", impl: str = "fast") -> OpCost:
    """Stage I: k^2 1x1 projections at full resolution (k^2 C_in C_out H W); Stage II: shift-and-sum
    (`stage2.shift`), then the bias (`stage2`)."""
    Ho, Wo = out_size(H, stride), out_size(W, stride)
    c = OpCost().add("stage1", f"k^2 = {k * k} 1x1 projections", "mac", k * k * C_in * C_out * H * W)
    c.param("stage1", k * k * C_in * C_out)
    c.extend(shift_cost(C_out, k, 1, H, W, stride, shift, impl), "stage2.shift")
    if bias:
        c.add("stage2", "conv bias after the sum", "bias", C_out * Ho * Wo).param("stage2", C_out)
    return c


def _mixing_params(mixing: str) -> int:
    return 2 if mixing == "learnable" else 0


def local_self_attention_cost(C_in: int, C: int, heads: int, kernel_att: int, H: int, W: int, stride: int = 1,
                              impl: str = "fast") -> OpCost:
    c = OpCost().extend(qkv_conv_cost(C_in, C, H, W), "stage1")
    return c.extend(local_attention_cost(C, heads, kernel_att, H, W, stride, impl), "stage2.attention")


def acmix_cost(C_in: int, C: int, heads: int, kernel_att: int, kernel_conv: int, H: int, W: int, stride: int = 1,
               shift: str = "multigroup", mixing: str = "learnable", impl: str = "fast",
               fused: bool = False, conv_impl: str | None = None) -> OpCost:
    """ResNet-ACmix (docs/operators.md section 4). Fixed mixings build (and count) only the paths they use."""
    N, d = heads, C // heads
    c = OpCost().extend(qkv_conv_cost(C_in, C, H, W), "stage1")
    if mixing != "conv":
        c.extend(local_attention_cost(C, N, kernel_att, H, W, stride, impl), "stage2.attention")
    if mixing != "att":
        c.extend(conv_path_cost(N, d, kernel_conv, H, W, stride, shift, False, conv_impl or impl, fused),
                 "stage2.conv")
    if _mixing_params(mixing):
        c.param("stage2", _mixing_params(mixing))
    return c


def window_self_attention_cost(C: int, heads: int, window: int, H: int, W: int, proj: bool = True) -> OpCost:
    """Swin W-MSA: qkv Linear(C, 3C) (stage1), window attention (stage2.attention), proj Linear(C, C) (other)."""
    T = H * W
    c = OpCost().add("stage1", "qkv linear C -> 3C", "mac", 3 * C * C * T).add("stage1", "qkv bias", "bias", 3 * C * T)
    c.param("stage1", 3 * C * C + 3 * C)
    c.extend(window_attention_cost(C, heads, window, H, W), "stage2.attention")
    if proj:
        c.add("proj", "output projection C -> C", "mac", C * C * T).add("proj", "output projection bias", "bias", C * T)
        c.param("proj", C * C + C)
    return c


def window_acmix_cost(C: int, heads: int, window: int, H: int, W: int, kernel_conv: int = 3,
                      shift: str = "multigroup", mixing: str = "learnable", impl: str = "fast") -> OpCost:
    """Swin-ACmix (docs/operators.md section 5): the conv path (FC with bias) bypasses the projection."""
    T, N = H * W, heads
    c = OpCost().add("stage1", "qkv linear C -> 3C", "mac", 3 * C * C * T).add("stage1", "qkv bias", "bias", 3 * C * T)
    c.param("stage1", 3 * C * C + 3 * C)
    if mixing != "conv":
        c.extend(window_attention_cost(C, N, window, H, W), "stage2.attention")
        c.add("proj", "output projection C -> C", "mac", C * C * T).add("proj", "output projection bias", "bias", C * T)
        c.param("proj", C * C + C)
    if mixing != "att":
        c.extend(conv_path_cost(N, C // N, kernel_conv, H, W, 1, shift, True, impl), "stage2.conv")
    if _mixing_params(mixing):
        c.param("stage2", _mixing_params(mixing))
    return c


def sra_cost(C: int, heads: int, sr_ratio: int, H: int, W: int, cls_token: bool = False,
             impl: str = "fast") -> OpCost:
    """PVT spatial-reduction attention path (stage2.attention): the R x R / R reduction conv (C^2 R^2 per
    reduced token) and its LayerNorm when R > 1, then per head L x Lr logits and weighted sums of d MACs
    (2 L Lr C in all) and N L Lr softmax entries; L = H W (+1 class token), Lr = (H/R)(W/R) (L when R = 1).
    The reference reduction adds its bias outside a conv: an uncounted add ("elem") there."""
    R, N = sr_ratio, heads
    L = H * W + int(cls_token)
    c = OpCost()
    if R > 1:
        Lr = (H // R) * (W // R)
        c.add("", "spatial reduction conv R x R, stride R", "mac", C * C * R * R * Lr)
        c.add("", "spatial reduction conv bias", "bias" if impl == "fast" else "elem", C * Lr)
        c.add("", "spatial reduction LayerNorm", "norm", 5 * C * Lr)
        c.param("", C * C * R * R + C + 2 * C)
    else:
        Lr = L
    c.add("", "logits q k^T over the reduced keys", "mac", L * Lr * C)
    c.add("", "softmax over the reduced keys", "softmax", N * L * Lr)
    c.add("", "aggregation softmax . v", "mac", L * Lr * C)
    return c


def _sra_lr(sr_ratio: int, H: int, W: int, cls_token: bool) -> int:
    return (H // sr_ratio) * (W // sr_ratio) if sr_ratio > 1 else H * W + int(cls_token)


def sr_attention_cost(C: int, heads: int, sr_ratio: int, H: int, W: int, cls_token: bool = False,
                      impl: str = "fast") -> OpCost:
    """PVT attention: Stage I q = Linear(C, C) on the L tokens and kv = Linear(C, 2C) on the Lr reduced ones;
    the SRA path (sra_cost); the output projection Linear(C, C) ("other")."""
    L = H * W + int(cls_token)
    Lr = _sra_lr(sr_ratio, H, W, cls_token)
    c = OpCost().add("stage1", "q linear C -> C", "mac", C * C * L).add("stage1", "q bias", "bias", C * L)
    c.add("stage1", "kv linear C -> 2C on the reduced tokens", "mac", 2 * C * C * Lr)
    c.add("stage1", "kv bias", "bias", 2 * C * Lr)
    c.param("stage1", 3 * C * C + 3 * C)
    c.extend(sra_cost(C, heads, sr_ratio, H, W, cls_token, impl), "stage2.attention")
    c.add("proj", "output projection C -> C", "mac", C * C * L).add("proj", "output projection bias", "bias", C * L)
    return c.param("proj", C * C + C)


def sr_acmix_cost(C: int, heads: int, sr_ratio: int, H: int, W: int, cls_token: bool = False,
                  kernel_conv: int = 3, shift: str = "multigroup", mixing: str = "learnable",
                  conv_kv: str = "upsample", impl: str = "fast", conv_impl: str = "fast") -> OpCost:
    """PVT-ACmix (modules/pvt_attention.py): sr_attention_cost plus the conv path (light FC with bias, then
    the shift) on the H x W spatial tokens; conv_kv "full" adds the kv projection of the unreduced map
    (2 C^2 H W) to Stage I where R > 1 ("upsample" repeats the reduced k, v: no MACs)."""
    c = sr_attention_cost(C, heads, sr_ratio, H, W, cls_token, impl)
    if mixing == "att":
        return c
    if conv_kv == "full" and sr_ratio > 1:
        c.add("stage1", "kv linear C -> 2C on the full map (conv path)", "mac", 2 * C * C * H * W)
        c.add("stage1", "kv bias, full map", "bias", 2 * C * H * W)
    c.extend(conv_path_cost(heads, C // heads, kernel_conv, H, W, 1, shift, True, conv_impl), "stage2.conv")
    if _mixing_params(mixing):
        c.param("stage2", _mixing_params(mixing))
    return c


def acmix_spec_parts(C_in: int, C: int, heads: int, kernel_att: int, kernel_conv: int, H: int, W: int,
                     stride: int = 1, light_fc: str = "release") -> dict[str, int]:
    """The ResNet-ACmix block exactly as docs/operators.md section 4 lists it (MACs per image; params).

    light_fc: "release" (3N -> k^2, the authors' correction: k^2 3N params) or "paper"
    (3N x k^2 N as printed: k^2 3N^2 params and N times the MACs).
    """
    N, k, ka = heads, kernel_conv, kernel_att
    d = C // N
    Ho, Wo = out_size(H, stride), out_size(W, stride)
    fc_mult = {"release": 1, "paper": N}.get(light_fc)
    if fc_mult is None:
        raise ValueError(f"light_fc must be 'release' or 'paper', got {light_fc!r}")
    return {
        "1x1 convs": 3 * C_in * C * H * W,
        "positional 1x1 conv": 2 * d * H * W,
        "light FC": k * k * 3 * N * d * H * W * fc_mult,
        "grouped conv": C * k ** 4 * Ho * Wo,
        "attention logits": C * ka * ka * Ho * Wo,
        "attention aggregation": C * ka * ka * Ho * Wo,
        "params": 3 * (C_in * C + C) + 3 * d + k * k * 3 * N * fc_mult + C * k ** 4 + 2,
    }


def paper_table(C: int, heads: int, kernel_att: int, kernel_conv: int, H: int, W: int) -> dict[str, dict[str, int]]:
    """docs/operators.md section 1 cost table (square C -> C, stride 1), Stage II of ACmix as released."""
    k, ka, N, HW = kernel_conv, kernel_att, heads, H * W
    return {
        "conv": {"stage1_params": k * k * C * C, "stage1_macs": k * k * C * C * HW, "stage2_params": 0,
                 "stage2_macs": k * k * C * HW},
        "self-attention": {"stage1_params": 3 * C * C, "stage1_macs": 3 * C * C * HW, "stage2_params": 0,
                           "stage2_macs": 2 * ka * ka * C * HW},
        "acmix": {"stage1_params": 3 * C * C, "stage1_macs": 3 * C * C * HW,
                  "stage2_params": k * k * 3 * N + k ** 4 * C,
                  "stage2_macs": 2 * ka * ka * C * HW + 3 * N * k * k * (C // N) * HW + k ** 4 * C * HW},
    }


def _gamma_cost(c: OpCost, c_in: int, c_mid: int, c_out: int, px: int, what: str) -> None:
    """SAN's weight function on px positions: BN, ReLU, 1x1 (no bias), BN, ReLU, 1x1 (bias)."""
    c.add("", f"{what}: BN", "norm", 2 * c_in * px).add("", f"{what}: ReLU", "act", c_in * px)
    c.add("", f"{what}: 1x1 {c_in} -> {c_mid}", "mac", c_in * c_mid * px)
    c.add("", f"{what}: BN", "norm", 2 * c_mid * px).add("", f"{what}: ReLU", "act", c_mid * px)
    c.add("", f"{what}: 1x1 {c_mid} -> {c_out}", "mac", c_mid * c_out * px)
    c.add("", f"{what}: 1x1 bias", "bias", c_out * px)
    c.param("", 2 * c_in + c_in * c_mid + 2 * c_mid + c_mid * c_out + c_out)


def san_attention_cost(sa_type: str, rel: int, C: int, G: int, k: int, H: int, W: int) -> OpCost:
    """SAN's Stage II (modules/san.py), C output channels, G = C / share_planes weight channels, stride 1.

    pairwise   positional 1x1 conv 2 -> 2 on the grid (4 H W); relations x1[p] - x2[p+o] and
               P[p] - P[p+o] (elementwise subtractions: "elem", not counted; SAN's own counter
               counts them); gamma on (r + 2) channels at k^2 H W positions; softmax G k^2 H W
    patchwise  gamma on the footprint (r (k^2 + 1) channels) at H W positions, G -> k^2 G outputs
    both       aggregation sum_j w_j x3[p+o_j]: C k^2 H W MACs
    The reference and fast implementations run the same arithmetic (loop vs unfold).
    """
    HW, k2 = H * W, k * k
    c = OpCost()
    if sa_type == "pairwise":
        c.add("", "positional 1x1 conv 2 -> 2", "mac", 4 * HW).add("", "positional 1x1 conv bias", "bias", 2 * HW)
        c.param("", 6)
        c.add("", "relation x1[p] - x2[p+o] and P[p] - P[p+o]", "elem", (rel + 2) * k2 * HW)
        _gamma_cost(c, rel + 2, rel, G, k2 * HW, "gamma (pairwise)")
        c.add("", "softmax over the footprint", "softmax", G * k2 * HW)
    elif sa_type == "patchwise":
        _gamma_cost(c, rel * (k2 + 1), G, k2 * G, HW, "gamma (patchwise)")
    else:
        raise ValueError(f"unknown SAN attention type {sa_type!r}; allowed: pairwise, patchwise")
    c.add("", "aggregation sum_j w_j x3[p+o_j]", "mac", C * k2 * HW)
    return c


def san_projection_cost(C_in: int, rel: int, C: int, H: int, W: int) -> OpCost:
    """SAN's Stage I: the 1x1 convs x1, x2 (rel each) and x3 (C), with bias."""
    n = 2 * rel + C
    c = OpCost().add("", f"1x1 convs x1, x2, x3 ({C_in} -> {rel}, {rel}, {C})", "mac", C_in * n * H * W)
    return c.add("", "x1, x2, x3 bias", "bias", n * H * W).param("", C_in * n + n)


def san_cost(C_in: int, C: int, rel: int, share: int, k: int, H: int, W: int, sa_type: str) -> OpCost:
    c = OpCost().extend(san_projection_cost(C_in, rel, C, H, W), "stage1")
    return c.extend(san_attention_cost(sa_type, rel, C, C // share, k, H, W), "stage2.attention")


def san_acmix_cost(C_in: int, C: int, rel: int, share: int, k: int, H: int, W: int, sa_type: str,
                   kernel_conv: int = 3, shift: str = "multigroup", mixing: str = "learnable", impl: str = "fast",
                   fused: bool = False) -> OpCost:
    """SAN-ACmix: SAN's Stage I, its attention path, the ACmix conv path on 2 + N groups of d = rel."""
    N = C // rel
    c = OpCost().extend(san_projection_cost(C_in, rel, C, H, W), "stage1")
    if mixing != "conv":
        c.extend(san_attention_cost(sa_type, rel, C, C // share, k, H, W), "stage2.attention")
    if mixing != "att":
        c.extend(conv_path_cost(N, rel, kernel_conv, H, W, 1, shift, False, impl, fused, in_groups=2 + N),
                 "stage2.conv")
    if _mixing_params(mixing):
        c.param("stage2", _mixing_params(mixing))
    return c


# ----------------------------------------------------------------------------- layers outside operators


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def layer_cost(module, in_shape, out_shape) -> OpCost | None:
    """Closed forms for the standard layers a backbone puts around the operators (all "other" unless
    they sit inside a stage path). None: a layer type without a closed form here."""
    import torch.nn as nn

    c = OpCost()
    m = module
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        c.add("", "conv", "mac", _numel(out_shape) * (m.in_channels // m.groups) * kh * kw)
        if m.bias is not None:
            c.add("", "conv bias", "bias", _numel(out_shape))
        return c.param("", m.out_channels * (m.in_channels // m.groups) * kh * kw + (m.out_channels if m.bias is not None else 0))
    if isinstance(m, nn.Linear):
        c.add("", "linear", "mac", _numel(out_shape) * m.in_features)
        if m.bias is not None:
            c.add("", "linear bias", "bias", _numel(out_shape))
        return c.param("", m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        # counted in eval mode (counting switches the model to eval)
        c.add("", "batch norm", "norm", _numel(in_shape) * (2 if m.affine else 1))
        return c.param("", 2 * m.num_features if m.affine else 0)
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        affine = m.elementwise_affine if isinstance(m, nn.LayerNorm) else m.affine
        c.add("", type(m).__name__, "norm", _numel(in_shape) * (5 if affine else 4))
        return c.param("", sum(p.numel() for p in m.parameters(recurse=False)))
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
                      nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish)):
        return c.add("", type(m).__name__, "act", _numel(out_shape))
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool2d, nn.AvgPool1d)):
        return c.add("", type(m).__name__, "pool", _numel(in_shape))
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.Flatten)):
        return c
    return None


def operator_cost(module, in_shape) -> OpCost | None:
    """Closed form for a suite operator given its input shape ((1, C, H, W) maps or (1, H, W, C) tokens).
    None when `module` is not one of the suite's operators."""
    from modules import (ACmix, Conv, DecomposedConv, LocalSelfAttention, SANACmix, SANSelfAttention, WindowACmix,
                         WindowSelfAttention)
    from modules.pvt_attention import SpatialReductionAttention, SRACmix

    m = module
    if isinstance(m, SANSelfAttention):
        _, C_in, H, W = in_shape
        if not isinstance(m, SANACmix):
            return san_cost(C_in, m.out_planes, m.rel_planes, m.share_planes, m.kernel_size, H, W, m.sa_type)
        conv = getattr(m.stage2, "conv", None)
        if conv is not None and conv.impl == "reference" and m.shift != "multigroup":
            raise ValueError("formulas for the reference conv path cover shift='multigroup' only; "
                             "count the fast path (set_stage2_impl(model, 'fast'))")
        return san_acmix_cost(C_in, m.out_planes, m.rel_planes, m.share_planes, m.kernel_size, H, W, m.sa_type,
                              m.kernel_conv, m.shift, m.mixing, conv.impl if conv is not None else "fast",
                              conv is not None and conv.fuses(H, W))
    if isinstance(m, SpatialReductionAttention):  # tokens: in_shape (1, H, W, C), the class token aside
        H, W = in_shape[1], in_shape[2]
        impl = m.stage2.attention.impl
        if not isinstance(m, SRACmix):
            return sr_attention_cost(m.dim, m.num_heads, m.sr_ratio, H, W, m.cls_token, impl)
        conv = getattr(m.stage2, "conv", None)
        return sr_acmix_cost(m.dim, m.num_heads, m.sr_ratio, H, W, m.cls_token, m._kernel_conv,
                             conv.shift.shift if conv is not None else "multigroup", m._mixing, m.conv_kv, impl,
                             conv.impl if conv is not None else "fast")
    if isinstance(m, Conv):
        _, C_in, H, W = in_shape
        c1 = m.stage1
        return conv_cost(C_in, m.out_planes, m.kernel_size, H, W, m.stride, c1.bias is not None, c1.groups)
    if isinstance(m, DecomposedConv):
        _, C_in, H, W = in_shape
        s = m.stage2.shift
        return decomposed_conv_cost(C_in, m.out_planes, m.kernel_size, H, W, m.stride, m.stage2.bias is not None,
                                    s.shift, s.impl)
    if isinstance(m, ACmix):
        _, C_in, H, W = in_shape
        s2 = m.stage2
        att = getattr(s2, "attention", None)
        conv = getattr(s2, "conv", None)
        impl = att.impl if att is not None else "fast"
        shift = conv.shift.shift if conv is not None else "multigroup"
        if conv is not None and conv.impl == "reference" and shift != "multigroup":
            raise ValueError("formulas for the reference conv path cover shift='multigroup' only; "
                             "count the fast path (set_stage2_impl(model, 'fast'))")
        fused = conv is not None and conv.fuses(H, W)
        c = acmix_cost(C_in, m.out_planes, m.head, m.kernel_att, m.kernel_conv, H, W, m.stride, shift,
                       s2.mixing, impl, fused, conv.impl if conv is not None else None)
        if m.dilation != 1:
            raise ValueError("formulas assume dilation=1 for ACmix; the count would not be exact")
        return c
    if isinstance(m, LocalSelfAttention):
        _, C_in, H, W = in_shape
        att = m.stage2.attention
        return local_self_attention_cost(C_in, m.out_planes, m.head, att.kernel_att, H, W, m.stride, att.impl)
    if isinstance(m, WindowACmix):
        H, W = in_shape[1], in_shape[2]
        conv = getattr(m.stage2, "conv", None)
        shift = conv.shift.shift if conv is not None else "multigroup"
        att = getattr(m.stage2, "attention", None)
        if att is not None and att.impl == "reference":
            raise ValueError("the reference window attention is dense (all token pairs); count the fast path")
        return window_acmix_cost(m.dim, m.num_heads, m.window_size, H, W, m._kernel_conv, shift, m._mixing,
                                 conv.impl if conv is not None else "fast")
    if isinstance(m, WindowSelfAttention):
        H, W = in_shape[1], in_shape[2]
        if m.stage2.attention.impl == "reference":
            raise ValueError("the reference window attention is dense (all token pairs); count the fast path")
        return window_self_attention_cost(m.dim, m.num_heads, m.window_size, H, W)
    return None

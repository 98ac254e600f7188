"""The suite's vocabulary: the names users type for operators, their options and training.

Plain data and two small functions, no imports: the one place each name is
spelt. Everything that checks a name (constructors, the config validator,
command lines) imports it from here.

Operator kinds (`modules.create_op`):

    conv          k x k convolution (`Conv`: one fused nn.Conv2d as Stage I)
    dconv         the same convolution decomposed: 1x1 projections + shift-and-sum (`DecomposedConv`)
    sa            sliding-window (local) self-attention (`LocalSelfAttention`)
    acmix         ACmix, sliding-window form (`ACmix`, the ResNet-ACmix operator)
    window-sa     Swin window self-attention, W-MSA / SW-MSA (`WindowSelfAttention`)
    window-acmix  ACmix, window form (`WindowACmix`, the Swin-ACmix operator)

The first four take feature maps (B, C, H, W) and have a stride; the window
kinds take tokens (B, H, W, C) and keep the map size. A registry model name is
BACKBONE-OP with OP from BACKBONE_OPS: a ResNet's "sa" is the sliding-window
kind, a Swin's "sa" and "acmix" are the window kinds.

Shift implementations (the shift-and-sum of a conv path, modules/shift.py):
tensor (shift maps, sum), fixed (frozen one-hot grouped conv), learnable
(trainable kernels shared by the heads), multigroup (the release: one kernel
per head copy). Stage II implementations: fast (the kernels a run uses) and
reference (the formulas as written, kept for tests and counting). Mixings
(how ACmix weighs its two paths): learnable scalars alpha and beta, or fixed
half / attention only / convolution only. Optimisers and learning-rate
schedules of ImageClassifier (modules/lightning.py).
"""

MAP_KINDS = ("conv", "dconv", "sa", "acmix")
TOKEN_KINDS = ("window-sa", "window-acmix")
OPERATOR_KINDS = MAP_KINDS + TOKEN_KINDS
# earlier spellings still accepted where a command line offers them
OPERATOR_ALIASES = {"swin-sa": "window-sa", "swin-acmix": "window-acmix"}

# the OP part of registry model names (BACKBONE-OP)
RESNET_OPS = MAP_KINDS
SWIN_OPS = ("sa", "acmix")
SAN_OPS = ("pairwise", "patchwise", "acmix")
BACKBONE_OPS = RESNET_OPS + ("pairwise", "patchwise")

SHIFT_IMPLS = ("tensor", "fixed", "learnable", "multigroup")
STAGE2_IMPLS = ("fast", "reference")
# mixing name -> (alpha, beta); None = learnable scalars
MIXING_MODES = {"learnable": None, "half": (0.5, 0.5), "att": (1.0, 0.0), "conv": (0.0, 1.0)}
MIXINGS = tuple(MIXING_MODES)
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "none")


def canonical_op(name: str) -> str:
    """The canonical kind for an operator name or alias; ValueError naming the allowed ones otherwise."""
    name = OPERATOR_ALIASES.get(name, name)
    if name not in OPERATOR_KINDS:
        raise ValueError(f"unknown operator {name!r}; allowed: {', '.join(OPERATOR_KINDS)}")
    return name


def op_layout(kind: str) -> str:
    """"map" for operators on (B, C, H, W) feature maps, "tokens" for those on (B, H, W, C) tokens."""
    return "tokens" if canonical_op(kind) in TOKEN_KINDS else "map"


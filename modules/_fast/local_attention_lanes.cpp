// Local attention for small maps: the (batch, head) planes in the vector lanes.
//
// The row kernel (local_attention_forward.cpp) runs its vectors along a row of output pixels. On the
// small maps of low-resolution backbones (W' of 8, 4 or 2 with head dims of 2 to 16) most of its lanes
// are padding and its per-tile overheads meet only a few channels. Here each vector holds the same
// pixel of L different (b, n) planes (L = one register of T), so every lane does useful work at any
// map size, and a task is a group of L planes, all of whose keys and values fit in L1/L2:
//
//   Kb, Vb (d, H*W, L)       keys and values of the group (not padded)
//   Qb     (Cq, Ho*Wo, L)    extended queries (Cq = d + 2: scaled q, then the two grid channels)
// (channel strides rounded to an odd number of cache lines: at 16x16 a channel of L floats is 8 KiB,
// and d channels of four buffers 8 KiB apart fall in one L1 set and evict each other)
//
// The reflection padding lives in a table shared by all groups: for output pixel p and window offset j,
// the source pixel its key and value come from and the padded grid's two values there. On small maps
// the padding is most of a padded map (4x4 padded by 3 is 10x10), so nothing padded is copied, and the
// backward's key/value gradients accumulate straight into the source pixels (the padding's adjoint).
//
// read from the Stage I output qkv (B, 3C, H, W) and q_ext (BN, Cq, H', W') as acmix_stage2.py builds
// them. Per output pixel: logits over the k_a^2 window (the grid channels pair with the padded
// coordinate grid, the same for every plane), max-shifted softmax, weighted sum of values. The
// backward recomputes the softmax the same way, accumulates the key and value gradients of its group
// in private buffers (lanes are distinct planes, so nothing is shared between tasks), and adds them,
// times `scale`, into the Stage I gradient map.
// Same maths as the row kernel; summation order differs (within float rounding).
#include "local_attention.h"
#include "local_attention_blocks.h"
#include "lanes.h"

namespace {

struct LaneGeo {
  int64_t B, N, C, d, H, W, Ho, Wo, S, dil, ka, pad, Hp, Wpd;
  int64_t HW() const { return H * W; }
  int64_t HWo() const { return Ho * Wo; }
  int64_t BN() const { return B * N; }
};

// Padded coordinate grid as two (Hp, Wpd) planes, from the phase-split grid (2, Hp, S, Wq).
template <typename T>
std::vector<T> unsplit_grid(const LaneGeo& g, const at::Tensor& grid) {
  const T* G = grid.data_ptr<T>();
  const int64_t Wq = grid.size(3);
  std::vector<T> out(2 * g.Hp * g.Wpd);
  for (int64_t k = 0; k < 2; ++k)
    for (int64_t r = 0; r < g.Hp; ++r)
      for (int64_t c = 0; c < g.Wpd; ++c)
        out[(k * g.Hp + r) * g.Wpd + c] = G[((k * g.Hp + r) * g.S + c % g.S) * Wq + c / g.S];
  return out;
}

// The planes bn0 .. bn0 + nl - 1 of channels c_off + n*d .. c_off + n*d + d - 1 of qkv into dst
// (d, H*W, L), channel stride cs; lanes >= nl are set to zero.
template <typename T, int L>
void gather_planes(const LaneGeo& g, const T* qkv, int64_t c_off, int64_t bn0, int64_t nl, int64_t cs, T* dst) {
  const int64_t HW = g.HW();
  const T* src[L];
  for (int64_t c = 0; c < g.d; ++c) {
    for (int64_t l = 0; l < nl; ++l) {
      const int64_t bn = bn0 + l, b = bn / g.N, n = bn % g.N;
      src[l] = qkv + (b * 3 * g.C + c_off + n * g.d + c) * HW;
    }
    to_lanes<T, L>(src, nl, HW, dst + c * cs);
  }
}

// (nl planes of) a (BN, Cc, Ho, Wo) tensor -> dst (Cc, Ho*Wo, L), channel stride cs (lanes >= nl zero)
template <typename T, int L>
void gather_plain(const T* src, int64_t Cc, int64_t HWo, int64_t bn0, int64_t nl, int64_t cs, T* dst) {
  const T* s[L];
  for (int64_t c = 0; c < Cc; ++c) {
    for (int64_t l = 0; l < nl; ++l) s[l] = src + ((bn0 + l) * Cc + c) * HWo;
    to_lanes<T, L>(s, nl, HWo, dst + c * cs);
  }
}

// the inverse of gather_plain: src (Cc, HWo, L), channel stride cs -> planes bn0 .. of a (BN, Cc, Ho, Wo) tensor
template <typename T, int L>
void scatter_plain(const T* src, int64_t Cc, int64_t HWo, int64_t bn0, int64_t nl, int64_t cs, T* dst) {
  T* d[L];
  for (int64_t c = 0; c < Cc; ++c) {
    for (int64_t l = 0; l < nl; ++l) d[l] = dst + ((bn0 + l) * Cc + c) * HWo;
    from_lanes<false, T, L>(src + c * cs, HWo, d, nl);
  }
}

template <typename T, int VB>
struct LaneCtx {
  using V = typename VecB<T, VB>::type;
  static constexpr int L = VB / static_cast<int>(sizeof(T));
  const LaneGeo& g;
  int64_t ks, qs;  // channel strides of the key/value buffers and of the query/output-gradient buffers
  // per (output pixel p, window offset j), at p * K2 + j: the source pixel (h * W + w) after reflection,
  // and the padded coordinate grid's two channels there
  std::vector<int32_t> src;
  std::vector<T> gx, gy;
};

// Softmax weights of output pixel (y, x) of one group: P[j] (K2 vectors) = exp(logit_j - max) and the
// returned 1 / sum_j. q points at the pixel's first extended query channel (stride qs).
template <typename T, int VB, int D>
inline typename VecB<T, VB>::type lane_softmax(const LaneCtx<T, VB>& cx, int64_t d_rt, const T* q, int64_t qs,
                                               const T* Kb, int64_t p, typename VecB<T, VB>::type* P) {
  using V = typename VecB<T, VB>::type;
  constexpr int L = LaneCtx<T, VB>::L;
  const int64_t d = D ? D : d_rt, plane = cx.ks, K2 = cx.g.ka * cx.g.ka;
  V qv[D ? D : 1];
  if constexpr (D > 0) {
#pragma GCC unroll 16
    for (int c = 0; c < D; ++c) qv[c] = ldv<VB>(q + c * qs);
  }
  const V qx = ldv<VB>(q + d * qs), qy = ldv<VB>(q + (d + 1) * qs);
  V m = V{} - std::numeric_limits<T>::infinity();
  const int32_t* src = cx.src.data() + p * K2;
  const T* gx = cx.gx.data() + p * K2;
  const T* gy = cx.gy.data() + p * K2;
  for (int64_t j = 0; j < K2; ++j) {
    V acc = qx * gx[j] + qy * gy[j];
    const T* kp = Kb + static_cast<int64_t>(src[j]) * L;
    if constexpr (D > 0) {
#pragma GCC unroll 16
      for (int c = 0; c < D; ++c) acc += qv[c] * ldv<VB>(kp + c * plane);
    } else {
      for (int64_t c = 0; c < d; ++c) acc += ldv<VB>(q + c * qs) * ldv<VB>(kp + c * plane);
    }
    P[j] = acc;
    m = acc > m ? acc : m;
  }
  V s = V{};
  for (int64_t j = 0; j < K2; ++j) {
    const V e = softmax_exp(P[j] - m);
    P[j] = e;
    s += e;
  }
  return T(1) / s;
}

template <typename T, int VB, int D>
void lane_forward_group(const LaneCtx<T, VB>& cx, int64_t d_rt, const T* Qb, const T* Kb, const T* Vb,
                        T* Ob, typename VecB<T, VB>::type* P) {
  using V = typename VecB<T, VB>::type;
  constexpr int L = LaneCtx<T, VB>::L;
  // output channels accumulated in registers at once: the head dim itself where it is a compile-time one
  // below 8 (d of 2, 4, 5), so every block takes the unrolled loop with its accumulators in registers
  constexpr int CH = D > 0 && D < 8 ? D : 8;
  const LaneGeo& g = cx.g;
  const int64_t d = D ? D : d_rt, plane = cx.ks, K2 = g.ka * g.ka;
  for (int64_t y = 0; y < g.Ho; ++y)
    for (int64_t x = 0; x < g.Wo; ++x) {
      const int64_t p = y * g.Wo + x;
      const V inv = lane_softmax<T, VB, D>(cx, d, Qb + p * L, cx.qs, Kb, p, P);
      const int32_t* src = cx.src.data() + p * K2;
      for (int64_t c0 = 0; c0 < d; c0 += CH) {
        const int nc = static_cast<int>(std::min<int64_t>(CH, d - c0));
        V acc[CH] = {};
        const T* vb = Vb + c0 * plane;
        for (int64_t j = 0; j < K2; ++j) {
          const V w = P[j];
          const T* vp = vb + static_cast<int64_t>(src[j]) * L;
          if (nc == CH) {
#pragma GCC unroll 8
            for (int c = 0; c < CH; ++c) acc[c] += w * ldv<VB>(vp + c * plane);
          } else {
            for (int c = 0; c < nc; ++c) acc[c] += w * ldv<VB>(vp + c * plane);
          }
        }
        for (int c = 0; c < nc; ++c) stv<VB>(Ob + (c0 + c) * cx.qs + p * L, acc[c] * inv);
      }
    }
}

template <typename T, int VB, int D>
void lane_backward_group(const LaneCtx<T, VB>& cx, int64_t d_rt, const T* Qb, const T* Gb, const T* Kb,
                         const T* Vb, T* dKb, T* dVb, T* DQb,
                         typename VecB<T, VB>::type* P, typename VecB<T, VB>::type* dP) {
  using V = typename VecB<T, VB>::type;
  constexpr int L = LaneCtx<T, VB>::L;
  const LaneGeo& g = cx.g;
  const int64_t d = D ? D : d_rt, plane = cx.ks, qs = cx.qs, K2 = g.ka * g.ka;
  for (int64_t y = 0; y < g.Ho; ++y)
    for (int64_t x = 0; x < g.Wo; ++x) {
      const int64_t p = y * g.Wo + x;
      const T* q = Qb + p * L;
      const T* go = Gb + p * L;
      const V inv = lane_softmax<T, VB, D>(cx, d, q, qs, Kb, p, P);
      const int32_t* src = cx.src.data() + p * K2;
      const T* gxp = cx.gx.data() + p * K2;
      const T* gyp = cx.gy.data() + p * K2;
      // dP_j = dout . v_j; dv_j += P_j dout
      V gv[D ? D : 1];
      if constexpr (D > 0) {
#pragma GCC unroll 16
        for (int c = 0; c < D; ++c) gv[c] = ldv<VB>(go + c * qs);
      }
      V t = V{};
      for (int64_t j = 0; j < K2; ++j) {
        const V w = P[j] * inv;
        P[j] = w;
        const int64_t o = static_cast<int64_t>(src[j]) * L;
        const T* vp = Vb + o;
        T* dvp = dVb + o;
        V acc = V{};
        if constexpr (D > 0) {
#pragma GCC unroll 16
          for (int c = 0; c < D; ++c) {
            acc += gv[c] * ldv<VB>(vp + c * plane);
            stv<VB>(dvp + c * plane, ldv<VB>(dvp + c * plane) + w * gv[c]);
          }
        } else {
          for (int64_t c = 0; c < d; ++c) {
            const V gc = ldv<VB>(go + c * qs);
            acc += gc * ldv<VB>(vp + c * plane);
            stv<VB>(dvp + c * plane, ldv<VB>(dvp + c * plane) + w * gc);
          }
        }
        dP[j] = acc;
        t += w * acc;
      }
      // dlogit_j = P_j (dP_j - sum_i P_i dP_i); dq = sum_j dlogit_j key_j; dk_j += dlogit_j q
      V qv[D ? D : 1];
      V dq[D ? D : 1];
      if constexpr (D > 0) {
#pragma GCC unroll 16
        for (int c = 0; c < D; ++c) { qv[c] = ldv<VB>(q + c * qs); dq[c] = V{}; }
      }
      V dqx = V{}, dqy = V{};
      for (int64_t j = 0; j < K2; ++j) {
        const V dl = P[j] * (dP[j] - t);
        const int64_t o = src[j];
        dqx += dl * gxp[j];
        dqy += dl * gyp[j];
        const T* kp = Kb + o * L;
        T* dkp = dKb + o * L;
        if constexpr (D > 0) {
#pragma GCC unroll 16
          for (int c = 0; c < D; ++c) {
            dq[c] += dl * ldv<VB>(kp + c * plane);
            stv<VB>(dkp + c * plane, ldv<VB>(dkp + c * plane) + dl * qv[c]);
          }
        } else {
          for (int64_t c = 0; c < d; ++c) {
            stv<VB>(dkp + c * plane, ldv<VB>(dkp + c * plane) + dl * ldv<VB>(q + c * qs));
          }
        }
        dP[j] = dl;  // kept for the runtime-d query gradient below
      }
      if constexpr (D == 0) {
        for (int64_t c = 0; c < d; ++c) {
          V a = V{};
          for (int64_t j = 0; j < K2; ++j) a += dP[j] * ldv<VB>(Kb + static_cast<int64_t>(src[j]) * L + c * plane);
          stv<VB>(DQb + c * qs + p * L, a);
        }
      } else {
#pragma GCC unroll 16
        for (int c = 0; c < D; ++c) stv<VB>(DQb + c * qs + p * L, dq[c]);
      }
      stv<VB>(DQb + d * qs + p * L, dqx);
      stv<VB>(DQb + (d + 1) * qs + p * L, dqy);
    }
}

// dst[b, c_off + n*d + c][h, w] += scale * src[c][h*W + w][l] for the nl planes (the inverse of gather_planes).
template <typename T, int L>
void fold_planes(const LaneGeo& g, const T* src, int64_t c_off, int64_t bn0, int64_t nl, int64_t cs, T scale,
                 T* dst) {
  const int64_t HW = g.HW();
  T* d[L];
  for (int64_t c = 0; c < g.d; ++c) {
    for (int64_t l = 0; l < nl; ++l) {
      const int64_t bn = bn0 + l, b = bn / g.N, n = bn % g.N;
      d[l] = dst + (b * 3 * g.C + c_off + n * g.d + c) * HW;
    }
    from_lanes<true, T, L>(src + c * cs, HW, d, nl, scale);
  }
}

LaneGeo lane_geometry(const at::Tensor& qkv, const at::Tensor& q, const at::Tensor& grid, int64_t heads, int64_t ka,
                      int64_t S, int64_t dil, int64_t pad) {
  TORCH_CHECK(qkv.dim() == 4 && qkv.is_contiguous() && qkv.device().is_cpu(),
              "local attention lanes: qkv must be a contiguous CPU (B, 3C, H, W) map");
  TORCH_CHECK(q.dim() == 4 && q.is_contiguous() && grid.dim() == 4 && grid.is_contiguous(),
              "local attention lanes: q (BN, d + 2, H', W') and grid (2, Hp, S, Wq) must be contiguous");
  TORCH_CHECK(q.scalar_type() == qkv.scalar_type() && grid.scalar_type() == qkv.scalar_type(),
              "local attention lanes: one dtype for all inputs");
  LaneGeo g;
  g.B = qkv.size(0); g.N = heads; g.C = qkv.size(1) / 3; g.H = qkv.size(2); g.W = qkv.size(3);
  TORCH_CHECK(heads >= 1 && qkv.size(1) == 3 * g.C && g.C % heads == 0, "local attention lanes: 3C channels, C % heads == 0");
  g.d = g.C / heads; g.S = S; g.dil = dil; g.ka = ka; g.pad = pad;
  TORCH_CHECK(S >= 1 && dil >= 1 && ka >= 1 && pad >= 0 && pad < g.H && pad < g.W,
              "local attention lanes: reflection needs pad < H and pad < W");
  g.Ho = (g.H - 1) / S + 1; g.Wo = (g.W - 1) / S + 1;
  g.Hp = g.H + 2 * pad; g.Wpd = g.W + 2 * pad;
  TORCH_CHECK((g.Ho - 1) * S + (ka - 1) * dil < g.Hp && (g.Wo - 1) * S + (ka - 1) * dil < g.Wpd,
              "local attention lanes: windows leave the padded map");
  TORCH_CHECK(q.size(0) == g.B * heads && q.size(1) == g.d + 2 && q.size(2) == g.Ho && q.size(3) == g.Wo,
              "local attention lanes: q must be (B * heads, d + 2, H', W')");
  TORCH_CHECK(grid.size(0) == 2 && grid.size(1) == g.Hp && grid.size(2) == S && grid.size(3) * S >= g.Wpd,
              "local attention lanes: grid must be (2, Hp, S, Wq)");
  return g;
}

template <typename T, int VB>
LaneCtx<T, VB> lane_context(const LaneGeo& g, const at::Tensor& grid) {
  const std::vector<T> gp = unsplit_grid<T>(g, grid);
  const int64_t K2 = g.ka * g.ka, n = g.HWo() * K2;
  constexpr int L = LaneCtx<T, VB>::L;
  LaneCtx<T, VB> cx{g, channel_stride<T>(g.HW() * L), channel_stride<T>(g.HWo() * L), std::vector<int32_t>(n),
                    std::vector<T>(n), std::vector<T>(n)};
  for (int64_t y = 0; y < g.Ho; ++y)
    for (int64_t x = 0; x < g.Wo; ++x)
      for (int64_t i = 0; i < g.ka; ++i)
        for (int64_t b = 0; b < g.ka; ++b) {
          const int64_t r = y * g.S + i * g.dil, c = x * g.S + b * g.dil, t = (y * g.Wo + x) * K2 + i * g.ka + b;
          cx.src[t] = static_cast<int32_t>(reflect_index(r - g.pad, g.H) * g.W + reflect_index(c - g.pad, g.W));
          cx.gx[t] = gp[r * g.Wpd + c];
          cx.gy[t] = gp[(g.Hp + r) * g.Wpd + c];
        }
  return cx;
}

// CALL with constexpr int D: the head dim where it has its own instance (the dims of the default cells
// and powers of two), else 0 (d read at run time)
#define LANES_WITH_HEAD_DIM(d, CALL)                 \
  switch (d) {                                       \
    case 2: { constexpr int D = 2; CALL; } break;    \
    case 4: { constexpr int D = 4; CALL; } break;    \
    case 5: { constexpr int D = 5; CALL; } break;    \
    case 8: { constexpr int D = 8; CALL; } break;    \
    case 9: { constexpr int D = 9; CALL; } break;    \
    case 13: { constexpr int D = 13; CALL; } break;  \
    case 16: { constexpr int D = 16; CALL; } break;  \
    default: { constexpr int D = 0; CALL; } break;   \
  }

}  // namespace

at::Tensor lanes_forward(const at::Tensor& qkv, const at::Tensor& q, const at::Tensor& grid, int64_t heads, int64_t ka,
                         int64_t S, int64_t dil, int64_t pad) {
  const LaneGeo g = lane_geometry(qkv, q, grid, heads, ka, S, dil, pad);
  auto out = at::empty({g.B, g.C, g.Ho, g.Wo}, qkv.options());
  if (g.BN() == 0 || g.d == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "local_attention_lanes_forward", [&] {
    using T = scalar_t;
    constexpr int VB = kRegBytes, L = VB / static_cast<int>(sizeof(T));
    using V = typename VecB<T, VB>::type;
    const LaneCtx<T, VB> cx = lane_context<T, VB>(g, grid);
    const T* X = qkv.data_ptr<T>();
    const T* Q = q.data_ptr<T>();
    T* O = out.data_ptr<T>();
    const int64_t ngroups = (g.BN() + L - 1) / L, K2 = ka * ka;
    // buffers an odd number of cache lines apart too
    const int64_t n_kv = g.d * cx.ks + 64 / sizeof(T), n_q = (g.d + 2) * cx.qs;
    parallel_tasks(ngroups, [&](int64_t t) {
      thread_local Scratch<T> scratch;
      T* Kb = scratch.get(2 * n_kv + 2 * n_q + K2 * L);
      T* Vb = Kb + n_kv;
      T* Qb = Vb + n_kv;
      T* Ob = Qb + n_q;
      V* P = reinterpret_cast<V*>(Ob + n_q);
      const int64_t bn0 = t * L, nl = std::min<int64_t>(L, g.BN() - bn0);
      gather_planes<T, L>(g, X, g.C, bn0, nl, cx.ks, Kb);
      gather_planes<T, L>(g, X, 2 * g.C, bn0, nl, cx.ks, Vb);
      gather_plain<T, L>(Q, g.d + 2, g.HWo(), bn0, nl, cx.qs, Qb);
      LANES_WITH_HEAD_DIM(g.d, (lane_forward_group<T, VB, D>(cx, g.d, Qb, Kb, Vb, Ob, P)));
      scatter_plain<T, L>(Ob, g.d, g.HWo(), bn0, nl, cx.qs, O);
    });
  });
  return out;
}

at::Tensor lanes_backward_fold(const at::Tensor& dout_in, const at::Tensor& qkv, const at::Tensor& q,
                               const at::Tensor& grid, at::Tensor dst, int64_t heads, int64_t ka, int64_t S,
                               int64_t dil, int64_t pad, double scale) {
  const LaneGeo g = lane_geometry(qkv, q, grid, heads, ka, S, dil, pad);
  const at::Tensor dout = dout_in.contiguous();
  TORCH_CHECK(dout.sizes() == at::IntArrayRef({g.B, g.C, g.Ho, g.Wo}) && dout.scalar_type() == qkv.scalar_type(),
              "local attention lanes: the output gradient must be (B, C, H', W') of the inputs' dtype");
  TORCH_CHECK(dst.sizes() == qkv.sizes() && dst.is_contiguous() && dst.scalar_type() == qkv.scalar_type(),
              "local attention lanes: dst must be a contiguous map shaped as qkv");
  auto dq = at::empty_like(q);
  if (g.BN() == 0 || g.d == 0) return dq.zero_();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "local_attention_lanes_backward", [&] {
    using T = scalar_t;
    constexpr int VB = kRegBytes, L = VB / static_cast<int>(sizeof(T));
    using V = typename VecB<T, VB>::type;
    const LaneCtx<T, VB> cx = lane_context<T, VB>(g, grid);
    const T* X = qkv.data_ptr<T>();
    const T* Q = q.data_ptr<T>();
    const T* Gd = dout.data_ptr<T>();
    T* DQ = dq.data_ptr<T>();
    T* DST = dst.data_ptr<T>();
    const T sc = static_cast<T>(scale);
    const int64_t ngroups = (g.BN() + L - 1) / L, K2 = ka * ka;
    const int64_t n_kv = g.d * cx.ks + 64 / sizeof(T), n_q = (g.d + 2) * cx.qs, n_g = g.d * cx.qs + 64 / sizeof(T);
    parallel_tasks(ngroups, [&](int64_t t) {
      thread_local Scratch<T> scratch;
      T* Kb = scratch.get(4 * n_kv + 2 * n_q + n_g + 2 * K2 * L);
      T* Vb = Kb + n_kv;
      T* dKb = Vb + n_kv;
      T* dVb = dKb + n_kv;
      T* Qb = dVb + n_kv;
      T* DQb = Qb + n_q;
      T* Gb = DQb + n_q;
      V* P = reinterpret_cast<V*>(Gb + n_g);
      V* dP = P + K2;
      const int64_t bn0 = t * L, nl = std::min<int64_t>(L, g.BN() - bn0);
      std::fill(dKb, dKb + 2 * n_kv, T(0));
      gather_planes<T, L>(g, X, g.C, bn0, nl, cx.ks, Kb);
      gather_planes<T, L>(g, X, 2 * g.C, bn0, nl, cx.ks, Vb);
      gather_plain<T, L>(Q, g.d + 2, g.HWo(), bn0, nl, cx.qs, Qb);
      gather_plain<T, L>(Gd, g.d, g.HWo(), bn0, nl, cx.qs, Gb);
      LANES_WITH_HEAD_DIM(g.d, (lane_backward_group<T, VB, D>(cx, g.d, Qb, Gb, Kb, Vb, dKb, dVb, DQb, P, dP)));
      scatter_plain<T, L>(DQb, g.d + 2, g.HWo(), bn0, nl, cx.qs, DQ);
      fold_planes<T, L>(g, dKb, g.C, bn0, nl, cx.ks, sc, DST);
      fold_planes<T, L>(g, dVb, 2 * g.C, bn0, nl, cx.ks, sc, DST);
    });
  });
  return dq;
}

// The ACmix conv path's grouped k x k convolution for small maps: L images in the vector lanes.
//
// Same operator as conv_path.cpp (x (B, C, d, H, W) read in place, w (d*N, C, k, k), zero padding k // 2,
// out (B, d*N, Ho, Wo)); that kernel runs its vectors along a group's flat pixel index, which on 4x4 to
// 16x16 maps leaves lanes idle and spends a task's time on copies. Here a task is (L images, group i):
// the group's C input planes of those images go into a private buffer X (C, H*W + 1, L) (the extra
// pixel is zero: every tap that falls in the padding reads it, through a table shared by all tasks),
// and every FMA is a broadcast weight times one vector of L images. The backward accumulates dx in the
// same layout (taps in the padding add into the spare pixel, dropped) and dW per task as vectors,
// summed over the lanes in a fixed order into the task's own slot (images group, d, N, C, k, k); the
// caller sums the slots. Nothing depends on the thread count.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "lanes.h"
#include "simd.h"
#include "tasks.h"

namespace {

struct CGeo {
  int64_t B, C, d, H, W, N, k, S, p, Ho, Wo;
  int64_t HW() const { return H * W; }
  int64_t HWo() const { return Ho * Wo; }
  int64_t K2() const { return k * k; }
};

CGeo cgeometry(const at::Tensor& x, const at::Tensor& w, int64_t S) {
  TORCH_CHECK(x.dim() == 5 && w.dim() == 4 && w.size(2) == w.size(3),
              "conv path lanes: expected x (B, C, d, H, W) and w (d*N, C, k, k)");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu() && x.is_contiguous() && w.is_contiguous() &&
                  x.scalar_type() == w.scalar_type(),
              "conv path lanes: contiguous CPU tensors of one dtype");
  CGeo g;
  g.B = x.size(0); g.C = x.size(1); g.d = x.size(2); g.H = x.size(3); g.W = x.size(4);
  g.k = w.size(2); g.S = S; g.p = g.k / 2;
  TORCH_CHECK(S >= 1 && g.k % 2 == 1 && w.size(1) == g.C && g.d > 0 && w.size(0) % g.d == 0,
              "conv path lanes: stride >= 1, odd k, w (d*N, C, k, k) matching x");
  g.N = w.size(0) / g.d;
  g.Ho = (g.H - 1) / S + 1; g.Wo = (g.W - 1) / S + 1;
  return g;
}

// tap t = a*k + b of output pixel p reads input pixel src[p*K2 + t], or HW (the zero pixel) in the padding
std::vector<int32_t> tap_table(const CGeo& g) {
  std::vector<int32_t> t(g.HWo() * g.K2());
  for (int64_t y = 0; y < g.Ho; ++y)
    for (int64_t x = 0; x < g.Wo; ++x)
      for (int64_t a = 0; a < g.k; ++a)
        for (int64_t b = 0; b < g.k; ++b) {
          const int64_t h = y * g.S + a - g.p, ww = x * g.S + b - g.p;
          const bool in = h >= 0 && h < g.H && ww >= 0 && ww < g.W;
          t[(y * g.Wo + x) * g.K2() + a * g.k + b] = static_cast<int32_t>(in ? h * g.W + ww : g.HW());
        }
  return t;
}

// group i's weights as wg[(c*K2 + t)*N + n] = w[i*N + n][c][t]
template <typename T>
void group_weights(const CGeo& g, const T* w, int64_t i, T* wg) {
  const int64_t K2 = g.K2();
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t t = 0; t < K2; ++t) wg[(c * K2 + t) * g.N + n] = w[((i * g.N + n) * g.C + c) * K2 + t];
}

// X[c][hw][l] = x[b0 + l][c][i][hw] for l < nl (zero for l >= nl), and X[c][HW][l] = 0
template <typename T, int L>
void gather_group(const CGeo& g, const T* x, int64_t b0, int64_t nl, int64_t i, int64_t cs, T* X) {
  const int64_t HW = g.HW();
  const T* src[L];
  for (int64_t c = 0; c < g.C; ++c) {
    for (int64_t l = 0; l < nl; ++l) src[l] = x + (((b0 + l) * g.C + c) * g.d + i) * HW;
    to_lanes<T, L>(src, nl, HW, X + c * cs);
    std::fill(X + c * cs + HW * L, X + c * cs + (HW + 1) * L, T(0));
  }
}

constexpr int kNB = 4;  // output channels per register block

// NB output channels n0 .. n0 + NB - 1 of NP output pixels (taps src[0..K2), src[K2..2*K2), ...), in
// registers (every index a compile-time one), stored to O[n][p][:] (channel stride os). Two pixels share
// each weight broadcast and give 2*NB independent accumulators, enough to cover the FMA latency.
template <typename T, int VB, int NB, int NP>
inline void forward_pixels(const CGeo& g, const int32_t* src, const T* wg, const T* X, int64_t cs, int64_t n0,
                           T* O, int64_t os, int64_t p) {
  using V = typename VecB<T, VB>::type;
  constexpr int L = VB / static_cast<int>(sizeof(T));
  const int64_t K2 = g.K2();
  V acc[NP][NB];
#pragma GCC unroll 2
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) acc[q][n] = V{};
  for (int64_t c = 0; c < g.C; ++c) {
    const T* xc = X + c * cs;
    const T* wc = wg + c * K2 * g.N + n0;
    for (int64_t t = 0; t < K2; ++t) {
      V xv[NP];
#pragma GCC unroll 2
      for (int q = 0; q < NP; ++q) xv[q] = ldv<VB>(xc + static_cast<int64_t>(src[q * K2 + t]) * L);
      const T* wt = wc + t * g.N;
#pragma GCC unroll 4
      for (int n = 0; n < NB; ++n) {
        const T wn = wt[n];
#pragma GCC unroll 2
        for (int q = 0; q < NP; ++q) acc[q][n] += wn * xv[q];
      }
    }
  }
#pragma GCC unroll 2
  for (int q = 0; q < NP; ++q)
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) stv<VB>(O + (n0 + n) * os + (p + q) * L, acc[q][n]);
}

template <typename T, int VB, int NP>
inline void forward_block(const CGeo& g, const int32_t* src, const T* wg, const T* X, int64_t cs, T* O,
                          int64_t os, int64_t p) {
  for (int64_t n0 = 0; n0 < g.N; n0 += kNB) {
    switch (std::min<int64_t>(kNB, g.N - n0)) {
      case 1: forward_pixels<T, VB, 1, NP>(g, src, wg, X, cs, n0, O, os, p); break;
      case 2: forward_pixels<T, VB, 2, NP>(g, src, wg, X, cs, n0, O, os, p); break;
      case 3: forward_pixels<T, VB, 3, NP>(g, src, wg, X, cs, n0, O, os, p); break;
      default: forward_pixels<T, VB, 4, NP>(g, src, wg, X, cs, n0, O, os, p); break;
    }
  }
}

// group i of images b0 .. b0 + nl - 1: the output planes in lanes (O, N x HWo x L), then into out
template <typename T, int VB>
void forward_task(const CGeo& g, const int32_t* tab, const T* wg, const T* X, int64_t cs, T* O, int64_t os,
                  int64_t b0, int64_t nl, int64_t i, T* out) {
  constexpr int L = VB / static_cast<int>(sizeof(T));
  const int64_t K2 = g.K2(), HWo = g.HWo();
  int64_t p = 0;
  for (; p + 2 <= HWo; p += 2) forward_block<T, VB, 2>(g, tab + p * K2, wg, X, cs, O, os, p);
  if (p < HWo) forward_block<T, VB, 1>(g, tab + p * K2, wg, X, cs, O, os, p);
  T* dst[L];
  for (int64_t n = 0; n < g.N; ++n) {
    for (int64_t l = 0; l < nl; ++l) dst[l] = out + ((b0 + l) * g.d * g.N + i * g.N + n) * HWo;
    from_lanes<false, T, L>(O + n * os, HWo, dst, nl);
  }
}

// dx (in the lanes buffer DX) from NB output-gradient channels n0 .. of output pixel p
template <typename T, int VB, int NB>
inline void dx_pixel(const CGeo& g, const int32_t* src, const T* wg, T* DX, const T* G, int64_t cs, int64_t gs,
                     int64_t p, int64_t n0) {
  using V = typename VecB<T, VB>::type;
  constexpr int L = VB / static_cast<int>(sizeof(T));
  const int64_t K2 = g.K2();
  V gv[NB];
#pragma GCC unroll 4
  for (int n = 0; n < NB; ++n) gv[n] = ldv<VB>(G + (n0 + n) * gs + p * L);
  for (int64_t c = 0; c < g.C; ++c) {
    T* dxc = DX + c * cs;
    const T* wc = wg + c * K2 * g.N + n0;
    for (int64_t t = 0; t < K2; ++t) {
      const T* wt = wc + t * g.N;
      V s = wt[0] * gv[0];
#pragma GCC unroll 4
      for (int n = 1; n < NB; ++n) s += wt[n] * gv[n];
      T* dp = dxc + static_cast<int64_t>(src[t]) * L;
      stv<VB>(dp, ldv<VB>(dp) + s);
    }
  }
}

// dw[n][c][t] for NB channels n0 ..: sum over pixels and lanes of G[n][p] X[c][src(p, t)], lanes summed in order
template <typename T, int VB, int NB>
inline void dw_tap(const CGeo& g, const int32_t* tab, const T* xc, const T* G, int64_t gs, int64_t t, int64_t n0,
                   int64_t c, T* dwslot) {
  using V = typename VecB<T, VB>::type;
  constexpr int L = VB / static_cast<int>(sizeof(T));
  const int64_t K2 = g.K2(), HWo = g.HWo();
  V acc[NB];
#pragma GCC unroll 4
  for (int n = 0; n < NB; ++n) acc[n] = V{};
  for (int64_t p = 0; p < HWo; ++p) {
    const V xv = ldv<VB>(xc + static_cast<int64_t>(tab[p * K2 + t]) * L);
#pragma GCC unroll 4
    for (int n = 0; n < NB; ++n) acc[n] += ldv<VB>(G + (n0 + n) * gs + p * L) * xv;
  }
  alignas(64) T res[NB * L];
#pragma GCC unroll 4
  for (int n = 0; n < NB; ++n) stv<VB>(res + n * L, acc[n]);
  for (int n = 0; n < NB; ++n) {
    T s = 0;
    for (int l = 0; l < L; ++l) s += res[n * L + l];
    dwslot[((n0 + n) * g.C + c) * K2 + t] = s;
  }
}

template <typename T, int VB>
void backward_task(const CGeo& g, const int32_t* tab, const T* wg, const T* X, T* DX, const T* G, int64_t cs,
                   int64_t gs, bool need_dx, bool need_dw, T* dwslot) {
  const int64_t K2 = g.K2(), HWo = g.HWo();
  if (need_dx)
    for (int64_t p = 0; p < HWo; ++p) {
      const int32_t* src = tab + p * K2;
      for (int64_t n0 = 0; n0 < g.N; n0 += kNB) {
        switch (std::min<int64_t>(kNB, g.N - n0)) {
          case 1: dx_pixel<T, VB, 1>(g, src, wg, DX, G, cs, gs, p, n0); break;
          case 2: dx_pixel<T, VB, 2>(g, src, wg, DX, G, cs, gs, p, n0); break;
          case 3: dx_pixel<T, VB, 3>(g, src, wg, DX, G, cs, gs, p, n0); break;
          default: dx_pixel<T, VB, 4>(g, src, wg, DX, G, cs, gs, p, n0); break;
        }
      }
    }
  if (need_dw)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t t = 0; t < K2; ++t)
        for (int64_t n0 = 0; n0 < g.N; n0 += kNB) {
          const T* xc = X + c * cs;
          switch (std::min<int64_t>(kNB, g.N - n0)) {
            case 1: dw_tap<T, VB, 1>(g, tab, xc, G, gs, t, n0, c, dwslot); break;
            case 2: dw_tap<T, VB, 2>(g, tab, xc, G, gs, t, n0, c, dwslot); break;
            case 3: dw_tap<T, VB, 3>(g, tab, xc, G, gs, t, n0, c, dwslot); break;
            default: dw_tap<T, VB, 4>(g, tab, xc, G, gs, t, n0, c, dwslot); break;
          }
        }
}

template <typename T>
T* scratch(std::vector<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

}  // namespace

at::Tensor lanes_forward(const at::Tensor& x, const at::Tensor& w, int64_t stride) {
  const CGeo g = cgeometry(x, w, stride);
  auto out = at::empty({g.B, g.d * g.N, g.Ho, g.Wo}, x.options());
  if (g.B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_path_lanes_forward", [&] {
    using T = scalar_t;
    constexpr int VB = kRegBytes, L = VB / static_cast<int>(sizeof(T));
    const std::vector<int32_t> tab = tap_table(g);
    const int64_t cs = channel_stride<T>((g.HW() + 1) * L), os = channel_stride<T>(g.HWo() * L);
    const int64_t nimg = (g.B + L - 1) / L;
    const T* Xp = x.data_ptr<T>();
    const T* Wp = w.data_ptr<T>();
    T* O = out.data_ptr<T>();
    parallel_tasks(nimg * g.d, [&](int64_t task) {
      thread_local std::vector<T> buf;
      const int64_t ti = task / g.d, i = task % g.d, b0 = ti * L, nl = std::min<int64_t>(L, g.B - b0);
      T* X = scratch(buf, g.C * cs + g.N * os + g.C * g.K2() * g.N);
      T* Ob = X + g.C * cs;
      T* wg = Ob + g.N * os;
      gather_group<T, L>(g, Xp, b0, nl, i, cs, X);
      group_weights(g, Wp, i, wg);
      forward_task<T, VB>(g, tab.data(), wg, X, cs, Ob, os, b0, nl, i, O);
    });
  });
  return out;
}

// (dx or empty, dW partials (images groups, d, N, C, k, k) or empty)
std::vector<at::Tensor> lanes_backward(const at::Tensor& dout_in, const at::Tensor& x, const at::Tensor& w,
                                       int64_t stride, bool need_dx, bool need_dw) {
  const CGeo g = cgeometry(x, w, stride);
  const at::Tensor dout = dout_in.contiguous();
  TORCH_CHECK(dout.sizes() == at::IntArrayRef({g.B, g.d * g.N, g.Ho, g.Wo}) && dout.scalar_type() == x.scalar_type(),
              "conv path lanes: the output gradient must be (B, d*N, Ho, Wo) of the inputs' dtype");
  const int64_t L = kRegBytes / static_cast<int64_t>(x.element_size()), nimg = (g.B + L - 1) / L;
  auto dx = need_dx ? at::empty_like(x) : at::empty({0}, x.options());
  auto dwp = need_dw ? at::empty({nimg, g.d, g.N, g.C, g.k, g.k}, x.options()) : at::empty({0}, x.options());
  if (g.B == 0) return {dx, dwp};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_path_lanes_backward", [&] {
    using T = scalar_t;
    constexpr int VB = kRegBytes, LL = VB / static_cast<int>(sizeof(T));
    const std::vector<int32_t> tab = tap_table(g);
    const int64_t cs = channel_stride<T>((g.HW() + 1) * LL), gs = channel_stride<T>(g.HWo() * LL), HW = g.HW(), HWo = g.HWo();
    const T* Xp = x.data_ptr<T>();
    const T* Wp = w.data_ptr<T>();
    const T* Gp = dout.data_ptr<T>();
    T* DXp = need_dx ? dx.data_ptr<T>() : nullptr;
    T* DW = need_dw ? dwp.data_ptr<T>() : nullptr;
    const int64_t slot = g.N * g.C * g.K2();
    parallel_tasks(nimg * g.d, [&](int64_t task) {
      thread_local std::vector<T> buf;
      const int64_t ti = task / g.d, i = task % g.d, b0 = ti * LL, nl = std::min<int64_t>(LL, g.B - b0);
      T* X = scratch(buf, 2 * g.C * cs + g.N * gs + g.C * g.K2() * g.N);
      T* DX = X + g.C * cs;
      T* G = DX + g.C * cs;
      T* wg = G + g.N * gs;
      if (need_dw) gather_group<T, LL>(g, Xp, b0, nl, i, cs, X);
      const T* gsrc[LL];
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t l = 0; l < nl; ++l) gsrc[l] = Gp + ((b0 + l) * g.d * g.N + i * g.N + n) * HWo;
        to_lanes<T, LL>(gsrc, nl, HWo, G + n * gs);
      }
      group_weights(g, Wp, i, wg);
      if (need_dx) std::fill(DX, DX + g.C * cs, T(0));
      backward_task<T, VB>(g, tab.data(), wg, X, DX, G, cs, gs, need_dx, need_dw, need_dw ? DW + (ti * g.d + i) * slot : nullptr);
      if (need_dx) {
        T* dst[LL];
        for (int64_t c = 0; c < g.C; ++c) {
          for (int64_t l = 0; l < nl; ++l) dst[l] = DXp + (((b0 + l) * g.C + c) * g.d + i) * HW;
          from_lanes<false, T, LL>(DX + c * cs, HW, dst, nl);
        }
      }
    });
  });
  return {dx, dwp};
}

// Blocks of output rows of the local attention kernel: the geometry of its inputs, how a block's
// (output row, window row) pairs group into register tiles, the block-level passes (correlate,
// softmax, aggregate, scatter) over per-thread buffers, and row copies in and out of those buffers.
// Shared by the forward, the backward and pad_split.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "local_attention_tiles.h"
#include "softmax_exp.h"
#include "tasks.h"

namespace {

struct Geometry {
  int64_t BN, Cq, Ck, Cv, G, Ho, Wo, Hp, S, Wq, ka, dil;
  int64_t K2() const { return ka * ka; }
  int64_t plane() const { return Hp * S * Wq; }  // one padded channel
  int64_t row() const { return S * Wq; }         // one padded row (all phases)
  int64_t col(int64_t b) const { return ((b * dil) % S) * Wq + (b * dil) / S; }
  std::vector<int64_t> cols() const {
    std::vector<int64_t> c(ka);
    for (int64_t b = 0; b < ka; ++b) c[b] = col(b);
    return c;
  }
};
// 64-byte aligned scratch owned by one thread.
template <typename T>
struct Scratch {
  std::unique_ptr<T, decltype(&std::free)> p{nullptr, &std::free};
  int64_t n = 0;
  T* get(int64_t need) {
    if (need > n) {
      const size_t bytes = ((static_cast<size_t>(need) * sizeof(T) + 63) / 64) * 64;
      p.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
      TORCH_CHECK(p, "local attention: out of memory for a scratch buffer");
      n = need;
    }
    return p.get();
  }
};

// One block of output rows y0 .. y0 + nrows - 1 of one (b, n): the (y, i) pairs per padded row r,
// in groups of at most max_nr(nb) rows, and the scratch layouts.
struct Block {
  struct Group { int64_t r; int n; int yy[kMaxScatterNR]; int i[kMaxScatterNR]; };
  int64_t y0, nrows, R, Wp;
  std::vector<Group> groups;
  Block(const Geometry& g, int64_t y0_, int64_t nrows_, int64_t R_, int64_t Wp_, int nr_max)
      : y0(y0_), nrows(nrows_), R(R_), Wp(Wp_) {
    const int64_t rlo = y0 * g.S, rhi = (y0 + nrows - 1) * g.S + (g.ka - 1) * g.dil;
    for (int64_t r = rlo; r <= rhi; ++r) {
      int yys[64], is[64], n = 0;
      for (int64_t yy = 0; yy < nrows && n < 64; ++yy) {
        const int64_t d = r - (y0 + yy) * g.S;
        if (d < 0 || d % g.dil != 0 || d / g.dil >= g.ka) continue;
        yys[n] = static_cast<int>(yy);
        is[n++] = static_cast<int>(d / g.dil);
      }
      // balanced groups (7 pairs at most 3 per group: 3 + 2 + 2, not 3 + 3 + 1): a one-row tile
      // spends one load per FMA
      const int ngroups = (n + nr_max - 1) / nr_max;
      for (int k = 0, at = 0; k < ngroups; ++k) {
        Group cur{r, (n - at) / (ngroups - k), {}, {}};
        for (int p = 0; p < cur.n; ++p) { cur.yy[p] = yys[at + p]; cur.i[p] = is[at + p]; }
        at += cur.n;
        groups.push_back(cur);
      }
    }
  }
};

// L[yy][j][x] = sum_{c < C1 + C2} a[c][yy][x] * key(c)[r][col(b) + x]: a (C1 + C2, R, Wp) block buffer,
// key(c) channel c of key1 (C1, Hp, S, Wq) for c < C1, else channel c - C1 of key2; L (R, K2, Wp).
// With M (R, Wp) given, M[yy][x] = max_j L[yy][j][x].
template <typename T>
void block_correlate(const Geometry& g, const Block& blk, const int64_t* cols, const T* a, const T* key1, int64_t C1,
                     const T* key2, int64_t C2, T* L, T* M) {
  if (M) std::fill(M, M + blk.R * blk.Wp, -std::numeric_limits<T>::infinity());
  const int64_t K2 = g.K2(), Wp = blk.Wp;
  for (const auto& gr : blk.groups) {
    const int64_t roff = gr.r * g.row();
    for_x_tiles<T>(Wp, [&](int64_t x0, auto tag) {
      constexpr int VB = decltype(tag)::bytes;
      for (int64_t b0 = 0; b0 < g.ka; b0 += kMaxNB) {
        const int nb = static_cast<int>(std::min<int64_t>(kMaxNB, g.ka - b0));
        const T* ap[kMaxNR];
        T* op[kMaxNR];
        T* mp[kMaxNR];
        for (int p = 0; p < gr.n; ++p) {
          ap[p] = a + gr.yy[p] * Wp + x0;
          op[p] = L + (gr.yy[p] * K2 + gr.i[p] * g.ka + b0) * Wp + x0;
          mp[p] = M ? M + gr.yy[p] * Wp + x0 : nullptr;
        }
        corr<T, VB>(gr.n, nb, ap, blk.R * Wp, key1 + roff + x0, C1, key2 ? key2 + roff + x0 : nullptr, C2, g.plane(),
                cols + b0, op, Wp, M ? mp : nullptr);
      }
    });
  }
}

// out[c][yy][x] = sum_j w[yy][j][x] * val(c)[r][col(b) + x]: w (R, K2, Wp), out (C1 + C2, R, Wp), zeroed
// here; val(c) channel c of val1 for c < C1, else channel c - C1 of val2.
template <typename T>
void block_aggregate(const Geometry& g, const Block& blk, const int64_t* cols, const T* w, const T* val1, int64_t C1,
                     const T* val2, int64_t C2, T* out) {
  const int64_t C = C1 + C2;
  const int64_t K2 = g.K2(), Wp = blk.Wp;
  std::fill(out, out + C * blk.R * Wp, T(0));
  for (const auto& gr : blk.groups) {
    const int64_t roff = gr.r * g.row();
    for_x_tiles<T>(Wp, [&](int64_t x0, auto tag) {
      constexpr int VB = decltype(tag)::bytes;
      for (int64_t b0 = 0; b0 < g.ka; b0 += kMaxNB) {
        const int nb = static_cast<int>(std::min<int64_t>(kMaxNB, g.ka - b0));
        const T* wp[kMaxNR];
        T* op[kMaxNR];
        for (int p = 0; p < gr.n; ++p) {
          wp[p] = w + (gr.yy[p] * K2 + gr.i[p] * g.ka + b0) * Wp + x0;
          op[p] = out + gr.yy[p] * Wp + x0;
        }
        agg<T, VB>(gr.n, nb, wp, Wp, val1 + roff + x0, C1, val2 ? val2 + roff + x0 : nullptr, C2, g.plane(), cols + b0,
               op, blk.R * Wp);
      }
    });
  }
}

// dst(c)[r][col(b) + x] += sum over the block's (yy, i) of w[yy][j][x] * a[c][yy][x]; dst (C, Hp, S, Wq)
// with at least one vector of slack after it.
template <typename T>
void block_scatter(const Geometry& g, const Block& blk, const int64_t* cols, const T* w, const T* a, int64_t C,
                   T* dst) {
  const int64_t K2 = g.K2(), Wp = blk.Wp;
  for (const auto& gr : blk.groups) {
    T* drow = dst + gr.r * g.row();
    for_x_tiles<T>(Wp, [&](int64_t x0, auto tag) {
      constexpr int VB = decltype(tag)::bytes;
      for (int64_t b0 = 0; b0 < g.ka; b0 += kMaxNB) {
        const int nb = static_cast<int>(std::min<int64_t>(kMaxNB, g.ka - b0));
        const T* wp[kMaxScatterNR];
        const T* ap[kMaxScatterNR];
        for (int p = 0; p < gr.n; ++p) {
          wp[p] = w + (gr.yy[p] * K2 + gr.i[p] * g.ka + b0) * Wp + x0;
          ap[p] = a + gr.yy[p] * Wp + x0;
        }
        scatter<T, VB>(gr.n, nb, wp, Wp, ap, blk.R * Wp, C, cols + b0, drow + x0, g.plane());
      }
    });
  }
}

// Unnormalised softmax over j, in place: L[yy][j][x] = exp(L[yy][j][x] - M[yy][x]); M[yy][x] becomes
// 1 / sum_j of them (M: the row maxima from block_correlate).
template <typename T>
void block_softmax_exp(const Geometry& g, const Block& blk, T* L, T* M) {
  const int64_t K2 = g.K2(), Wp = blk.Wp;
  for (int64_t yy = 0; yy < blk.nrows; ++yy) {
    T* Ly = L + yy * K2 * Wp;
    for_x_tiles<T>(Wp, [&](int64_t x0, auto tag) {
      constexpr int VB = decltype(tag)::bytes;
      using V = typename VecB<T, VB>::type;
      const V m = ldv<VB>(M + yy * Wp + x0);
      V s = V{};
      for (int64_t j = 0; j < K2; ++j) {
        const V e = softmax_exp(ldv<VB>(Ly + j * Wp + x0) - m);
        stv<VB>(Ly + j * Wp + x0, e);
        s += e;
      }
      stv<VB>(M + yy * Wp + x0, T(1) / s);
    });
  }
}

// L[yy][j][x] *= inv[yy][x] (the softmax weights); lanes x >= Wo set to 0, so that scatters
// from them add exact zeros.
template <typename T>
void block_normalise(const Geometry& g, const Block& blk, T* L, const T* inv) {
  const int64_t K2 = g.K2(), Wp = blk.Wp;
  for (int64_t yy = 0; yy < blk.nrows; ++yy) {
    T* Ly = L + yy * K2 * Wp;
    for_x_tiles<T>(Wp, [&](int64_t x0, auto tag) {
      constexpr int VB = decltype(tag)::bytes;
      using V = typename VecB<T, VB>::type;
      const V s = ldv<VB>(inv + yy * Wp + x0);
      for (int64_t j = 0; j < K2; ++j) stv<VB>(Ly + j * Wp + x0, ldv<VB>(Ly + j * Wp + x0) * s);
    });
    if (Wp > g.Wo)
      for (int64_t j = 0; j < K2; ++j) std::fill(Ly + j * Wp + g.Wo, Ly + (j + 1) * Wp, T(0));
  }
}

// n values from s to d: whole vectors, then a scalar tail.
template <typename T>
inline void copy_row(const T* s, int64_t n, T* d) {
  int64_t x = 0;
  for (; x + Vec<T>::L <= n; x += Vec<T>::L) st(d + x, ld(s + x));
  if (x == n) return;
#if defined(__AVX512F__)
  if constexpr (std::is_same<T, float>::value) {  // short tails (W' = 14): one masked move, not a scalar loop
    const __mmask16 k = static_cast<__mmask16>((1u << (n - x)) - 1);
    _mm512_mask_storeu_ps(d + x, k, _mm512_maskz_loadu_ps(k, s + x));
    return;
  } else if constexpr (std::is_same<T, double>::value) {
    const __mmask8 k = static_cast<__mmask8>((1u << (n - x)) - 1);
    _mm512_mask_storeu_pd(d + x, k, _mm512_maskz_loadu_pd(k, s + x));
    return;
  }
#endif
  for (; x < n; ++x) d[x] = s[x];
}

// src (BN-slice) rows y0 .. y0+nrows-1 of C channels (C, Ho, Wo) -> dst (C, R, Wp), zero-padded.
template <typename T>
void load_rows(const Geometry& g, const Block& blk, const T* src, int64_t C, T* dst) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t yy = 0; yy < blk.R; ++yy) {
      T* d = dst + (c * blk.R + yy) * blk.Wp;
      if (yy < blk.nrows) {
        copy_row(src + (c * g.Ho + blk.y0 + yy) * g.Wo, g.Wo, d);
        std::fill(d + g.Wo, d + blk.Wp, T(0));
      } else {
        std::fill(d, d + blk.Wp, T(0));
      }
    }
}

// (C, R, Wp) block buffer -> rows y0 .. of dst (C, Ho, Wo), times scale[yy][x] (R, Wp) where given.
template <typename T>
void store_rows(const Geometry& g, const Block& blk, T* src, int64_t C, T* dst, const T* scale) {
  for (int64_t c = 0; c < C; ++c)
    for (int64_t yy = 0; yy < blk.nrows; ++yy) {
      T* s = src + (c * blk.R + yy) * blk.Wp;
      if (scale)
        for_x_tiles<T>(blk.Wp, [&](int64_t x0, auto tag) {
          constexpr int VB = decltype(tag)::bytes;
      using V = typename VecB<T, VB>::type;
          stv<VB>(s + x0, ldv<VB>(s + x0) * ldv<VB>(scale + yy * blk.Wp + x0));
        });
      copy_row(s, g.Wo, dst + (c * g.Ho + blk.y0 + yy) * g.Wo);
    }
}

// Software prefetch of rows y0 .. y0 + n - 1 (of Ho) of C channels (C, Ho, Wo) and of the padded rows
// r0 .. r0 + nr - 1 of C2 channels (C2, Hp, S, Wq): the block after this one reads some 60 rows of
// different channels, more streams than the hardware prefetcher follows.
template <typename T>
inline void prefetch_span(const T* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(c + b, 0, 2);
}
template <typename T>
void prefetch_block(const Geometry& g, const T* src, int64_t C, int64_t y0, int64_t n, const T* pad, int64_t C2,
                    int64_t r0, int64_t nr) {
  n = std::min(n, g.Ho - y0);
  if (src && n > 0)
    for (int64_t c = 0; c < C; ++c) prefetch_span(src + (c * g.Ho + y0) * g.Wo, n * g.Wo);
  nr = std::min(nr, g.Hp - r0);
  if (pad && nr > 0)
    for (int64_t c = 0; c < C2; ++c) prefetch_span(pad + c * g.plane() + r0 * g.row(), nr * g.row());
}

// Reads of a padded row run up to one vector past its end; only the last channel of the
// tensor has nothing after it, so the last (b, n) slice (and the grid) are read from a copy
// with a vector of zeros after it.
template <typename T>
const T* with_slack(const T* src, int64_t n, std::vector<T>& buf) {
  buf.assign(n + Vec<T>::L, T(0));
  std::copy(src, src + n, buf.data());
  return buf.data();
}
int64_t block_rows(const Geometry& g) {
  // enough rows that a padded row is shared by several output rows; the per-block buffers
  // (R x K2 x Wp) stay in L2.
  return std::max<int64_t>(1, std::min<int64_t>(g.Ho, 6 / std::max<int64_t>(1, g.S) + 2));
}
// The backward's blocks: taller (its tiles of one or two rows at a block's top and bottom edges are
// the ones that load more than they compute, and there are five passes over each block), and balanced
// (H' = 28 at stride 1: two blocks of 14, not 8 + 8 + 8 + 4).
int64_t backward_block_rows(const Geometry& g) {
  const int64_t rmax = std::max<int64_t>(1, 12 / std::max<int64_t>(1, g.S) + 2);
  const int64_t nblk = (g.Ho + rmax - 1) / rmax;
  return std::max<int64_t>(1, (g.Ho + nblk - 1) / std::max<int64_t>(1, nblk));
}

Geometry geometry(const at::Tensor& q, const at::Tensor& kd, const at::Tensor& grid, const at::Tensor& vd,
                  int64_t ka, int64_t dil) {
  TORCH_CHECK(q.dim() == 4 && kd.dim() == 5 && grid.dim() == 4 && vd.dim() == 5,
              "local attention: expected q (BN,Cq,Ho,Wo), kd (BN,Ck,Hp,S,Wq), grid (G,Hp,S,Wq), vd (BN,Cv,Hp,S,Wq)");
  for (const at::Tensor* t : {&q, &kd, &grid, &vd}) {
    TORCH_CHECK(t->device().is_cpu(), "local attention extension: CPU tensors only");
    TORCH_CHECK(t->is_contiguous(), "local attention extension: contiguous tensors only");
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "local attention extension: one dtype for all inputs");
  }
  TORCH_CHECK(ka >= 1 && dil >= 1, "local attention: kernel_att and dilation must be >= 1");
  Geometry g;
  g.BN = q.size(0); g.Cq = q.size(1); g.Ho = q.size(2); g.Wo = q.size(3);
  g.Ck = kd.size(1); g.Hp = kd.size(2); g.S = kd.size(3); g.Wq = kd.size(4);
  g.G = grid.size(0); g.Cv = vd.size(1); g.ka = ka; g.dil = dil;
  TORCH_CHECK(g.Cq == g.Ck + g.G, "local attention: q channels must equal key channels + grid channels");
  TORCH_CHECK(kd.size(0) == g.BN && vd.size(0) == g.BN, "local attention: batch mismatch");
  TORCH_CHECK(vd.size(2) == g.Hp && vd.size(3) == g.S && vd.size(4) == g.Wq &&
              grid.size(1) == g.Hp && grid.size(2) == g.S && grid.size(3) == g.Wq,
              "local attention: padded shapes differ");
  TORCH_CHECK((g.Ho - 1) * g.S + (ka - 1) * dil < g.Hp, "local attention: windows leave the padded rows");
  TORCH_CHECK((g.Wo - 1) + ((ka - 1) * dil) / g.S < g.Wq, "local attention: windows leave the padded columns");
  return g;
}

inline int64_t reflect_index(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

}  // namespace

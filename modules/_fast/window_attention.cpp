// Sliding-window attention (Stage II of ResNet-ACmix) for CPU: forward and a
// hand-written backward, without any unfolded k_a^2 x C x H x W tensor.
//
// Layout (all contiguous, one dtype):
//   q   (BN, Cq, Ho, Wo)      scaled queries; the last G channels pair with the grid
//   kd  (BN, Ck, Hp, S, Wq)   padded keys, columns split by phase: kd[.., r, p, m] = k[.., r, m*S + p]
//   g   (G, Hp, S, Wq)        padded extra key channels shared by every (b, n) (the coordinate grid)
//   vd  (BN, Cv, Hp, S, Wq)   padded values, same split
//   weights (BN, K2, Ho, Wo)  softmax weights: returned by forward on request (tests); the backward
//                             recomputes them block by block (nothing of this size is saved or allocated)
// Window offset j = i * ka + b reads padded row r = y*S + i*dil and column x*S + b*dil,
// i.e. phase (b*dil) % S, position x + (b*dil) / S: every inner loop runs over x with
// unit stride, for any stride.
// Cq = Ck + G. Logits are sum over the Cq channels, out = sum_j weights_j v_j.
//
// Work is done per block of R output rows of one (b, n). A padded key/value row r is read by
// every output row y of the block with r = y*S + i*dil (0 <= i < ka): those (y, i) pairs are
// handled together, so each key/value vector loaded from memory feeds up to NR rows' FMAs
// (register tiles: NR rows x NB window columns x one vector of x). Columns are processed
// in whole vectors (AVX-512: 16 floats / 8 doubles; else 8 / 4) and at most one half vector,
// over a width padded up to half a vector; the lanes past Wo compute values that are never
// stored to the outputs (queries and
// output gradients are copied into zero-padded block buffers; softmax weights and their
// gradients are zeroed past Wo, so the scatters add exact zeros there).
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

// a*b + c as one fused multiply-add (the torch build uses ISO C++, where GCC would not contract)
#pragma GCC optimize("fp-contract=fast")

namespace {

// Full (64-byte) and half (32-byte) vectors; a row of W' columns runs in full vectors and, where
// at most half a vector is left, one half vector (W' = 56 = 3 x 16 + 8, W' = 7 -> 8 lanes).
// (Attributed vector types lose their alignment attribute when passed as template arguments, so
// kernels take the vector width in bytes and name the type through VecB.)
template <typename T, int VB> struct VecB;
template <> struct VecB<float, 64> { typedef float type __attribute__((vector_size(64), aligned(4))); };
template <> struct VecB<float, 32> { typedef float type __attribute__((vector_size(32), aligned(4))); };
template <> struct VecB<float, 16> { typedef float type __attribute__((vector_size(16), aligned(4))); };
template <> struct VecB<double, 64> { typedef double type __attribute__((vector_size(64), aligned(8))); };
template <> struct VecB<double, 32> { typedef double type __attribute__((vector_size(32), aligned(8))); };
template <> struct VecB<double, 16> { typedef double type __attribute__((vector_size(16), aligned(8))); };
template <typename T, int VB> struct IntVecB;
template <> struct IntVecB<float, 64> { typedef int32_t type __attribute__((vector_size(64), aligned(4))); };
template <> struct IntVecB<float, 32> { typedef int32_t type __attribute__((vector_size(32), aligned(4))); };
template <> struct IntVecB<float, 16> { typedef int32_t type __attribute__((vector_size(16), aligned(4))); };

// Full vector: one AVX-512 register where the CPU has them, else one AVX register (a 64-byte
// vector would take two registers and the register tiles would spill).
#if defined(__AVX512F__)
constexpr int kFullBytes = 64;
#else
constexpr int kFullBytes = 32;
#endif
constexpr int kHalfBytes = kFullBytes / 2;

template <typename T> struct Vec {
  typedef typename VecB<T, kFullBytes>::type V;
  static constexpr int L = kFullBytes / static_cast<int>(sizeof(T));
};

template <typename T> using V_t = typename Vec<T>::V;
template <int VB, typename T> inline typename VecB<T, VB>::type ldv(const T* p) {
  return *reinterpret_cast<const typename VecB<T, VB>::type*>(p);
}
template <int VB, typename T> inline void stv(T* p, typename VecB<T, VB>::type v) {
  *reinterpret_cast<typename VecB<T, VB>::type*>(p) = v;
}
template <typename T> inline V_t<T> ld(const T* p) { return ldv<kFullBytes>(p); }
template <typename T> inline void st(T* p, V_t<T> v) { stv<kFullBytes>(p, v); }
template <int VB> struct Tag { static constexpr int bytes = VB; };

// Row length of the block buffers: W' rounded up to half a vector.
template <typename T> inline int64_t padded_width(int64_t Wo) {
  const int64_t h = Vec<T>::L / 2;
  return (Wo + h - 1) / h * h;
}

// f(x0, Tag<vector type>) for the tiles of a buffer row of Wp (a multiple of half a vector) columns.
template <typename T, typename F>
inline void for_x_tiles(int64_t Wp, F&& f) {
  int64_t x0 = 0;
  for (; x0 + Vec<T>::L <= Wp; x0 += Vec<T>::L) f(x0, Tag<kFullBytes>{});
  if (x0 < Wp) f(x0, Tag<kHalfBytes>{});
}

// exp on the non-positive arguments of a max-shifted softmax. float: Cody-Waite range
// reduction (n = x log2 e rounded to nearest) and a degree-7 Taylor polynomial (relative error
// ~1e-7) on whole vectors; double: the library exp per lane (used for float64 checks).
template <typename V, typename I>
inline V exp_float(V x) {
  const V lo = V{} - 87.0f;
  x = x < lo ? lo : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const V n = (x * 1.4426950408889634f + magic) - magic;
  const V r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  V p = V{} + 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline VecB<float, 64>::type softmax_exp(VecB<float, 64>::type x) {
  return exp_float<VecB<float, 64>::type, IntVecB<float, 64>::type>(x);
}
inline VecB<float, 32>::type softmax_exp(VecB<float, 32>::type x) {
  return exp_float<VecB<float, 32>::type, IntVecB<float, 32>::type>(x);
}
inline VecB<float, 16>::type softmax_exp(VecB<float, 16>::type x) {
  return exp_float<VecB<float, 16>::type, IntVecB<float, 16>::type>(x);
}
template <typename V>
inline V exp_double(V x) {
  for (size_t l = 0; l < sizeof(V) / sizeof(double); ++l) x[l] = std::exp(x[l]);
  return x;
}
inline VecB<double, 64>::type softmax_exp(VecB<double, 64>::type x) { return exp_double(x); }
inline VecB<double, 32>::type softmax_exp(VecB<double, 32>::type x) { return exp_double(x); }
inline VecB<double, 16>::type softmax_exp(VecB<double, 16>::type x) { return exp_double(x); }

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

constexpr int kMaxNB = 7;   // window columns per register tile
constexpr int kMaxNR = 4;   // output rows per register tile
#if defined(__AVX512F__)
constexpr int kMaxAcc = 24; // NR * NB accumulators (of 32 vector registers)
#else
constexpr int kMaxAcc = 12; // (of 16)
#endif
constexpr int max_nr(int nb) { return std::min(kMaxNR, kMaxAcc / nb); }
constexpr int kMaxScatterNR = 8;  // output rows per scatter tile (its registers: one weight vector per row)

// Keeps a loaded vector in a register: without it GCC folds the load into every FMA that uses
// it (one load per FMA instead of one per NR FMAs).
template <typename V> inline void in_reg(V& v) { asm("" : "+v"(v)); }

// acc[p][b] = sum_{c < C1} a[p][c*as] * k1[c*ks + cols[b]] + sum_{c < C2} a[p][(C1+c)*as] * k2[c*ks + cols[b]],
// stored to o[p] + b*os; where mx is given, mx[p] = max(mx[p], max_b acc[p][b]) (the running softmax max).
template <typename T, int VB, int NR, int NB>
__attribute__((noinline)) void corr_tile(const T* const* a, int64_t as, const T* k1, int64_t C1, const T* k2, int64_t C2, int64_t ks,
                      const int64_t* cols, T* const* o, int64_t os, T* const* mx) {
  using V = typename VecB<T, VB>::type;
  V acc[NR][NB];
#pragma GCC unroll 8
  for (int p = 0; p < NR; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) acc[p][b] = V{};
  int64_t cb[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) cb[b] = cols[b];
  auto run = [&](const T* const* aa, int64_t a_off, const T* k, int64_t C) {
    const T* ap[NR];
#pragma GCC unroll 8
    for (int p = 0; p < NR; ++p) ap[p] = aa[p] + a_off;
    for (int64_t c = 0; c < C; ++c) {
      V av[NR];
#pragma GCC unroll 8
      for (int p = 0; p < NR; ++p) av[p] = ldv<VB>(ap[p] + c * as);
      const T* kc = k + c * ks;
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) {
        V kv = ldv<VB>(kc + cb[b]);
        in_reg(kv);
#pragma GCC unroll 8
        for (int p = 0; p < NR; ++p) acc[p][b] += av[p] * kv;
      }
    }
  };
  run(a, 0, k1, C1);
  if (C2) run(a, C1 * as, k2, C2);
#pragma GCC unroll 8
  for (int p = 0; p < NR; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) stv<VB>(o[p] + b * os, acc[p][b]);
  if (mx) {
#pragma GCC unroll 8
    for (int p = 0; p < NR; ++p) {
      V m = ldv<VB>(mx[p]);
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) m = acc[p][b] > m ? acc[p][b] : m;
      stv<VB>(mx[p], m);
    }
  }
}

// o[p][c*os] += sum_b w[p][b*ws] * val(c)[cols[b]], c < C1 + C2; val(c) = v1 + c*vs for c < C1, else
// v2 + (c - C1)*vs.
template <typename T, int VB, int NR, int NB>
__attribute__((noinline)) void agg_tile(const T* const* w, int64_t ws, const T* v1, int64_t C1, const T* v2, int64_t C2, int64_t vs,
                     const int64_t* cols, T* const* o, int64_t os) {
  using V = typename VecB<T, VB>::type;
  V wr[NR][NB];
#pragma GCC unroll 8
  for (int p = 0; p < NR; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) wr[p][b] = ldv<VB>(w[p] + b * ws);
  int64_t cb[NB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) cb[b] = cols[b];
  auto run = [&](int64_t o_off, const T* v, int64_t C) {
    T* op[NR];
#pragma GCC unroll 8
    for (int p = 0; p < NR; ++p) op[p] = o[p] + o_off;
    for (int64_t c = 0; c < C; ++c) {
      V ov[NR];
#pragma GCC unroll 8
      for (int p = 0; p < NR; ++p) ov[p] = ldv<VB>(op[p] + c * os);
      const T* vc = v + c * vs;
#pragma GCC unroll 8
      for (int b = 0; b < NB; ++b) {
        V vv = ldv<VB>(vc + cb[b]);
        in_reg(vv);
#pragma GCC unroll 8
        for (int p = 0; p < NR; ++p) ov[p] += wr[p][b] * vv;
      }
#pragma GCC unroll 8
      for (int p = 0; p < NR; ++p) stv<VB>(op[p] + c * os, ov[p]);
    }
  };
  run(0, v1, C1);
  if (C2) run(C1 * os, v2, C2);
}

// d[c*ds + cols[b]] += sum_p w[p][b*ws] * a[p][c*as], c < C, b < nb (the transpose of agg_tile).
// b outer, c inner: consecutive read-modify-writes hit different channels, so the
// overlapping vectors of neighbouring b never wait on store forwarding.
template <typename T, int VB, int NR>
__attribute__((noinline)) void scatter_tile(const T* const* w, int64_t ws, const T* const* a, int64_t as, int64_t C,
                         const int64_t* cols, int nb, T* d, int64_t ds) {
  using V = typename VecB<T, VB>::type;
  const T* ap[NR];
#pragma GCC unroll 8
  for (int p = 0; p < NR; ++p) ap[p] = a[p];
  for (int b = 0; b < nb; ++b) {
    V wr[NR];
#pragma GCC unroll 8
    for (int p = 0; p < NR; ++p) wr[p] = ldv<VB>(w[p] + b * ws);
    T* db = d + cols[b];
    for (int64_t c = 0; c < C; ++c) {
      // two partial sums, the destination added last: no chain of NR dependent FMAs behind its load
      V s0 = wr[0] * ldv<VB>(ap[0] + c * as);
      V s1 = V{};
#pragma GCC unroll 8
      for (int p = 1; p < NR; ++p) {
        if (p % 2) s1 += wr[p] * ldv<VB>(ap[p] + c * as);
        else s0 += wr[p] * ldv<VB>(ap[p] + c * as);
      }
      stv<VB>(db + c * ds, ldv<VB>(db + c * ds) + (s0 + s1));
    }
  }
}

template <typename T, int VB, int NB>
inline void corr_nr(int nr, const T* const* a, int64_t as, const T* k1, int64_t C1, const T* k2, int64_t C2,
                    int64_t ks, const int64_t* cols, T* const* o, int64_t os, T* const* mx) {
  switch (nr) {
    case 1: corr_tile<T, VB, 1, NB>(a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 2: if constexpr (max_nr(NB) >= 2) corr_tile<T, VB, 2, NB>(a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 3: if constexpr (max_nr(NB) >= 3) corr_tile<T, VB, 3, NB>(a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    default: if constexpr (max_nr(NB) >= 4) corr_tile<T, VB, 4, NB>(a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
  }
}

template <typename T, int VB>
inline void corr(int nr, int nb, const T* const* a, int64_t as, const T* k1, int64_t C1, const T* k2, int64_t C2,
                 int64_t ks, const int64_t* cols, T* const* o, int64_t os, T* const* mx) {
  switch (nb) {
    case 1: corr_nr<T, VB, 1>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 2: corr_nr<T, VB, 2>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 3: corr_nr<T, VB, 3>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 4: corr_nr<T, VB, 4>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 5: corr_nr<T, VB, 5>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    case 6: corr_nr<T, VB, 6>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
    default: corr_nr<T, VB, 7>(nr, a, as, k1, C1, k2, C2, ks, cols, o, os, mx); break;
  }
}

template <typename T, int VB, int NB>
inline void agg_nr(int nr, const T* const* w, int64_t ws, const T* v1, int64_t C1, const T* v2, int64_t C2,
                   int64_t vs, const int64_t* cols, T* const* o, int64_t os) {
  switch (nr) {
    case 1: agg_tile<T, VB, 1, NB>(w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 2: if constexpr (max_nr(NB) >= 2) agg_tile<T, VB, 2, NB>(w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 3: if constexpr (max_nr(NB) >= 3) agg_tile<T, VB, 3, NB>(w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    default: if constexpr (max_nr(NB) >= 4) agg_tile<T, VB, 4, NB>(w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
  }
}

template <typename T, int VB>
inline void agg(int nr, int nb, const T* const* w, int64_t ws, const T* v1, int64_t C1, const T* v2, int64_t C2,
                int64_t vs, const int64_t* cols, T* const* o, int64_t os) {
  switch (nb) {
    case 1: agg_nr<T, VB, 1>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 2: agg_nr<T, VB, 2>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 3: agg_nr<T, VB, 3>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 4: agg_nr<T, VB, 4>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 5: agg_nr<T, VB, 5>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    case 6: agg_nr<T, VB, 6>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
    default: agg_nr<T, VB, 7>(nr, w, ws, v1, C1, v2, C2, vs, cols, o, os); break;
  }
}

template <typename T, int VB>
inline void scatter(int nr, int nb, const T* const* w, int64_t ws, const T* const* a, int64_t as, int64_t C,
                    const int64_t* cols, T* d, int64_t ds) {
  switch (nr) {
    case 1: scatter_tile<T, VB, 1>(w, ws, a, as, C, cols, nb, d, ds); break;
    case 2: scatter_tile<T, VB, 2>(w, ws, a, as, C, cols, nb, d, ds); break;
    case 3: scatter_tile<T, VB, 3>(w, ws, a, as, C, cols, nb, d, ds); break;
    case 4: scatter_tile<T, VB, 4>(w, ws, a, as, C, cols, nb, d, ds); break;
    case 5: scatter_tile<T, VB, 5>(w, ws, a, as, C, cols, nb, d, ds); break;
    case 6: scatter_tile<T, VB, 6>(w, ws, a, as, C, cols, nb, d, ds); break;
    case 7: scatter_tile<T, VB, 7>(w, ws, a, as, C, cols, nb, d, ds); break;
    default: scatter_tile<T, VB, 8>(w, ws, a, as, C, cols, nb, d, ds); break;
  }
}

// 64-byte aligned scratch owned by one thread.
template <typename T>
struct Scratch {
  std::unique_ptr<T, decltype(&std::free)> p{nullptr, &std::free};
  int64_t n = 0;
  T* get(int64_t need) {
    if (need > n) {
      const size_t bytes = ((static_cast<size_t>(need) * sizeof(T) + 63) / 64) * 64;
      p.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
      TORCH_CHECK(p, "window attention: out of memory for a scratch buffer");
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
// (H' = 28 at stride 1: two blocks of 14, not 8 + 8 + 8 + 4). Measured on 2 threads, k_a = 7:
// 14x14 d = 64 bwd 5.47 -> 4.82 ms (R 8 -> 14), 28x28 d = 32 10.3 -> 9.8 ms; at 56x56 no change.
int64_t backward_block_rows(const Geometry& g) {
  const int64_t rmax = std::max<int64_t>(1, 12 / std::max<int64_t>(1, g.S) + 2);
  const int64_t nblk = (g.Ho + rmax - 1) / rmax;
  return std::max<int64_t>(1, (g.Ho + nblk - 1) / std::max<int64_t>(1, nblk));
}

template <typename F>
void parallel_tasks(int64_t n, F&& f) {
  const int nt = at::in_parallel_region() ? 1 : static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
#pragma omp parallel num_threads(std::max(nt, 1))
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t) f(t);
  }
}

Geometry geometry(const at::Tensor& q, const at::Tensor& kd, const at::Tensor& grid, const at::Tensor& vd,
                  int64_t ka, int64_t dil) {
  TORCH_CHECK(q.dim() == 4 && kd.dim() == 5 && grid.dim() == 4 && vd.dim() == 5,
              "window attention: expected q (BN,Cq,Ho,Wo), kd (BN,Ck,Hp,S,Wq), grid (G,Hp,S,Wq), vd (BN,Cv,Hp,S,Wq)");
  for (const at::Tensor* t : {&q, &kd, &grid, &vd}) {
    TORCH_CHECK(t->device().is_cpu(), "window attention extension: CPU tensors only");
    TORCH_CHECK(t->is_contiguous(), "window attention extension: contiguous tensors only");
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "window attention extension: one dtype for all inputs");
  }
  TORCH_CHECK(ka >= 1 && dil >= 1, "window attention: kernel_att and dilation must be >= 1");
  Geometry g;
  g.BN = q.size(0); g.Cq = q.size(1); g.Ho = q.size(2); g.Wo = q.size(3);
  g.Ck = kd.size(1); g.Hp = kd.size(2); g.S = kd.size(3); g.Wq = kd.size(4);
  g.G = grid.size(0); g.Cv = vd.size(1); g.ka = ka; g.dil = dil;
  TORCH_CHECK(g.Cq == g.Ck + g.G, "window attention: q channels must equal key channels + grid channels");
  TORCH_CHECK(kd.size(0) == g.BN && vd.size(0) == g.BN, "window attention: batch mismatch");
  TORCH_CHECK(vd.size(2) == g.Hp && vd.size(3) == g.S && vd.size(4) == g.Wq &&
              grid.size(1) == g.Hp && grid.size(2) == g.S && grid.size(3) == g.Wq,
              "window attention: padded shapes differ");
  TORCH_CHECK((g.Ho - 1) * g.S + (ka - 1) * dil < g.Hp, "window attention: windows leave the padded rows");
  TORCH_CHECK((g.Wo - 1) + ((ka - 1) * dil) / g.S < g.Wq, "window attention: windows leave the padded columns");
  return g;
}

}  // namespace

// save_weights = false (inference / training): the softmax weights live only in per-block buffers.
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& kd, const at::Tensor& grid,
                                const at::Tensor& vd, int64_t ka, int64_t dil, bool save_weights) {
  const Geometry g = geometry(q, kd, grid, vd, ka, dil);
  auto out = at::empty({g.BN, g.Cv, g.Ho, g.Wo}, q.options());
  auto weights = save_weights ? at::empty({g.BN, g.K2(), g.Ho, g.Wo}, q.options()) : at::empty({0}, q.options());
  if (g.BN == 0 || g.Ho == 0 || g.Wo == 0) return {out, weights};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_forward", [&] {
    using T = scalar_t;
    const int64_t K2 = g.K2(), HWo = g.Ho * g.Wo;
    const int64_t Wp = padded_width<T>(g.Wo), R = block_rows(g), nblk = (g.Ho + R - 1) / R;
    const T* Q = q.data_ptr<T>();
    const T* K = kd.data_ptr<T>();
    const T* V = vd.data_ptr<T>();
    T* O = out.data_ptr<T>();
    T* Wt = save_weights ? weights.data_ptr<T>() : nullptr;
    std::vector<T> grid_buf, klast, vlast;
    const T* Gd = with_slack(grid.data_ptr<T>(), g.G * g.plane(), grid_buf);
    const T* Klast = with_slack(K + (g.BN - 1) * g.Ck * g.plane(), g.Ck * g.plane(), klast);
    const T* Vlast = with_slack(V + (g.BN - 1) * g.Cv * g.plane(), g.Cv * g.plane(), vlast);
    const std::vector<int64_t> cols = g.cols();
    const int64_t n_qs = g.Cq * R * Wp, n_L = R * K2 * Wp, n_os = g.Cv * R * Wp, n_M = R * Wp;
    parallel_tasks(g.BN * nblk, [&](int64_t t) {
      thread_local Scratch<T> scratch;
      T* qs = scratch.get(n_qs + n_L + n_os + n_M);
      T* Lg = qs + n_qs;
      T* os = Lg + n_L;
      T* M = os + n_os;
      const int64_t bn = t / nblk, y0 = (t % nblk) * R;
      const Block blk(g, y0, std::min(R, g.Ho - y0), R, Wp, max_nr(static_cast<int>(std::min<int64_t>(g.ka, kMaxNB))));
      const T* Kb = bn == g.BN - 1 ? Klast : K + bn * g.Ck * g.plane();
      const T* Vb = bn == g.BN - 1 ? Vlast : V + bn * g.Cv * g.plane();
      if (y0 + R < g.Ho) {  // the next block of this (b, n) (usually this thread's next task)
        const int64_t y1 = y0 + R, r_new = (y1 - 1) * g.S + (g.ka - 1) * g.dil + 1;
        prefetch_block(g, Q + bn * g.Cq * HWo, g.Cq, y1, R, Kb, g.Ck, r_new, R * g.S);
        prefetch_block(g, static_cast<const T*>(nullptr), 0, y1, R, Vb, g.Cv, r_new, R * g.S);
      }
      load_rows(g, blk, Q + bn * g.Cq * HWo, g.Cq, qs);
      block_correlate(g, blk, cols.data(), qs, Kb, g.Ck, Gd, g.G, Lg, M);
      block_softmax_exp(g, blk, Lg, M);  // M now holds 1 / sum_j exp: applied to the output
      if (Wt)
        for (int64_t yy = 0; yy < blk.nrows; ++yy)
          for (int64_t j = 0; j < K2; ++j)
            for (int64_t x = 0; x < g.Wo; ++x)
              Wt[((bn * K2 + j) * g.Ho + y0 + yy) * g.Wo + x] = Lg[(yy * K2 + j) * Wp + x] * M[yy * Wp + x];
      block_aggregate(g, blk, cols.data(), Lg, Vb, g.Cv, Vb, 0, os);
      store_rows(g, blk, os, g.Cv, O + bn * g.Cv * HWo, M);
    });
  });
  return {out, weights};
}

// Backward, one task per (b, n): its blocks of output rows run in order and scatter dk and dv
// into a private buffer of that (b, n), so no two threads ever write the same element and no
// global k_a^2-sized buffer exists. Per block, with everything hot in cache: the softmax
// weights P are recomputed (same code as the forward: bitwise the same), dW_j = dout . v_j,
// dlogit_j = P_j (dW_j - sum_i P_i dW_i), dq = sum_j dlogit_j key_j, dk += dlogit_j q,
// dv += P_j dout.
namespace {

// Where the backward's per-(b, n) key/value gradients go. Plain: copied out as the padded, phase-split
// dkd / dvd. Folded (ACmix's Stage II node): the reflection padding's adjoint applied on the spot
// and added into a (B, Ctot, H, W) gradient map (the Stage I output's), key channels at k_off + n*Ck,
// value channels at v_off + n*Cv: no padded gradient is ever materialised.
struct Fold {
  bool on = false;
  int64_t N = 1, Ctot = 0, k_off = 0, v_off = 0, H = 0, W = 0, pad = 0;
  double scale = 1.0;  // the gradients added are scale * (dk, dv)
};

inline int64_t reflect_index(int64_t i, int64_t n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

// dst[reflect(r - pad), reflect(col - pad)] += scale * src[r][p][m], col = m*S + p < W + 2 pad, for C channels.
// The padding's adjoint is applied inside src first (src is the task's private, cache-hot buffer and is
// overwritten): border rows are added into their mirror rows (whole padded rows, vectorised), then border
// columns into their mirror columns; dst, a large map that is mostly not in cache, then sees one
// read-modify-write per element, in unit stride. (Adding the borders straight into dst, scalar stores
// followed by overlapping vector loads of the same row, stalled on store forwarding.)
template <typename T>
void fold_add(const Geometry& g, const Fold& f, T* src, int64_t C, T* dst) {
  const int64_t HW = f.H * f.W, S = g.S, Wq = g.Wq, rowlen = g.row(), pad = f.pad, W = f.W;
  const T sc = static_cast<T>(f.scale);
  auto pos = [&](int64_t col) { return (col % S) * Wq + col / S; };  // padded column -> offset in a padded row
  // border column -> mirror column offsets, and (S > 1) interior columns in destination order: computed
  // once here, the loops below do no index arithmetic
  std::vector<int64_t> bfrom, bto, idx(S > 1 ? W : 0);
  for (int64_t col = 0; col < W + 2 * pad; ++col) {
    if (col >= pad && col < pad + W) continue;
    bfrom.push_back(pos(col));
    bto.push_back(pos(pad + reflect_index(col - pad, W)));
  }
  for (int64_t x = 0; x < static_cast<int64_t>(idx.size()); ++x) idx[x] = pos(x + pad);
  const int64_t nb = static_cast<int64_t>(bfrom.size());
  for (int64_t c = 0; c < C; ++c) {
    T* sp = src + c * g.plane();
    T* dp = dst + c * HW;
    for (int64_t r = 0; r < g.Hp; ++r) {
      if (r >= pad && r < pad + f.H) continue;
      T* to = sp + (reflect_index(r - pad, f.H) + pad) * rowlen;
      const T* from = sp + r * rowlen;
#pragma GCC ivdep
      for (int64_t m = 0; m < rowlen; ++m) to[m] += from[m];
    }
    for (int64_t y = 0; y < f.H; ++y) {
      T* srow = sp + (y + pad) * rowlen;
      for (int64_t k = 0; k < nb; ++k) srow[bto[k]] += srow[bfrom[k]];
      T* drow = dp + y * W;
      if (S == 1) {
        const T* s1 = srow + pad;
#pragma GCC ivdep
        for (int64_t x = 0; x < W; ++x) drow[x] += sc * s1[x];
      } else {
        for (int64_t x = 0; x < W; ++x) drow[x] += sc * srow[idx[x]];
      }
    }
  }
}

std::vector<at::Tensor> backward_impl(const at::Tensor& dout_in, const at::Tensor& q, const at::Tensor& kd,
                                      const at::Tensor& grid, const at::Tensor& vd, int64_t ka, int64_t dil,
                                      const Fold& fold, at::Tensor* dst) {
  const Geometry g = geometry(q, kd, grid, vd, ka, dil);
  const at::Tensor dout = dout_in.contiguous();
  TORCH_CHECK(dout.sizes() == at::IntArrayRef({g.BN, g.Cv, g.Ho, g.Wo}) && dout.scalar_type() == q.scalar_type(),
              "window attention: the output gradient must match the output's shape and dtype");
  auto dq = at::empty_like(q);
  auto dkd = fold.on ? at::empty({0}, kd.options()) : at::empty_like(kd);
  auto dvd = fold.on ? at::empty({0}, vd.options()) : at::empty_like(vd);
  if (g.BN == 0) return {dq, dkd, dvd};
  if (g.Ho == 0 || g.Wo == 0) {
    if (fold.on) return {dq.zero_(), dkd, dvd};  // nothing to add
    return {dq.zero_(), dkd.zero_(), dvd.zero_()};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_backward", [&] {
    using T = scalar_t;
    const int64_t K2 = g.K2(), HWo = g.Ho * g.Wo, L_ = Vec<T>::L;
    const int64_t Wp = padded_width<T>(g.Wo), R = backward_block_rows(g), nblk = (g.Ho + R - 1) / R;
    const T* Q = q.data_ptr<T>();
    const T* K = kd.data_ptr<T>();
    const T* V = vd.data_ptr<T>();
    const T* D = dout.data_ptr<T>();
    T* DQ = dq.data_ptr<T>();
    T* DK = dkd.data_ptr<T>();
    T* DV = dvd.data_ptr<T>();
    std::vector<T> grid_buf, klast, vlast;
    const T* Gd = with_slack(grid.data_ptr<T>(), g.G * g.plane(), grid_buf);
    const T* Klast = with_slack(K + (g.BN - 1) * g.Ck * g.plane(), g.Ck * g.plane(), klast);
    const T* Vlast = with_slack(V + (g.BN - 1) * g.Cv * g.plane(), g.Cv * g.plane(), vlast);
    const std::vector<int64_t> cols = g.cols();
    const int64_t n_qs = g.Cq * R * Wp, n_ds = g.Cv * R * Wp, n_L = R * K2 * Wp;
    const int64_t n_dk = g.Ck * g.plane() + L_, n_dv = g.Cv * g.plane() + L_, n_M = R * Wp;
    parallel_tasks(g.BN, [&](int64_t bn) {
      thread_local Scratch<T> scratch;
      T* qs = scratch.get(2 * n_qs + n_ds + 2 * n_L + n_M + n_dk + n_dv);
      T* dqs = qs + n_qs;
      T* ds = dqs + n_qs;
      T* P = ds + n_ds;
      T* dW = P + n_L;
      T* M = dW + n_L;
      T* dK = M + n_M;
      T* dV = dK + n_dk;
      std::fill(dK, dK + n_dk + n_dv, T(0));
      const T* Kb = bn == g.BN - 1 ? Klast : K + bn * g.Ck * g.plane();
      const T* Vb = bn == g.BN - 1 ? Vlast : V + bn * g.Cv * g.plane();
      for (int64_t blk_i = 0; blk_i < nblk; ++blk_i) {
        const int64_t y0 = blk_i * R;
        const Block blk(g, y0, std::min(R, g.Ho - y0), R, Wp, max_nr(static_cast<int>(std::min<int64_t>(g.ka, kMaxNB))));
        const Block sblk(g, y0, std::min(R, g.Ho - y0), R, Wp, kMaxScatterNR);  // larger groups for the scatters
        if (blk_i + 1 < nblk) {  // the next block's new rows
          const int64_t y1 = y0 + R, r_new = (y1 - 1) * g.S + (g.ka - 1) * g.dil + 1;
          prefetch_block(g, Q + bn * g.Cq * HWo, g.Cq, y1, R, Kb, g.Ck, r_new, R * g.S);
          prefetch_block(g, D + bn * g.Cv * HWo, g.Cv, y1, R, Vb, g.Cv, r_new, R * g.S);
        }
        load_rows(g, blk, Q + bn * g.Cq * HWo, g.Cq, qs);
        load_rows(g, blk, D + bn * g.Cv * HWo, g.Cv, ds);
        block_correlate(g, blk, cols.data(), qs, Kb, g.Ck, Gd, g.G, P, M);
        block_softmax_exp(g, blk, P, M);
        block_normalise(g, blk, P, M);
        block_correlate(g, blk, cols.data(), ds, Vb, g.Cv, Vb, 0, dW, static_cast<T*>(nullptr));
        // softmax backward, written over dW: dlogit_j = P_j (dW_j - sum_i P_i dW_i)
        for (int64_t yy = 0; yy < blk.nrows; ++yy)
          for_x_tiles<T>(Wp, [&](int64_t x0, auto tag) {
            constexpr int VB = decltype(tag)::bytes;
            using Vt = typename VecB<T, VB>::type;
            const T* Py = P + yy * K2 * Wp + x0;
            T* Dy = dW + yy * K2 * Wp + x0;
            Vt s4[4] = {};  // four partial sums: one chain of K2 dependent FMAs would wait on latency
            int64_t j = 0;
            for (; j + 4 <= K2; j += 4)
              for (int u = 0; u < 4; ++u) s4[u] += ldv<VB>(Py + (j + u) * Wp) * ldv<VB>(Dy + (j + u) * Wp);
            for (; j < K2; ++j) s4[0] += ldv<VB>(Py + j * Wp) * ldv<VB>(Dy + j * Wp);
            const Vt s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
            for (j = 0; j < K2; ++j) stv<VB>(Dy + j * Wp, ldv<VB>(Py + j * Wp) * (ldv<VB>(Dy + j * Wp) - s));
          });
        block_aggregate(g, blk, cols.data(), dW, Kb, g.Ck, Gd, g.G, dqs);
        store_rows(g, blk, dqs, g.Cq, DQ + bn * g.Cq * HWo, static_cast<const T*>(nullptr));
        block_scatter(g, sblk, cols.data(), dW, qs, g.Ck, dK);
        block_scatter(g, sblk, cols.data(), P, ds, g.Cv, dV);
      }
      if (fold.on) {
        const int64_t b = bn / fold.N, n = bn % fold.N, HW = fold.H * fold.W;
        T* base = dst->data_ptr<T>() + b * fold.Ctot * HW;
        fold_add(g, fold, dK, g.Ck, base + (fold.k_off + n * g.Ck) * HW);
        fold_add(g, fold, dV, g.Cv, base + (fold.v_off + n * g.Cv) * HW);
      } else {
        std::copy(dK, dK + g.Ck * g.plane(), DK + bn * g.Ck * g.plane());
        std::copy(dV, dV + g.Cv * g.plane(), DV + bn * g.Cv * g.plane());
      }
    });
  });
  return {dq, dkd, dvd};
}

}  // namespace

std::vector<at::Tensor> backward(const at::Tensor& dout_in, const at::Tensor& q, const at::Tensor& kd,
                                 const at::Tensor& grid, const at::Tensor& vd, int64_t ka, int64_t dil) {
  return backward_impl(dout_in, q, kd, grid, vd, ka, dil, Fold{}, nullptr);
}

// The backward with the key/value gradients folded through the reflection padding (pad) and added
// into dst (B, Ctot, H, W): keys of head n at channels k_off + n*Ck, values at v_off + n*Cv, with
// BN = B * heads, each scaled by `scale` (the output's weight in a mix). Returns dq only (unscaled).
// dst keeps whatever it held (e.g. the conv path's gradient).
at::Tensor backward_fold(const at::Tensor& dout_in, const at::Tensor& q, const at::Tensor& kd,
                         const at::Tensor& grid, const at::Tensor& vd, int64_t ka, int64_t dil, at::Tensor dst,
                         int64_t heads, int64_t k_off, int64_t v_off, int64_t pad, double scale) {
  TORCH_CHECK(dst.dim() == 4 && dst.is_contiguous() && dst.device().is_cpu() && dst.scalar_type() == q.scalar_type(),
              "window attention fold: dst must be a contiguous CPU (B, C, H, W) map of the inputs' dtype");
  Fold f;
  f.on = true;
  f.N = heads; f.Ctot = dst.size(1); f.H = dst.size(2); f.W = dst.size(3); f.pad = pad;
  f.k_off = k_off; f.v_off = v_off; f.scale = scale;
  TORCH_CHECK(heads >= 1 && q.size(0) == dst.size(0) * heads, "window attention fold: q batch must be B * heads");
  TORCH_CHECK(pad >= 0 && pad < f.H && pad < f.W, "window attention fold: reflection needs pad < H and pad < W");
  TORCH_CHECK(kd.size(2) == f.H + 2 * pad && kd.size(3) * kd.size(4) >= f.W + 2 * pad,
              "window attention fold: padded key shape does not match dst and pad");
  TORCH_CHECK(k_off >= 0 && v_off >= 0 && k_off + heads * kd.size(1) <= f.Ctot && v_off + heads * vd.size(1) <= f.Ctot,
              "window attention fold: key/value channels leave dst");
  return backward_impl(dout_in, q, kd, grid, vd, ka, dil, f, &dst)[0];
}

// Reflection padding and the phase split in one pass, read in place from a channel range of a map:
// src (B, Ctot, H, W) -> (B, C, Hp, S, Wq), [b, c, r, p, m] = src[b, c_off + c] reflection-padded by pad
// at row r, column m*S + p (zero beyond the padded width): the kernels' kd / vd layout for B*heads
// planes of C / heads channels, without F.pad's output or the strided split copy.
at::Tensor pad_split(const at::Tensor& src, int64_t c_off, int64_t C, int64_t pad, int64_t S) {
  TORCH_CHECK(src.dim() == 4 && src.is_contiguous() && src.device().is_cpu(),
              "pad_split: src must be a contiguous CPU (B, C, H, W) map");
  const int64_t B = src.size(0), Ctot = src.size(1), H = src.size(2), W = src.size(3);
  TORCH_CHECK(S >= 1 && pad >= 0 && pad < H && pad < W, "pad_split: reflection needs pad < H and pad < W, stride >= 1");
  TORCH_CHECK(c_off >= 0 && C >= 0 && c_off + C <= Ctot, "pad_split: channel range leaves src");
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad, Wq = (Wp + S - 1) / S;
  auto out = at::empty({B, C, Hp, S, Wq}, src.options());
  if (B * C == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "pad_split", [&] {
    using T = scalar_t;
    const T* X = src.data_ptr<T>();
    T* Y = out.data_ptr<T>();
    // planes in a few contiguous chunks: one plane is a few hundred elements, too little for a task each
    const int64_t planes = B * C;
    const int64_t nchunk = std::min<int64_t>(planes, 8 * std::max<int64_t>(1, at::get_num_threads()));
    std::vector<int64_t> rsrc(Hp);  // padded row -> source row
    for (int64_t r = 0; r < Hp; ++r) rsrc[r] = reflect_index(r - pad, H);
    parallel_tasks(nchunk, [&](int64_t ch) {
      const int64_t t0 = planes * ch / nchunk, t1 = planes * (ch + 1) / nchunk;
      std::vector<T> rowbuf(S > 1 ? Wq * S : 0, T(0));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / C, c = t % C;
        const T* sp = X + (b * Ctot + c_off + c) * H * W;
        T* dp = Y + t * Hp * S * Wq;
        for (int64_t r = 0; r < Hp; ++r) {
          const T* srow = sp + rsrc[r] * W;
          T* drow = dp + r * S * Wq;
          if (S == 1) {
            for (int64_t j = 0; j < pad; ++j) drow[j] = srow[pad - j];
            std::copy(srow, srow + W, drow + pad);
            for (int64_t j = 0; j < pad; ++j) drow[pad + W + j] = srow[W - 2 - j];
            continue;
          }
          // the padded row (zeros past Wp up to Wq * S) in a local buffer, then split by phase
          T* prow = rowbuf.data();
          for (int64_t j = 0; j < pad; ++j) prow[j] = srow[pad - j];
          std::copy(srow, srow + W, prow + pad);
          for (int64_t j = 0; j < pad; ++j) prow[pad + W + j] = srow[W - 2 - j];
          for (int64_t p = 0; p < S; ++p) {
            T* dph = drow + p * Wq;
            for (int64_t m = 0; m < Wq; ++m) dph[m] = prow[m * S + p];
          }
        }
      }
    });
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "sliding-window attention forward: (out, softmax weights if save_weights)");
  m.def("backward", &backward, "sliding-window attention backward: (dq, dkd, dvd)");
  m.def("pad_split", &pad_split, "reflection pad + phase split of a channel range: (B, C, Hp, S, Wq)");
  m.def("backward_fold", &backward_fold, "backward adding the key/value gradients, reflection folded, into dst: dq");
}

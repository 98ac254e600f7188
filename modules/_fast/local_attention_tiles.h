// Register tiles of the local attention kernel: the innermost loops, on raw pointers.
//
// A tile is NR output rows x NB window columns x one vector of output columns. Every key/value
// vector loaded from memory feeds the FMAs of up to NR rows (the rows whose windows share that
// padded row), and the accumulators of the whole tile stay in registers. Rows of W' columns run in
// full vectors and, where at most half a vector is left, one half vector (W' = 56 = 3 x 16 + 8,
// W' = 7 -> 8 lanes), over a width padded up to half a vector.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

// a*b + c as one fused multiply-add (the torch build uses ISO C++, where GCC would not contract);
// set before any kernel code, and only for the local attention sources
#pragma GCC optimize("fp-contract=fast")

#include "simd.h"

namespace {

// Full vector: one register (kRegBytes); half vector for row tails.
constexpr int kFullBytes = kRegBytes;
constexpr int kHalfBytes = kFullBytes / 2;

template <typename T> struct Vec {
  typedef typename VecB<T, kFullBytes>::type V;
  static constexpr int L = kFullBytes / static_cast<int>(sizeof(T));
};

template <typename T> using V_t = typename Vec<T>::V;
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

constexpr int kMaxNB = 7;   // window columns per register tile
constexpr int kMaxNR = 4;   // output rows per register tile
#if defined(__AVX512F__)
constexpr int kMaxAcc = 24; // NR * NB accumulators (of 32 vector registers)
#else
constexpr int kMaxAcc = 12; // (of 16)
#endif
constexpr int max_nr(int nb) { return std::min(kMaxNR, kMaxAcc / nb); }
constexpr int kMaxScatterNR = 8;  // output rows per scatter tile (its registers: one weight vector per row)
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

}  // namespace

// Grouped k x k convolution of the ACmix convolution path (CPU), forward and backward,
// reading the Stage I output in place.
//
// x  (B, C, d, H, W) contiguous: group i reads the C planes x[b, :, i] (strided by d planes),
//    i.e. f_all = qkv viewed as (B, 3N, d, H, W) (or the light-FC output, same layout)
// w  (d*N, C, k, k): output channel i*N + n of group i
// out (B, d*N, Ho, Wo), Ho = ceil(H / S), zero padding k // 2 (odd k)
//
// One task per (b, group i). Its C input planes are copied into a per-thread scratch (its zero
// padding written once per call),
// zero padded and split by phase (row % S, column % S), each phase plane with row pitch Wq:
//   P[c][pr][pc][r*Wq + m] = xpad[c][r*S + pr][m*S + pc].
// Output pixel (y, x), tap (a, b) then reads P[c][a%S][b%S] at (y*Wq + x) + (a/S)*Wq + b/S: with
// the output laid out flat with the same pitch Wq ("wide" rows: columns Wo..Wq-1 are computed and
// dropped), every tap is one unit-stride shifted read of the whole plane, with no border branch,
// for any stride. The loops run over that flat index in vectors (GCC vector extensions), several
// vectors per weight broadcast, the outputs of a block held in registers.
// Backward, same task split: dout goes into a scratch with Q = (k-1)/S zero rows and columns in
// front (pitch Wq), so dx (per phase, a correlation with the flipped taps of that phase) and dW
// (dout x shifted input, summed over pixels) are unit-stride reads too. Backward tasks are
// (chunk of images, group); dW is summed per task into its own slot (chunks, d, N, C, k, k); the
// caller sums over the chunks: no atomics, and the result does not depend on the thread count.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"

namespace {

// One register per vector (64 bytes with AVX-512, else 32): the register tiles below are sized in
// registers, and a wider vector type would take two each and spill.
template <typename T> using vec_t = typename VecB<T, kRegBytes>::type;
template <typename T> constexpr int64_t lanes() { return kRegBytes / sizeof(T); }
template <> struct IntVecB<double, 32> { typedef int64_t type __attribute__((vector_size(32), aligned(8))); };

constexpr int kRegs = kRegBytes == 64 ? 32 : 16;  // vector registers
constexpr int XT = 4;  // most vectors per register tile along the flat pixel index (then single-vector tails)
// vectors per tile for NB outputs: NB*XT accumulators, XT inputs and a broadcast weight in registers
constexpr int xt_for(int NB) { return std::min(XT, std::max(1, (kRegs - 1) / (NB + 1))); }
// dW tiles: NB dout rows by TB taps, NB*TB accumulators plus NB + 1 loaded vectors
constexpr int kDotNB = 4;
constexpr int tb_for(int NB) { return std::min(5, std::max(1, (kRegs - 1 - NB) / NB)); }

struct Geo {
  int64_t B, C, d, H, W, N, k, S, p, Q, Hq, Wq, Ho, Wo, PLB, L;
  int64_t K2() const { return k * k; }
};

Geo geometry(const at::Tensor& x, const at::Tensor& w, int64_t S, int64_t vec) {
  TORCH_CHECK(x.dim() == 5, "conv path kernel: expected x (B, C, d, H, W), got ", x.dim(), " dims");
  TORCH_CHECK(w.dim() == 4 && w.size(2) == w.size(3), "conv path kernel: expected w (d*N, C, k, k)");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "conv path kernel: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "conv path kernel: contiguous tensors only");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "conv path kernel: x and w must share one dtype");
  TORCH_CHECK(S >= 1, "conv path kernel: stride must be >= 1");
  Geo g;
  g.B = x.size(0); g.C = x.size(1); g.d = x.size(2); g.H = x.size(3); g.W = x.size(4);
  g.k = w.size(2);
  TORCH_CHECK(g.k % 2 == 1, "conv path kernel: kernel size must be odd, got ", g.k);
  TORCH_CHECK(w.size(1) == g.C, "conv path kernel: w has ", w.size(1), " input channels per group, x has ", g.C);
  TORCH_CHECK(g.d > 0 && w.size(0) % g.d == 0, "conv path kernel: w rows (", w.size(0), ") not a multiple of d=", g.d);
  TORCH_CHECK(g.H > 0 && g.W > 0 && g.B > 0 && g.C > 0, "conv path kernel: empty input");
  g.N = w.size(0) / g.d;
  g.S = S;
  g.p = g.k / 2;
  g.Q = (g.k - 1) / S;
  g.Hq = (g.H + 2 * g.p + S - 1) / S;
  g.Wq = (g.W + 2 * g.p + S - 1) / S;
  g.Ho = (g.H - 1) / S + 1;
  g.Wo = (g.W - 1) / S + 1;
  const int64_t tile = XT * vec;
  g.L = (g.Ho * g.Wq + vec - 1) / vec * vec;
  // every read (forward, dx, dW) stays below Hq*Wq + tile + (Q+1)*Wq
  g.PLB = (g.Hq * g.Wq + tile + (g.Q + 1) * g.Wq + vec - 1) / vec * vec;
  return g;
}

// dst[nb][f] = sum_j wm[j*ws + nb] * src[off[j] + f] for f in [f0, f1) (f1 - f0 a multiple of the
// tile), nb < NB; dst rows dst + nb*ds.
template <typename T, int NB, int XT>
void corr_block(const T* src, const int64_t* off, int64_t J, const T* wm, int64_t ws, int64_t f0, int64_t f1,
                T* dst, int64_t ds) {
  using V = vec_t<T>;
  constexpr int64_t VL = lanes<T>();
  for (int64_t f = f0; f < f1; f += XT * VL) {
    V acc[NB][XT];
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 8
      for (int t = 0; t < XT; ++t) acc[nb][t] = V{} ;
    for (int64_t j = 0; j < J; ++j) {
      const T* s = src + off[j] + f;
      V in[XT];
#pragma GCC unroll 8
      for (int t = 0; t < XT; ++t) in[t] = ldv<kRegBytes>(s + t * VL);
      const T* wj = wm + j * ws;
#pragma GCC unroll 8
      for (int nb = 0; nb < NB; ++nb) {
        const T wv = wj[nb];
#pragma GCC unroll 8
        for (int t = 0; t < XT; ++t) acc[nb][t] += in[t] * wv;
      }
    }
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 8
      for (int t = 0; t < XT; ++t) stv<kRegBytes>(dst + nb * ds + f + t * VL, acc[nb][t]);
  }
}

// [f0, f1) (a multiple of the vector length): tiles of XT vectors, then single vectors
template <typename T, int NB>
void corr_tiles(const T* src, const int64_t* off, int64_t J, const T* wm, int64_t ws, int64_t f0, int64_t f1,
                T* dst, int64_t ds) {
  constexpr int XTN = xt_for(NB);
  const int64_t tile = XTN * lanes<T>();
  const int64_t fm = f0 + (f1 - f0) / tile * tile;
  corr_block<T, NB, XTN>(src, off, J, wm, ws, f0, fm, dst, ds);
  corr_block<T, NB, 1>(src, off, J, wm, ws, fm, f1, dst, ds);
}

constexpr int kMaxNB = 6;

template <typename T>
void corr(const T* src, const int64_t* off, int64_t J, const T* wm, int64_t ws, int64_t nout, int64_t f0,
          int64_t f1, T* dst, int64_t ds) {
  for (int64_t n0 = 0; n0 < nout; n0 += kMaxNB) {
    const int nb = static_cast<int>(std::min<int64_t>(kMaxNB, nout - n0));
    const T* w0 = wm + n0;
    T* d0 = dst + n0 * ds;
    switch (nb) {
      case 1: corr_tiles<T, 1>(src, off, J, w0, ws, f0, f1, d0, ds); break;
      case 2: corr_tiles<T, 2>(src, off, J, w0, ws, f0, f1, d0, ds); break;
      case 3: corr_tiles<T, 3>(src, off, J, w0, ws, f0, f1, d0, ds); break;
      case 4: corr_tiles<T, 4>(src, off, J, w0, ws, f0, f1, d0, ds); break;
      case 5: corr_tiles<T, 5>(src, off, J, w0, ws, f0, f1, d0, ds); break;
      default: corr_tiles<T, 6>(src, off, J, w0, ws, f0, f1, d0, ds); break;
    }
  }
}

// acc[nb][tb] += sum_{f < L} D[nb*dstr + f] * src[off[tb] + f] lane-wise, nb < NB, tb < TB (L a
// multiple of the vector length); acc[nb][tb] is the vector at acc + (nb*os + tb)*VL. Lanes are
// summed once per task (after all its images), not per call: for 7x7 maps a per-call
// reduction cost more than the products.
template <typename T, int NB, int TB>
void dot_block(const T* D, int64_t dstr, const T* src, const int64_t* off, int64_t L, T* acc_out, int64_t os) {
  using V = vec_t<T>;
  constexpr int64_t VL = lanes<T>();
  V acc[NB][TB];
#pragma GCC unroll 8
  for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 8
    for (int tb = 0; tb < TB; ++tb) acc[nb][tb] = ldv<kRegBytes>(acc_out + (nb * os + tb) * VL);
  const T* s[TB];
#pragma GCC unroll 8
  for (int tb = 0; tb < TB; ++tb) s[tb] = src + off[tb];
  for (int64_t f = 0; f < L; f += VL) {
    V dv[NB];
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb) {
      dv[nb] = ldv<kRegBytes>(D + nb * dstr + f);
      in_reg(dv[nb]);
    }
#pragma GCC unroll 8
    for (int tb = 0; tb < TB; ++tb) {
      V in = ldv<kRegBytes>(s[tb] + f);
      in_reg(in);
#pragma GCC unroll 8
      for (int nb = 0; nb < NB; ++nb) acc[nb][tb] += dv[nb] * in;
    }
  }
#pragma GCC unroll 8
  for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 8
    for (int tb = 0; tb < TB; ++tb) stv<kRegBytes>(acc_out + (nb * os + tb) * VL, acc[nb][tb]);
}

template <typename T, int NB>
void dot_nb(int tb, const T* D, int64_t dstr, const T* src, const int64_t* off, int64_t L, T* out, int64_t os) {
  switch (tb) {
    case 1: dot_block<T, NB, 1>(D, dstr, src, off, L, out, os); break;
    case 2: dot_block<T, NB, 2>(D, dstr, src, off, L, out, os); break;
    case 3: dot_block<T, NB, 3>(D, dstr, src, off, L, out, os); break;
    case 4: dot_block<T, NB, 4>(D, dstr, src, off, L, out, os); break;
    default: dot_block<T, NB, 5>(D, dstr, src, off, L, out, os); break;
  }
}

// acc(n, j) += sum_f D[n*dstr + f] * src[off[j] + f] for n < nout, j < J (lane-wise vectors at
// out + (n*os + j)*VL)
template <typename T>
void dots(const T* D, int64_t dstr, int64_t nout, const T* src, const int64_t* off, int64_t J, int64_t L, T* out,
          int64_t os) {
  for (int64_t n0 = 0; n0 < nout; n0 += kDotNB) {
    const int nb = static_cast<int>(std::min<int64_t>(kDotNB, nout - n0));
    const int tbm = nb == 1 ? tb_for(1) : nb == 2 ? tb_for(2) : nb == 3 ? tb_for(3) : tb_for(4);
    for (int64_t j0 = 0; j0 < J; j0 += tbm) {
      const int tb = static_cast<int>(std::min<int64_t>(tbm, J - j0));
      const T* Dn = D + n0 * dstr;
      T* o = out + (n0 * os + j0) * lanes<T>();
      switch (nb) {
        case 1: dot_nb<T, 1>(tb, Dn, dstr, src, off + j0, L, o, os); break;
        case 2: dot_nb<T, 2>(tb, Dn, dstr, src, off + j0, L, o, os); break;
        case 3: dot_nb<T, 3>(tb, Dn, dstr, src, off + j0, L, o, os); break;
        default: dot_nb<T, kDotNB>(tb, Dn, dstr, src, off + j0, L, o, os); break;
      }
    }
  }
}


// Stride 2: a whole plane (n = H*W values) split by the parity of its flat index, and merged
// back: ev[j] = src[2j], od[j] = src[2j + 1]. Row y (flat start y*W) then finds its even and odd
// columns as two runs of ev/od (which swap where y*W is odd): one shuffle pass per plane, not per
// row (rows of 14 or 28 values are too short for it). ev and od need VL values of slack.
template <typename T>
void split_flat(const T* src, int64_t n, T* ev, T* od) {
  using V = vec_t<T>;
  using I = typename IntVecB<T, kRegBytes>::type;
  constexpr int64_t VL = lanes<T>();
  I e, o;
  for (int64_t l = 0; l < VL; ++l) { e[l] = 2 * l; o[l] = 2 * l + 1; }
  int64_t j = 0;
  for (; 2 * (j + VL) <= n; j += VL) {
    const V a = ldv<kRegBytes>(src + 2 * j), b = ldv<kRegBytes>(src + 2 * j + VL);
    stv<kRegBytes>(ev + j, __builtin_shuffle(a, b, e));
    stv<kRegBytes>(od + j, __builtin_shuffle(a, b, o));
  }
  if (2 * j < n) {
    alignas(64) T tmp[2 * VL] = {};
    std::memcpy(tmp, src + 2 * j, (n - 2 * j) * sizeof(T));
    const V a = ldv<kRegBytes>(tmp), b = ldv<kRegBytes>(tmp + VL);
    stv<kRegBytes>(ev + j, __builtin_shuffle(a, b, e));
    stv<kRegBytes>(od + j, __builtin_shuffle(a, b, o));
  }
}

template <typename T>
void merge_flat(const T* ev, const T* od, int64_t n, T* dst) {
  using V = vec_t<T>;
  using I = typename IntVecB<T, kRegBytes>::type;
  constexpr int64_t VL = lanes<T>();
  I lo, hi;
  for (int64_t l = 0; l < VL; ++l) {
    lo[l] = (l % 2) * VL + l / 2;
    hi[l] = (l % 2) * VL + (l + VL) / 2;
  }
  int64_t j = 0;
  for (; 2 * (j + VL) <= n; j += VL) {
    const V a = ldv<kRegBytes>(ev + j), b = ldv<kRegBytes>(od + j);
    stv<kRegBytes>(dst + 2 * j, __builtin_shuffle(a, b, lo));
    stv<kRegBytes>(dst + 2 * j + VL, __builtin_shuffle(a, b, hi));
  }
  if (2 * j < n) {
    alignas(64) T tmp[2 * VL];
    const V a = ldv<kRegBytes>(ev + j), b = ldv<kRegBytes>(od + j);
    stv<kRegBytes>(tmp, __builtin_shuffle(a, b, lo));
    stv<kRegBytes>(tmp + VL, __builtin_shuffle(a, b, hi));
    std::memcpy(dst + 2 * j, tmp, (n - 2 * j) * sizeof(T));
  }
}

// where row y's even and odd columns sit in the flat split (ev, od) of its plane
template <typename T>
inline void row_runs(T* ev, T* od, int64_t y, int64_t W, T*& even_cols, T*& odd_cols) {
  const int64_t s = y * W;
  if (s % 2 == 0) {
    even_cols = ev + s / 2;
    odd_cols = od + s / 2;
  } else {
    even_cols = od + (s - 1) / 2;
    odd_cols = ev + (s + 1) / 2;
  }
}

// scratch values split_flat / merge_flat need for one plane
inline int64_t flat_scratch(const Geo& g, int64_t vec) { return g.S == 2 ? 2 * ((g.H * g.W + 1) / 2 + 2 * vec) : 0; }

// Backward tasks: (chunk of bs images, group); dW is summed over a chunk's images in vector
// accumulators, one slot per (chunk, group). The split depends on the shape only (never on the
// thread count), so the summation order, hence the result, is fixed.
inline void dw_chunks(const Geo& g, int64_t& bs, int64_t& nchunks) {
  const int64_t want = std::min<int64_t>(g.B, std::max<int64_t>(1, (32 + g.d - 1) / g.d));
  bs = (g.B + want - 1) / want;
  nchunks = (g.B + bs - 1) / bs;
}

// n values; short rows (4x4 and 8x8 maps) in an inline loop rather than a memcpy call each
template <typename T>
inline void copy_row(T* dst, const T* src, int64_t n) {
  if (n * static_cast<int64_t>(sizeof(T)) >= 64) {
    std::memcpy(dst, src, n * sizeof(T));
    return;
  }
  for (int64_t x = 0; x < n; ++x) dst[x] = src[x];
}

// The C planes of group i of batch b into the phase scratch P (C*S*S planes of PLB). Only the
// interior positions are written, the same ones for every image of a call: the zero padding
// around them is written once, when the scratch is allocated (zeroed), and stays.
template <typename T>
void load_input(const Geo& g, const T* X, int64_t b, int64_t i, T* P, T* flat) {
  const int64_t HW = g.H * g.W;
  T* ev = flat;
  T* od = flat + (HW + 1) / 2 + 2 * lanes<T>();
  for (int64_t c = 0; c < g.C; ++c) {
    const T* xs = X + ((b * g.C + c) * g.d + i) * HW;
    T* pc = P + c * g.S * g.S * g.PLB;
    if (g.S == 2) {  // column x -> phase (x + p) % 2, position (x + p) / 2
      split_flat(xs, HW, ev, od);
      for (int64_t y = 0; y < g.H; ++y) {
        const int64_t Y = y + g.p;
        T* base = pc + (Y % 2) * 2 * g.PLB + (Y / 2) * g.Wq;
        T *e, *o;
        row_runs(ev, od, y, g.W, e, o);
        copy_row(base + (g.p % 2) * g.PLB + g.p / 2, e, (g.W + 1) / 2);
        copy_row(base + ((g.p + 1) % 2) * g.PLB + (g.p + 1) / 2, o, g.W / 2);
      }
      continue;
    }
    for (int64_t y = 0; y < g.H; ++y) {
      const int64_t Y = y + g.p;
      const T* row = xs + y * g.W;
      if (g.S == 1) {
        copy_row(pc + Y * g.Wq + g.p, row, g.W);
      } else {
        T* base = pc + (Y % g.S) * g.S * g.PLB + (Y / g.S) * g.Wq;
        for (int64_t x = 0; x < g.W; ++x) {
          const int64_t X2 = x + g.p;
          base[(X2 % g.S) * g.PLB + X2 / g.S] = row[x];
        }
      }
    }
  }
}

template <typename scalar_t>
void forward_impl(const Geo& g, const at::Tensor& x, const at::Tensor& wt, const std::vector<int64_t>& off, int64_t J,
                  at::Tensor& out) {
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* WT = wt.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    const int64_t nt = at::in_parallel_region() ? 1 : at::get_num_threads();
#pragma omp parallel num_threads(nt)
    {
      std::vector<scalar_t> P(g.C * g.S * g.S * g.PLB + g.N * g.PLB + flat_scratch(g, lanes<scalar_t>()));
      scalar_t* flat = P.data() + g.C * g.S * g.S * g.PLB + g.N * g.PLB;
      scalar_t* Ob = P.data() + g.C * g.S * g.S * g.PLB;
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < g.B * g.d; ++t) {
        const int64_t b = t / g.d, i = t % g.d;
        load_input(g, X, b, i, P.data(), flat);
        corr(P.data(), off.data(), J, WT + i * J * g.N, g.N, g.N, 0, g.L, Ob, g.PLB);
        for (int64_t n = 0; n < g.N; ++n) {
          scalar_t* o = O + ((b * g.d + i) * g.N + n) * g.Ho * g.Wo;
          const scalar_t* s = Ob + n * g.PLB;
          for (int64_t y = 0; y < g.Ho; ++y) copy_row(o + y * g.Wo, s + y * g.Wq, g.Wo);
        }
      }
    }
}

template <typename scalar_t>
void backward_impl(const Geo& g, const at::Tensor& dout, const at::Tensor& x, const at::Tensor& w, bool need_dx,
                   bool need_dw, at::Tensor& dx, at::Tensor& dwp, const std::vector<std::vector<int64_t>>& ph_off,
                   const std::vector<std::vector<int64_t>>& ph_tap, const std::vector<int64_t>& off, int64_t vec) {
  const int64_t S = g.S, K2 = g.K2(), SS = S * S;
  int64_t bs, nchunks;
  dw_chunks(g, bs, nchunks);
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* Wt = w.data_ptr<scalar_t>();
    const scalar_t* D = dout.data_ptr<scalar_t>();
    scalar_t* DX = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
    scalar_t* DW = need_dw ? dwp.data_ptr<scalar_t>() : nullptr;
    const int64_t nt = at::in_parallel_region() ? 1 : at::get_num_threads();
    const int64_t HW = g.H * g.W, HWo = g.Ho * g.Wo;
#pragma omp parallel num_threads(nt)
    {
      const int64_t inP = need_dw ? g.C * SS * g.PLB : 0;
      const int64_t dxP = need_dx ? g.C * SS * g.PLB : 0;
      std::vector<scalar_t> buf(inP + dxP + g.N * g.PLB + flat_scratch(g, lanes<scalar_t>()));
      scalar_t* flat = buf.data() + inP + dxP + g.N * g.PLB;
      scalar_t* P = buf.data();
      scalar_t* DXP = P + inP;
      scalar_t* Dp = DXP + dxP;
      std::vector<scalar_t> wm;
      std::vector<scalar_t> accv(need_dw ? g.N * g.C * K2 * lanes<scalar_t>() : 0);
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < nchunks * g.d; ++t) {
        const int64_t ci = t / g.d, i = t % g.d;
        std::fill(accv.begin(), accv.end(), scalar_t(0));
        for (int64_t b = ci * bs; b < std::min(g.B, (ci + 1) * bs); ++b) {
          // dout of this group: Q zero rows and columns in front, row pitch Wq (the zeros stay from
          // the allocation: only the interior is written)
          for (int64_t n = 0; n < g.N; ++n) {
            const scalar_t* ds = D + ((b * g.d + i) * g.N + n) * HWo;
            for (int64_t y = 0; y < g.Ho; ++y) copy_row(Dp + n * g.PLB + (g.Q + y) * g.Wq + g.Q, ds + y * g.Wo, g.Wo);
          }
          const scalar_t* wg = Wt + i * g.N * g.C * K2;  // w[i*N + n][c][tap]
          if (need_dw) {
            load_input(g, X, b, i, P, flat);
            dots(Dp + g.Q * g.Wq + g.Q, g.PLB, g.N, P, off.data(), g.C * K2, g.L, accv.data(), g.C * K2);
          }
          if (need_dx) {
            for (int64_t pr = 0; pr < S; ++pr)
              for (int64_t pc = 0; pc < S; ++pc) {
                const int64_t ph = pr * S + pc;
                // rows r of this phase that hold input rows: r*S + pr in [p, p + H)
                const int64_t r_lo = std::max<int64_t>(0, (g.p - pr + S - 1) / S);
                const int64_t r_hi = (g.p + g.H - 1 - pr) / S;  // inclusive
                if (r_hi < r_lo) continue;
                const int64_t J = static_cast<int64_t>(ph_off[ph].size());
                const int64_t f0 = r_lo * g.Wq / vec * vec;
                const int64_t f1 = f0 + ((r_hi + 1) * g.Wq - f0 + vec - 1) / vec * vec;
                scalar_t* dst = DXP + ph * g.PLB;
                if (J == 0) {
                  for (int64_t c = 0; c < g.C; ++c)
                    std::fill(dst + c * SS * g.PLB + f0, dst + c * SS * g.PLB + f1, scalar_t(0));
                  continue;
                }
                wm.resize(J * g.C);
                for (int64_t j = 0; j < J; ++j) {
                  const int64_t n = ph_tap[ph][j] / K2, tap = ph_tap[ph][j] % K2;
                  for (int64_t c = 0; c < g.C; ++c) wm[j * g.C + c] = wg[(n * g.C + c) * K2 + tap];
                }
                corr(Dp, ph_off[ph].data(), J, wm.data(), g.C, g.C, f0, f1, dst, SS * g.PLB);
              }
            for (int64_t c = 0; c < g.C; ++c) {
              scalar_t* dxs = DX + ((b * g.C + c) * g.d + i) * HW;
              const scalar_t* src = DXP + c * SS * g.PLB;
              if (S == 2) {  // the rows' even and odd columns into the flat split, merged in one pass
                scalar_t* ev = flat;
                scalar_t* od = flat + (HW + 1) / 2 + 2 * lanes<scalar_t>();
                for (int64_t y = 0; y < g.H; ++y) {
                  const int64_t Y = y + g.p;
                  const scalar_t* base = src + (Y % 2) * 2 * g.PLB + (Y / 2) * g.Wq;
                  scalar_t *e, *o;
                  row_runs(ev, od, y, g.W, e, o);
                  copy_row(e, base + (g.p % 2) * g.PLB + g.p / 2, (g.W + 1) / 2);
                  copy_row(o, base + ((g.p + 1) % 2) * g.PLB + (g.p + 1) / 2, g.W / 2);
                }
                merge_flat(ev, od, HW, dxs);
                continue;
              }
              for (int64_t y = 0; y < g.H; ++y) {
                const int64_t Y = y + g.p;
                scalar_t* row = dxs + y * g.W;
                if (S == 1) {
                  copy_row(row, src + Y * g.Wq + g.p, g.W);
                } else {
                  const scalar_t* base = src + (Y % S) * S * g.PLB + (Y / S) * g.Wq;
                  for (int64_t x = 0; x < g.W; ++x) {
                    const int64_t X2 = x + g.p;
                    row[x] = base[(X2 % S) * g.PLB + X2 / S];
                  }
                }
              }
            }
          }
        }  // images of the chunk
        if (need_dw) {  // lanes summed, into this (chunk, group)'s slot
          scalar_t* dst = DW + (ci * g.d + i) * g.N * g.C * K2;
          constexpr int64_t VL = lanes<scalar_t>();
          for (int64_t q = 0; q < g.N * g.C * K2; ++q) {
            scalar_t sum = 0;
            for (int64_t l = 0; l < VL; ++l) sum += accv[q * VL + l];
            dst[q] = sum;
          }
        }
      }
    }
}

}  // namespace

at::Tensor forward(const at::Tensor& x, const at::Tensor& w, int64_t stride) {
  const int64_t vec = x.scalar_type() == at::kDouble ? lanes<double>() : lanes<float>();
  const Geo g = geometry(x, w, stride, vec);
  auto out = at::empty({g.B, g.d * g.N, g.Ho, g.Wo}, x.options());
  const int64_t J = g.C * g.K2();
  // wt[i][j][n] = w[i*N + n][j], j = (c*k + a)*k + b: the weights of one tap for all N outputs adjacent
  const at::Tensor wt = w.reshape({g.d, g.N, J}).transpose(1, 2).contiguous();
  std::vector<int64_t> off(J);
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t a = 0; a < g.k; ++a)
      for (int64_t bb = 0; bb < g.k; ++bb)
        off[(c * g.k + a) * g.k + bb] = ((c * g.S + a % g.S) * g.S + bb % g.S) * g.PLB + (a / g.S) * g.Wq + bb / g.S;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_path_forward",
                             [&] { forward_impl<scalar_t>(g, x, wt, off, J, out); });
  return out;
}

// (dx (B, C, d, H, W), dw_partial (chunks, d, N, C, k, k)); dw = dw_partial.sum(0) reshaped (d*N, C, k, k).
std::vector<at::Tensor> backward(const at::Tensor& dout_in, const at::Tensor& x, const at::Tensor& w, int64_t stride,
                                 bool need_dx, bool need_dw) {
  const int64_t vec = x.scalar_type() == at::kDouble ? lanes<double>() : lanes<float>();
  const Geo g = geometry(x, w, stride, vec);
  const at::Tensor dout = dout_in.contiguous();
  TORCH_CHECK(dout.scalar_type() == x.scalar_type(), "conv path kernel: grad dtype differs from input");
  TORCH_CHECK(dout.sizes() == at::IntArrayRef({g.B, g.d * g.N, g.Ho, g.Wo}), "conv path kernel: grad shape ",
              dout.sizes(), " differs from the output shape");
  auto dx = need_dx ? at::empty_like(x) : at::empty({0}, x.options());
  int64_t bs, nchunks;
  dw_chunks(g, bs, nchunks);
  auto dwp = need_dw ? at::empty({nchunks, g.d, g.N, g.C, g.k, g.k}, x.options()) : at::empty({0}, x.options());
  const int64_t S = g.S, K2 = g.K2(), SS = S * S;
  // dx taps per phase (pr, pc): a % S == pr, b % S == pc; j = (n, tap), offset into the dout scratch
  std::vector<std::vector<int64_t>> ph_off(SS), ph_tap(SS);
  for (int64_t a = 0; a < g.k; ++a)
    for (int64_t bb = 0; bb < g.k; ++bb) {
      const int64_t ph = (a % S) * S + bb % S;
      for (int64_t n = 0; n < g.N; ++n) {
        ph_off[ph].push_back(n * g.PLB + (g.Q - a / S) * g.Wq + (g.Q - bb / S));
        ph_tap[ph].push_back(n * K2 + a * g.k + bb);  // (n, a, b): index into w[i*N + n][c] as n*C*K2 + c*K2 + tap
      }
    }
  // dW offsets: j = (c, a, b) into the input phase scratch (as the forward)
  std::vector<int64_t> off(g.C * K2);
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t a = 0; a < g.k; ++a)
      for (int64_t bb = 0; bb < g.k; ++bb)
        off[(c * g.k + a) * g.k + bb] = ((c * S + a % S) * S + bb % S) * g.PLB + (a / S) * g.Wq + bb / S;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_path_backward", [&] {
    backward_impl<scalar_t>(g, dout, x, w, need_dx, need_dw, dx, dwp, ph_off, ph_tap, off, vec);
  });
  return {dx, dwp};
}

// the same operator with L images in the vector lanes, for small maps (conv_path_lanes.cpp)
at::Tensor lanes_forward(const at::Tensor& x, const at::Tensor& w, int64_t stride);
std::vector<at::Tensor> lanes_backward(const at::Tensor& dout, const at::Tensor& x, const at::Tensor& w,
                                       int64_t stride, bool need_dx, bool need_dw);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "grouped k x k conv of (B, C, d, H, W) in place: (B, d*N, Ho, Wo)");
  m.def("backward", &backward, "its backward: (dx, per-(b, group) dW partials)");
  m.def("lanes_forward", &lanes_forward, "the same conv, images in the vector lanes (small maps)");
  m.def("lanes_backward", &lanes_backward, "its backward: (dx, per-(images group, group) dW partials)");
}

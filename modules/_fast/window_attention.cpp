// Sliding-window attention (Stage II of ResNet-ACmix) for CPU: forward and a
// hand-written backward, without any unfolded k_a^2 x C x H x W tensor.
//
// Layout (all contiguous, one dtype):
//   q   (BN, Cq, Ho, Wo)      scaled queries; the last G channels pair with the grid
//   kd  (BN, Ck, Hp, S, Wq)   padded keys, columns split by phase: kd[.., r, p, m] = k[.., r, m*S + p]
//   g   (G, Hp, S, Wq)        padded extra key channels shared by every (b, n) (the coordinate grid)
//   vd  (BN, Cv, Hp, S, Wq)   padded values, same split
//   weights (BN, K2, Ho, Wo)  softmax weights: returned by forward on request (tests), recomputed
//                             by backward into its own buffer (the forward saves nothing of this size)
// Window offset j = a * ka + b reads padded row y*S + a*dil and column x*S + b*dil,
// i.e. phase (b*dil) % S, position x + (b*dil) / S: every inner loop runs over x with
// unit stride, for any stride, so it vectorises.
// Cq = Ck + G. Logits are sum over the Cq channels, out = sum_j weights_j v_j.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp on the non-positive arguments of a max-shifted softmax. float: Cody-Waite range
// reduction and a degree-7 Taylor polynomial (relative error ~1e-7), written so the
// compiler vectorises it; double: the library exp (used for float64 checks).
inline float softmax_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.4426950408889634f + 0.5f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double softmax_exp(double x) { return std::exp(x); }

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

// Register tiles: XB consecutive output columns x NB window columns b, fully unrolled so
// the accumulators stay in vector registers. cols[b] = offset of window column b in a
// padded row.
constexpr int kMaxNB = 8;

// acc[b][xx] += sum_{c < C} a[c*as + xx] * k[c*ks + cols[b] + xx]
template <typename T, int XB, int NB>
inline void corr_tile(const T* a, int64_t as, const T* k, int64_t ks, int64_t C, const int64_t* cols, T* acc) {
  T r[NB][XB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) r[b][xx] = acc[b * XB + xx];
  for (int64_t c = 0; c < C; ++c) {
    const T* ap = a + c * as;
    const T* kp = k + c * ks;
    T av[XB];
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) av[xx] = ap[xx];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const T* kb = kp + cols[b];
#pragma GCC unroll 16
      for (int xx = 0; xx < XB; ++xx) r[b][xx] += av[xx] * kb[xx];
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) acc[b * XB + xx] = r[b][xx];
}

// out[c*os + xx] += sum_b w[b*ws + xx] * v[c*vs + cols[b] + xx], c < C
template <typename T, int XB, int NB>
inline void agg_tile(const T* w, int64_t ws, const T* v, int64_t vs, int64_t C, const int64_t* cols,
                     T* out, int64_t os) {
  T wr[NB][XB];
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b)
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) wr[b][xx] = w[b * ws + xx];
  for (int64_t c = 0; c < C; ++c) {
    const T* vp = v + c * vs;
    T* op = out + c * os;
    T o[XB];
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) o[xx] = op[xx];
#pragma GCC unroll 8
    for (int b = 0; b < NB; ++b) {
      const T* vb = vp + cols[b];
#pragma GCC unroll 16
      for (int xx = 0; xx < XB; ++xx) o[xx] += wr[b][xx] * vb[xx];
    }
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) op[xx] = o[xx];
  }
}

// d[c*ds + cols[b] + xx] += w[b*ws + xx] * a[c*as + xx], c < C (the transpose of agg_tile).
// b outer, c inner: consecutive read-modify-writes hit different channels, so the
// overlapping windows of neighbouring b never wait on store forwarding.
template <typename T, int XB, int NB>
inline void scatter_tile(const T* w, int64_t ws, const T* a, int64_t as, int64_t C, const int64_t* cols,
                         T* d, int64_t ds) {
#pragma GCC unroll 8
  for (int b = 0; b < NB; ++b) {
    T wr[XB];
#pragma GCC unroll 16
    for (int xx = 0; xx < XB; ++xx) wr[xx] = w[b * ws + xx];
    T* db = d + cols[b];
    for (int64_t c = 0; c < C; ++c) {
      const T* ap = a + c * as;
      T* dp = db + c * ds;
#pragma GCC unroll 16
      for (int xx = 0; xx < XB; ++xx) dp[xx] += wr[xx] * ap[xx];
    }
  }
}

enum class Tile { Corr, Agg, Scatter };

template <Tile K, typename T, int XB, int NB>
inline void run_tile(const T* p0, int64_t s0, const T* p1, int64_t s1, int64_t C, const int64_t* cols, T* p2,
                     int64_t s2) {
  if constexpr (K == Tile::Corr) corr_tile<T, XB, NB>(p0, s0, p1, s1, C, cols, p2);
  else if constexpr (K == Tile::Agg) agg_tile<T, XB, NB>(p0, s0, p1, s1, C, cols, p2, s2);
  else scatter_tile<T, XB, NB>(p0, s0, p1, s1, C, cols, p2, s2);
}

template <Tile K, typename T, int XB>
inline void dispatch_nb(int nb, const T* p0, int64_t s0, const T* p1, int64_t s1, int64_t C, const int64_t* cols,
                        T* p2, int64_t s2) {
  switch (nb) {
    case 1: run_tile<K, T, XB, 1>(p0, s0, p1, s1, C, cols, p2, s2); break;
    case 2: run_tile<K, T, XB, 2>(p0, s0, p1, s1, C, cols, p2, s2); break;
    case 3: run_tile<K, T, XB, 3>(p0, s0, p1, s1, C, cols, p2, s2); break;
    case 4: run_tile<K, T, XB, 4>(p0, s0, p1, s1, C, cols, p2, s2); break;
    case 5: run_tile<K, T, XB, 5>(p0, s0, p1, s1, C, cols, p2, s2); break;
    case 6: run_tile<K, T, XB, 6>(p0, s0, p1, s1, C, cols, p2, s2); break;
    case 7: run_tile<K, T, XB, 7>(p0, s0, p1, s1, C, cols, p2, s2); break;
    default: run_tile<K, T, XB, 8>(p0, s0, p1, s1, C, cols, p2, s2); break;
  }
}

// Walk the columns x of one row in chunks of 16, 8, 4, 1 and the window columns in
// blocks of up to kMaxNB; f(XB-tag, x0, b0, nb) is called per tile.
template <typename F>
inline void for_tiles(int64_t Wo, int64_t ka, F&& f) {
  int64_t x0 = 0;
  auto run = [&](auto xb) {
    constexpr int XB = decltype(xb)::value;
    for (; x0 + XB <= Wo; x0 += XB)
      for (int64_t b0 = 0; b0 < ka; b0 += kMaxNB) f(xb, x0, b0, static_cast<int>(std::min<int64_t>(kMaxNB, ka - b0)));
  };
  run(std::integral_constant<int, 16>{});
  run(std::integral_constant<int, 8>{});
  run(std::integral_constant<int, 4>{});
  run(std::integral_constant<int, 1>{});
}

// L[j][x] = sum_{c < Ca} a[c][y][x] * key(c)[y*S + i*dil][col(b) + x], j = i*ka + b;
// key(c) = kd channel c for c < Ck, else extra channel c - Ck (the grid).
template <typename T>
void correlate_row(const Geometry& g, const T* a, int64_t Ca, const T* kd, int64_t Ck, const T* extra,
                   int64_t y, T* L, const int64_t* cols) {
  const int64_t Wo = g.Wo, HWo = g.Ho * g.Wo;
  for (int64_t i = 0; i < g.ka; ++i) {
    const int64_t roff = (y * g.S + i * g.dil) * g.row();
    for_tiles(Wo, g.ka, [&](auto xb, int64_t x0, int64_t b0, int nb) {
      constexpr int XB = decltype(xb)::value;
      T acc[kMaxNB * XB] = {};
      const T* arow = a + y * Wo + x0;
      dispatch_nb<Tile::Corr, T, XB>(nb, arow, HWo, kd + roff + x0, g.plane(), std::min(Ca, Ck), cols + b0, acc, 0);
      if (Ca > Ck)
        dispatch_nb<Tile::Corr, T, XB>(nb, arow + Ck * HWo, HWo, extra + roff + x0, g.plane(), Ca - Ck, cols + b0,
                                       acc, 0);
      for (int b = 0; b < nb; ++b)
        std::copy(acc + b * XB, acc + (b + 1) * XB, L + (i * g.ka + b0 + b) * Wo + x0);
    });
  }
}

// out[c][y][x] = sum_j w[j][x] * val(c)[y*S + i*dil][col(b) + x] for c < Cout; w row j at w + j*ws;
// val(c) = vd channel c for c < Cv, else extra channel c - Cv.
template <typename T>
void aggregate_row(const Geometry& g, const T* w, int64_t ws, const T* vd, int64_t Cv, const T* extra,
                   int64_t Cout, int64_t y, T* out, const int64_t* cols) {
  const int64_t Wo = g.Wo, HWo = g.Ho * g.Wo;
  for (int64_t c = 0; c < Cout; ++c) std::fill(out + c * HWo + y * Wo, out + c * HWo + (y + 1) * Wo, T(0));
  for (int64_t i = 0; i < g.ka; ++i) {
    const int64_t roff = (y * g.S + i * g.dil) * g.row();
    for_tiles(Wo, g.ka, [&](auto xb, int64_t x0, int64_t b0, int nb) {
      constexpr int XB = decltype(xb)::value;
      const T* wp = w + (i * g.ka + b0) * ws + x0;
      T* orow = out + y * Wo + x0;
      dispatch_nb<Tile::Agg, T, XB>(nb, wp, ws, vd + roff + x0, g.plane(), std::min(Cout, Cv), cols + b0, orow, HWo);
      if (Cout > Cv)
        dispatch_nb<Tile::Agg, T, XB>(nb, wp, ws, extra + roff + x0, g.plane(), Cout - Cv, cols + b0,
                                      orow + Cv * HWo, HWo);
    });
  }
}

template <typename T>
void softmax_row(const Geometry& g, T* L, T* tmp) {
  const int64_t Wo = g.Wo, K2 = g.K2();
  T* __restrict__ m = tmp;
  T* __restrict__ s = tmp + Wo;
  std::copy(L, L + Wo, m);
  for (int64_t j = 1; j < K2; ++j) {
    const T* __restrict__ l = L + j * Wo;
    for (int64_t x = 0; x < Wo; ++x) m[x] = l[x] > m[x] ? l[x] : m[x];
  }
  std::fill(s, s + Wo, T(0));
  for (int64_t j = 0; j < K2; ++j) {
    T* __restrict__ l = L + j * Wo;
    for (int64_t x = 0; x < Wo; ++x) {
      l[x] = softmax_exp(l[x] - m[x]);
      s[x] += l[x];
    }
  }
  for (int64_t x = 0; x < Wo; ++x) s[x] = T(1) / s[x];
  for (int64_t j = 0; j < K2; ++j) {
    T* __restrict__ l = L + j * Wo;
    for (int64_t x = 0; x < Wo; ++x) l[x] *= s[x];
  }
}

// Rows are independent tasks, handed out dynamically: on a shared machine a descheduled
// thread then delays only its own rows, not a static half of the work. Same OpenMP runtime
// (and thread count) as torch.
template <typename F>
void parallel_rows(int64_t n, F&& f) {
  const int nt = at::in_parallel_region() ? 1 : at::get_num_threads();
#pragma omp parallel for schedule(dynamic, 2) num_threads(nt)
  for (int64_t t = 0; t < n; ++t) f(t);
}

template <typename T, typename F>
void parallel_rows_scratch(int64_t n, int64_t scratch, F&& f) {
  const int nt = at::in_parallel_region() ? 1 : at::get_num_threads();
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf(scratch);
#pragma omp for schedule(dynamic, 2)
    for (int64_t t = 0; t < n; ++t) f(t, buf.data());
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

// save_weights = false (inference): the softmax weights live only in a per-thread row buffer.
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& kd, const at::Tensor& grid,
                                const at::Tensor& vd, int64_t ka, int64_t dil, bool save_weights) {
  const Geometry g = geometry(q, kd, grid, vd, ka, dil);
  auto out = at::empty({g.BN, g.Cv, g.Ho, g.Wo}, q.options());
  auto weights = save_weights ? at::empty({g.BN, g.K2(), g.Ho, g.Wo}, q.options()) : at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_forward", [&] {
    const scalar_t* Q = q.data_ptr<scalar_t>();
    const scalar_t* K = kd.data_ptr<scalar_t>();
    const scalar_t* Gd = grid.data_ptr<scalar_t>();
    const scalar_t* V = vd.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    scalar_t* Wt = weights.data_ptr<scalar_t>();
    const std::vector<int64_t> cols = g.cols();
    parallel_rows_scratch<scalar_t>(g.BN * g.Ho, (g.K2() + 2) * g.Wo, [&](int64_t t, scalar_t* L) {
      const int64_t bn = t / g.Ho, y = t % g.Ho;
      scalar_t* tmp = L + g.K2() * g.Wo;
      correlate_row(g, Q + bn * g.Cq * g.Ho * g.Wo, g.Cq, K + bn * g.Ck * g.plane(), g.Ck, Gd, y, L, cols.data());
      softmax_row(g, L, tmp);
      if (save_weights) {
        scalar_t* wout = Wt + bn * g.K2() * g.Ho * g.Wo;
        for (int64_t j = 0; j < g.K2(); ++j) std::copy(L + j * g.Wo, L + (j + 1) * g.Wo, wout + (j * g.Ho + y) * g.Wo);
      }
      aggregate_row(g, L, g.Wo, V + bn * g.Cv * g.plane(), g.Cv, static_cast<const scalar_t*>(nullptr), g.Cv, y,
                    O + bn * g.Cv * g.Ho * g.Wo, cols.data());
    });
  });
  return {out, weights};
}

// Backward. Nothing of size k_a^2 is saved by the forward: the softmax weights are
// recomputed here (same code and order as the forward, so bitwise the same) into one buffer,
// used for dv, then overwritten in place with d loss / d logits for dq and dk. The buffer
// belongs to this call, so the graph can be differentiated any number of times.
std::vector<at::Tensor> backward(const at::Tensor& dout_in, const at::Tensor& q, const at::Tensor& kd,
                                 const at::Tensor& grid, const at::Tensor& vd, int64_t ka, int64_t dil) {
  const Geometry g = geometry(q, kd, grid, vd, ka, dil);
  const at::Tensor dout = dout_in.contiguous();
  TORCH_CHECK(dout.sizes() == at::IntArrayRef({g.BN, g.Cv, g.Ho, g.Wo}), "window attention: grad shape");
  auto weights = at::empty({g.BN, g.K2(), g.Ho, g.Wo}, q.options());
  auto dq = at::empty_like(q);
  auto dkd = at::zeros_like(kd);
  auto dvd = at::zeros_like(vd);
  const int64_t K2 = g.K2(), HWo = g.Ho * g.Wo;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "window_attention_backward", [&] {
    const scalar_t* Q = q.data_ptr<scalar_t>();
    const scalar_t* K = kd.data_ptr<scalar_t>();
    const scalar_t* Gd = grid.data_ptr<scalar_t>();
    const scalar_t* V = vd.data_ptr<scalar_t>();
    scalar_t* Wt = weights.data_ptr<scalar_t>();
    const scalar_t* D = dout.data_ptr<scalar_t>();
    scalar_t* DQ = dq.data_ptr<scalar_t>();
    scalar_t* DK = dkd.data_ptr<scalar_t>();
    scalar_t* DV = dvd.data_ptr<scalar_t>();
    const std::vector<int64_t> cols = g.cols();
    // Scatter phases run one padded row r at a time (each row owned by one task: no races):
    // dst[r] += sum over (y, i) with y*S + i*dil = r of w_j(y) * src(y).
    // src holds src_C channels per (b, n); the first C of them are scattered into dst (C per (b, n)).
    auto scatter = [&](const scalar_t* Wsrc, const scalar_t* src, int64_t src_C, int64_t C, scalar_t* dst) {
      parallel_rows(g.BN * g.Hp, [&](int64_t t) {
        const int64_t bn = t / g.Hp, r = t % g.Hp;
        for (int64_t i = 0; i < g.ka; ++i) {
          const int64_t r0 = r - i * g.dil;
          if (r0 < 0 || r0 % g.S != 0) continue;
          const int64_t y = r0 / g.S;
          if (y >= g.Ho) continue;
          for_tiles(g.Wo, g.ka, [&](auto xb, int64_t x0, int64_t b0, int nb) {
            constexpr int XB = decltype(xb)::value;
            const int64_t woff = (bn * K2 + i * g.ka + b0) * HWo + y * g.Wo + x0;
            dispatch_nb<Tile::Scatter, scalar_t, XB>(nb, Wsrc + woff, HWo, src + bn * src_C * HWo + y * g.Wo + x0, HWo,
                                                     C, cols.data() + b0,
                                                     dst + bn * C * g.plane() + r * g.row() + x0, g.plane());
          });
        }
      });
    };
    // Phase 0: the softmax weights, one output row at a time.
    parallel_rows_scratch<scalar_t>(g.BN * g.Ho, (K2 + 2) * g.Wo, [&](int64_t t, scalar_t* L) {
      const int64_t bn = t / g.Ho, y = t % g.Ho;
      correlate_row(g, Q + bn * g.Cq * HWo, g.Cq, K + bn * g.Ck * g.plane(), g.Ck, Gd, y, L, cols.data());
      softmax_row(g, L, L + K2 * g.Wo);
      scalar_t* wout = Wt + bn * K2 * HWo;
      for (int64_t j = 0; j < K2; ++j) std::copy(L + j * g.Wo, L + (j + 1) * g.Wo, wout + (j * g.Ho + y) * g.Wo);
    });
    // Phase 1: dv from the softmax weights and dout.
    scatter(Wt, D, g.Cv, g.Cv, DV);
    // Phase 2, one output row at a time: dW_j = dout . v_j, softmax backward written over the
    // weights (dlogit_j = w_j (dW_j - sum_i w_i dW_i)), dq = sum_j dlogit_j k_j.
    parallel_rows_scratch<scalar_t>(g.BN * g.Ho, (K2 + 1) * g.Wo, [&](int64_t t, scalar_t* scratch) {
      const int64_t bn = t / g.Ho, y = t % g.Ho;
      scalar_t* dw = scratch;
      scalar_t* dot = scratch + K2 * g.Wo;
      correlate_row(g, D + bn * g.Cv * HWo, g.Cv, V + bn * g.Cv * g.plane(), g.Cv,
                    static_cast<const scalar_t*>(nullptr), y, dw, cols.data());
      scalar_t* w = Wt + bn * K2 * HWo + y * g.Wo;
      std::fill(dot, dot + g.Wo, scalar_t(0));
      for (int64_t j = 0; j < K2; ++j) {
        const scalar_t* __restrict__ wj = w + j * HWo;
        const scalar_t* __restrict__ dj = dw + j * g.Wo;
        scalar_t* __restrict__ s = dot;
        for (int64_t x = 0; x < g.Wo; ++x) s[x] += wj[x] * dj[x];
      }
      for (int64_t j = 0; j < K2; ++j) {
        scalar_t* __restrict__ wj = w + j * HWo;
        const scalar_t* __restrict__ dj = dw + j * g.Wo;
        const scalar_t* __restrict__ s = dot;
        for (int64_t x = 0; x < g.Wo; ++x) wj[x] = wj[x] * (dj[x] - s[x]);
      }
      aggregate_row(g, w, HWo, K + bn * g.Ck * g.plane(), g.Ck, Gd, g.Cq, y, DQ + bn * g.Cq * HWo, cols.data());
    });
    // Phase 3: dk from dlogits and the queries (first Ck channels of q).
    scatter(Wt, Q, g.Cq, g.Ck, DK);
  });
  return {dq, dkd, dvd};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "sliding-window attention forward: (out, softmax weights if save_weights)");
  m.def("backward", &backward, "sliding-window attention backward: (dq, dkd, dvd)");
}

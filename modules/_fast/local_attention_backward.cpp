// Local attention backward (see local_attention.h), plain or with the key/value gradients folded
// through the reflection padding into the Stage I output's gradient.
#include "local_attention.h"
#include "local_attention_blocks.h"

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
              "local attention: the output gradient must match the output's shape and dtype");
  auto dq = at::empty_like(q);
  auto dkd = fold.on ? at::empty({0}, kd.options()) : at::empty_like(kd);
  auto dvd = fold.on ? at::empty({0}, vd.options()) : at::empty_like(vd);
  if (g.BN == 0) return {dq, dkd, dvd};
  if (g.Ho == 0 || g.Wo == 0) {
    if (fold.on) return {dq.zero_(), dkd, dvd};  // nothing to add
    return {dq.zero_(), dkd.zero_(), dvd.zero_()};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_backward", [&] {
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
              "local attention fold: dst must be a contiguous CPU (B, C, H, W) map of the inputs' dtype");
  Fold f;
  f.on = true;
  f.N = heads; f.Ctot = dst.size(1); f.H = dst.size(2); f.W = dst.size(3); f.pad = pad;
  f.k_off = k_off; f.v_off = v_off; f.scale = scale;
  TORCH_CHECK(heads >= 1 && q.size(0) == dst.size(0) * heads, "local attention fold: q batch must be B * heads");
  TORCH_CHECK(pad >= 0 && pad < f.H && pad < f.W, "local attention fold: reflection needs pad < H and pad < W");
  TORCH_CHECK(kd.size(2) == f.H + 2 * pad && kd.size(3) * kd.size(4) >= f.W + 2 * pad,
              "local attention fold: padded key shape does not match dst and pad");
  TORCH_CHECK(k_off >= 0 && v_off >= 0 && k_off + heads * kd.size(1) <= f.Ctot && v_off + heads * vd.size(1) <= f.Ctot,
              "local attention fold: key/value channels leave dst");
  return backward_impl(dout_in, q, kd, grid, vd, ka, dil, f, &dst)[0];
}

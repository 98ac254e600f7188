// Local attention forward (see local_attention.h): one task per block of output rows of one (b, n).
#include "local_attention.h"
#include "local_attention_blocks.h"

// save_weights = false (inference / training): the softmax weights live only in per-block buffers.
std::vector<at::Tensor> forward(const at::Tensor& q, const at::Tensor& kd, const at::Tensor& grid,
                                const at::Tensor& vd, int64_t ka, int64_t dil, bool save_weights) {
  const Geometry g = geometry(q, kd, grid, vd, ka, dil);
  auto out = at::empty({g.BN, g.Cv, g.Ho, g.Wo}, q.options());
  auto weights = save_weights ? at::empty({g.BN, g.K2(), g.Ho, g.Wo}, q.options()) : at::empty({0}, q.options());
  if (g.BN == 0 || g.Ho == 0 || g.Wo == 0) return {out, weights};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "local_attention_forward", [&] {
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

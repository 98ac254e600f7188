// Reflection padding and phase split for the local attention kernel's key/value layout.
#include "local_attention.h"
#include "local_attention_blocks.h"

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

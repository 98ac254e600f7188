// Moving planes into and out of the lanes layouts (conv_path_lanes.cpp, local_attention_lanes.cpp):
// L planes side by side, pixel h of plane l at buf[h * L + l].
//
// Element by element, these transpositions cost more than the arithmetic they feed on small maps (a
// scalar store per element, strided on one side); with AVX float vectors (L = 8) they move 8x8 blocks
// through registers: 8 vector loads, 24 shuffles, 8 vector stores. Other types and widths run the
// element loop. Same values either way: only data moves.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX__)
// r[j] <- column j of the 8x8 block whose rows are r[0..7]
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
template <typename T, int L> constexpr bool kBlock8 = std::is_same<T, float>::value && L == 8;
#else
template <typename T, int L> constexpr bool kBlock8 = false;
#endif

// dst[h * L + l] = src[l][h] for h < n and l < nl; lanes nl .. L-1 of dst are set to zero
template <typename T, int L>
inline void to_lanes(const T* const* src, int64_t nl, int64_t n, T* dst) {
  int64_t h0 = 0;
#if defined(__AVX__)
  if constexpr (kBlock8<T, L>) {
    for (; h0 + 8 <= n; h0 += 8) {
      __m256 r[8];
      for (int l = 0; l < 8; ++l) r[l] = l < nl ? _mm256_loadu_ps(src[l] + h0) : _mm256_setzero_ps();
      transpose8(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (h0 + j) * 8, r[j]);
    }
  }
#endif
  for (int64_t h = h0; h < n; ++h)
    for (int64_t l = 0; l < L; ++l) dst[h * L + l] = l < nl ? src[l][h] : T(0);
}

// dst[l][h] = src[h * L + l] for h < n and l < nl; with ADD, dst[l][h] += scale * src[h * L + l]
template <bool ADD, typename T, int L>
inline void from_lanes(const T* src, int64_t n, T* const* dst, int64_t nl, T scale = T(1)) {
  int64_t h0 = 0;
#if defined(__AVX__)
  if constexpr (kBlock8<T, L>) {
    const __m256 sv = _mm256_set1_ps(scale);
    for (; h0 + 8 <= n; h0 += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + (h0 + j) * 8);
      transpose8(r);
      for (int l = 0; l < nl; ++l) {
        T* p = dst[l] + h0;
        if constexpr (ADD) _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(sv, r[l])));
        else _mm256_storeu_ps(p, r[l]);
      }
    }
  }
#endif
  for (int64_t l = 0; l < nl; ++l) {
    T* p = dst[l];
    for (int64_t h = h0; h < n; ++h) {
      if constexpr (ADD) p[h] += scale * src[h * L + l];
      else p[h] = src[h * L + l];
    }
  }
}

}  // namespace

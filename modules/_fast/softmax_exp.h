// Vectorised exp for a max-shifted softmax (its arguments are <= 0), on the VecB vectors of simd.h.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>

#include "simd.h"

namespace {

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

}  // namespace

// SIMD vectors for the CPU kernels (local attention, conv path), written with GCC vector extensions
// so one source serves AVX-512, AVX2 and whatever else GCC targets with -march=native.
//
// Everything here has internal linkage (an anonymous namespace): each kernel source gets its own
// copy, and the inliner sees the same definitions it would see in a single file.
#pragma once

#include <cstdint>

namespace {

// Vectors of VB bytes (64: one AVX-512 register; 32: one AVX register; 16: SSE). Element-aligned,
// so they load from any element of a row. Attributed vector types lose their alignment attribute
// when passed as template arguments, so kernels take the width in bytes and name the type through
// VecB<T, VB>::type.
template <typename T, int VB> struct VecB;
template <> struct VecB<float, 64> { typedef float type __attribute__((vector_size(64), aligned(4))); };
template <> struct VecB<float, 32> { typedef float type __attribute__((vector_size(32), aligned(4))); };
template <> struct VecB<float, 16> { typedef float type __attribute__((vector_size(16), aligned(4))); };
template <> struct VecB<double, 64> { typedef double type __attribute__((vector_size(64), aligned(8))); };
template <> struct VecB<double, 32> { typedef double type __attribute__((vector_size(32), aligned(8))); };
template <> struct VecB<double, 16> { typedef double type __attribute__((vector_size(16), aligned(8))); };

// Integer vectors with the lanes of VecB<T, VB>: bit manipulation (exp) and shuffle masks.
template <typename T, int VB> struct IntVecB;
template <> struct IntVecB<float, 64> { typedef int32_t type __attribute__((vector_size(64), aligned(4))); };
template <> struct IntVecB<float, 32> { typedef int32_t type __attribute__((vector_size(32), aligned(4))); };
template <> struct IntVecB<float, 16> { typedef int32_t type __attribute__((vector_size(16), aligned(4))); };
template <> struct IntVecB<double, 64> { typedef int64_t type __attribute__((vector_size(64), aligned(8))); };

// Widest vector that fits one register: 64 bytes where the CPU has AVX-512, else 32 (a wider vector
// takes two registers, and register tiles sized for one would spill).
#if defined(__AVX512F__)
constexpr int kRegBytes = 64;
#else
constexpr int kRegBytes = 32;
#endif

template <int VB, typename T> inline typename VecB<T, VB>::type ldv(const T* p) {
  return *reinterpret_cast<const typename VecB<T, VB>::type*>(p);
}
template <int VB, typename T> inline void stv(T* p, typename VecB<T, VB>::type v) {
  *reinterpret_cast<typename VecB<T, VB>::type*>(p) = v;
}

// Keeps a loaded vector in a register: without it GCC folds the load into every FMA that uses it
// (one load per FMA instead of one per tile row). Only for vectors that fit one register.
template <typename V> inline void in_reg(V& v) {
  if constexpr (sizeof(V) <= kRegBytes) asm("" : "+v"(v));
}

}  // namespace

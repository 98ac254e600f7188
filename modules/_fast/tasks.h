// Pieces shared by the CPU kernels: the task loop over OpenMP threads, and the channel stride of the
// lanes layouts (local_attention_lanes.cpp, conv_path_lanes.cpp).
#pragma once

#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace {

// f(t) for t < n over torch's threads (one thread inside an ATen parallel region), dynamic schedule.
template <typename F>
void parallel_tasks(int64_t n, F&& f) {
  const int nt = at::in_parallel_region() ? 1 : static_cast<int>(std::min<int64_t>(at::get_num_threads(), n));
#pragma omp parallel num_threads(std::max(nt, 1))
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n; ++t) f(t);
  }
}

// Elements from one channel of a lanes buffer to the next: n rounded up to an odd number of cache lines
// (power-of-two strides put every channel of a buffer in one L1 set).
template <typename T>
int64_t channel_stride(int64_t n) {
  const int64_t line = 64 / static_cast<int64_t>(sizeof(T)), lines = (n + line - 1) / line;
  return (lines % 2 ? lines : lines + 1) * line;
}

}  // namespace

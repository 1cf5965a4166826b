// The fp32 register-blocked micro-kernel shared by blocked_linear.cpp (over the fp32 weight's blocks) and
// quantized_linear.cpp (over a block dequantized into a per-thread tile), and the transpose of the rows'
// inputs it broadcasts from. Included by both sources, so it lives in a header: library.py counts its text
// in the build's version (cpp_extension alone rebuilds only when a source's text changes).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

namespace bucketserve_gemm {

using Vec = at::vec::Vectorized<float>;
// Rows whose accumulators one pass over a block keeps in registers (8 x 3 AVX-512 vectors for block_n 48).
constexpr int64_t kRowsPerPass = 8;
// How far ahead of its loads a pass prefetches the weight, into L2: far enough to cover the memory's
// latency at full bandwidth, and it runs on into the next block, which follows in memory.
constexpr int64_t kAheadBytes = 12 * 1024;

// C[rows, cols * Vec::size()] = A^T[k, rows]^T @ B[k, cols * Vec::size()], rows and cols fixed at compile time.
template <int64_t ROWS, int64_t COLS>
void pass_over_block(const float* a_t, const float* b, float* c, int64_t k, int64_t ldc, int64_t valid_cols) {
  constexpr int64_t width = COLS * Vec::size();
  const int64_t ahead = kAheadBytes / (width * sizeof(float));
  Vec acc[ROWS][COLS];
  for (int64_t r = 0; r < ROWS; ++r)
    for (int64_t j = 0; j < COLS; ++j) acc[r][j] = Vec(0.f);
  for (int64_t i = 0; i < k; ++i) {
    const char* next = reinterpret_cast<const char*>(b + (i + ahead) * width);
    for (int64_t byte = 0; byte < width * int64_t(sizeof(float)); byte += 64) __builtin_prefetch(next + byte, 0, 2);
    Vec w[COLS];
    for (int64_t j = 0; j < COLS; ++j) w[j] = Vec::loadu(b + i * width + j * Vec::size());
    for (int64_t r = 0; r < ROWS; ++r) {
      const Vec x(a_t[i * ROWS + r]);
      for (int64_t j = 0; j < COLS; ++j) acc[r][j] = at::vec::fmadd(x, w[j], acc[r][j]);
    }
  }
  for (int64_t r = 0; r < ROWS; ++r) {
    if (valid_cols == width) {
      for (int64_t j = 0; j < COLS; ++j) acc[r][j].store(c + r * ldc + j * Vec::size());
    } else {  // the last block of a weight whose n is no multiple of block_n: its padding columns are dropped
      float full[width];
      for (int64_t j = 0; j < COLS; ++j) acc[r][j].store(full + j * Vec::size());
      std::copy(full, full + valid_cols, c + r * ldc);
    }
  }
}

using PassFn = void (*)(const float*, const float*, float*, int64_t, int64_t, int64_t);

template <int64_t COLS, int64_t... ROWS>
constexpr std::array<PassFn, sizeof...(ROWS)> passes_for(std::integer_sequence<int64_t, ROWS...>) {
  return {&pass_over_block<ROWS + 1, COLS>...};
}

// pass_over_block<1..kRowsPerPass, COLS>, indexed by rows - 1.
template <int64_t COLS>
constexpr std::array<PassFn, kRowsPerPass> passes = passes_for<COLS>(std::make_integer_sequence<int64_t, kRowsPerPass>{});

// x [rows, k] as groups of kRowsPerPass rows, each transposed to [k_t, rows in group] (x_t holds
// groups * k_t * kRowsPerPass floats): a step of a pass broadcasts its rows' inputs from one line. Inputs
// past k, up to k_t, are zero.
inline void transpose_row_groups(const float* x, float* x_t, int64_t rows, int64_t k, int64_t k_t) {
  const int64_t groups = (rows + kRowsPerPass - 1) / kRowsPerPass;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = g * kRowsPerPass, count = std::min(kRowsPerPass, rows - first);
    float* group = x_t + g * k_t * kRowsPerPass;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t r = 0; r < count; ++r) group[i * count + r] = x[(first + r) * k + i];
    std::fill(group + k * count, group + k_t * count, 0.f);
  }
}

}  // namespace bucketserve_gemm

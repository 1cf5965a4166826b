// bucketserve::blocked_linear: x @ weight.T for a few rows, over the weight reordered into blocks of
// block_n output rows, [ceil(n / block_n), k, block_n] (compiler/packed_weights.block_rows). The compiled
// CPU decoders call it for every projection (models/projections.py).
//
// Why a kernel: Inductor's C++ GEMM template, over the same layout, read the weights of the bench model at
// about 10 GB/s at 8 rows on our 2-core machine, half its bandwidth, and oneDNN no faster; the FMA units were
// far from busy (docs/PERFORMANCE.md, "GEMM kernel"). Each task here streams whole blocks in order, keeps
// the accumulators of up to 8 rows x one block in registers, broadcasts the rows' inputs from one line
// (x is transposed first), and prefetches the weight well ahead of the loads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "gemm_micro_kernel.h"

#include <algorithm>
#include <vector>

namespace {

using bucketserve_gemm::kRowsPerPass;
using bucketserve_gemm::Vec;

template <int64_t COLS>
void blocked_gemm(const float* x, const float* blocks, float* out, int64_t rows, int64_t k, int64_t n) {
  constexpr int64_t width = COLS * Vec::size();
  const auto& passes = bucketserve_gemm::passes<COLS>;
  const int64_t num_blocks = (n + width - 1) / width, groups = (rows + kRowsPerPass - 1) / kRowsPerPass;
  // Each group of rows transposed once, [k, rows in group]: a step of the loop broadcasts from one line.
  std::vector<float> x_t(groups * k * kRowsPerPass);
  bucketserve_gemm::transpose_row_groups(x, x_t.data(), rows, k, k);
  // Whole blocks per thread, in order: each thread streams one contiguous stretch of the weight.
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t valid_cols = std::min(width, n - block * width);
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t first = g * kRowsPerPass, count = std::min(kRowsPerPass, rows - first);
        passes[count - 1](x_t.data() + g * k * kRowsPerPass, blocks + block * k * width,
                          out + first * n + block * width, k, n, valid_cols);
      }
    }
  });
}

at::Tensor blocked_linear(const at::Tensor& x, const at::Tensor& weight_blocks, int64_t n) {
  TORCH_CHECK(x.device().is_cpu() && weight_blocks.device().is_cpu(), "blocked_linear runs on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight_blocks.scalar_type() == at::kFloat,
              "blocked_linear takes float32 input and weight");
  TORCH_CHECK(weight_blocks.dim() == 3, "weight_blocks must be [ceil(n / block_n), k, block_n], got ",
              weight_blocks.sizes());
  const int64_t num_blocks = weight_blocks.size(0), k = weight_blocks.size(1), block_n = weight_blocks.size(2);
  TORCH_CHECK(x.size(-1) == k, "x has ", x.size(-1), " features, the weight ", k);
  TORCH_CHECK((num_blocks - 1) * block_n < n && n <= num_blocks * block_n, "n = ", n, " does not fit ",
              num_blocks, " blocks of ", block_n);
  const int64_t cols = block_n / Vec::size();
  TORCH_CHECK(block_n % Vec::size() == 0 && 1 <= cols && cols <= 4, "block_n ", block_n,
              " must be 1 to 4 vectors of ", Vec::size(), " floats");
  const auto input = x.contiguous();
  const auto blocks = weight_blocks.contiguous();
  const int64_t rows = input.numel() / k;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  auto out = at::empty(out_shape, input.options());
  if (rows == 0) return out;
  const float* xp = input.data_ptr<float>();
  const float* bp = blocks.data_ptr<float>();
  float* op = out.data_ptr<float>();
  switch (cols) {
    case 1: blocked_gemm<1>(xp, bp, op, rows, k, n); break;
    case 2: blocked_gemm<2>(xp, bp, op, rows, k, n); break;
    case 3: blocked_gemm<3>(xp, bp, op, rows, k, n); break;
    default: blocked_gemm<4>(xp, bp, op, rows, k, n); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bucketserve, m) {
  m.def("blocked_linear(Tensor x, Tensor weight_blocks, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(bucketserve, CPU, m) { m.impl("blocked_linear", &blocked_linear); }

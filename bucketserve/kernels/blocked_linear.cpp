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

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

namespace {

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

template <int64_t COLS>
void blocked_gemm(const float* x, const float* blocks, float* out, int64_t rows, int64_t k, int64_t n) {
  constexpr int64_t width = COLS * Vec::size();
  static constexpr auto passes = passes_for<COLS>(std::make_integer_sequence<int64_t, kRowsPerPass>{});
  const int64_t num_blocks = (n + width - 1) / width, groups = (rows + kRowsPerPass - 1) / kRowsPerPass;
  // Each group of rows transposed once, [k, rows in group]: a step of the loop broadcasts from one line.
  std::vector<float> x_t(groups * k * kRowsPerPass);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t first = g * kRowsPerPass, count = std::min(kRowsPerPass, rows - first);
    float* group = x_t.data() + g * k * kRowsPerPass;
    for (int64_t i = 0; i < k; ++i)
      for (int64_t r = 0; r < count; ++r) group[i * count + r] = x[(first + r) * k + i];
  }
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

// bucketserve::paged_decode_attention: one query token per row attending over its context in a paged KV
// cache, read in place. The compiled CPU decoders call it for every layer (models/llama.py, Attention).
//
// Why a kernel: Inductor's loops for the same attention read the context at 14 to 17 GB/s on our 2-core
// machine, with per-position index arithmetic, a reduction parallelised over the context inside a loop over
// rows, and the value pass split into one strided sweep per 16 floats of head_dim. This reads each row's
// slots in order, every head at once, and only up to the row's own position (docs/PERFORMANCE.md).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
// Context positions one task reads: rows x chunks are the tasks, so one long row still feeds every thread.
constexpr int64_t kChunk = 256;
// Slots prefetched ahead of the one being read, kept in every cache level (locality 3). Against a
// non-temporal prefetch (locality 0) of 4 slots ahead, `python docs/bench/attention_forms.py ROWS kernel`
// (30 layers, context 2048) took 9.1 and 8.3 ms against 11.1 and 11.3 at 1 row, and 59.9 and 65.5 against
// 80.6 and 93.2 at 8 rows (docs/PERFORMANCE.md, "attention kernel").
constexpr int64_t kAhead = 8;

inline void prefetch_slot(const float* slot, int64_t floats) {
  for (int64_t i = 0; i < floats; i += 64 / sizeof(float)) __builtin_prefetch(slot + i, 0, 3);
}

inline float dot(const float* a, const float* b, int64_t n) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
  float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

inline void add_scaled(float* y, float a, const float* x, int64_t n) {
  const Vec scale(a);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) at::vec::fmadd(scale, Vec::loadu(x + i), Vec::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}

// scores[i] = exp(scores[i] - max) in place; returns {max, sum of the exponentials}.
inline std::pair<float, float> exp_shifted(float* scores, int64_t n) {
  const float max = at::vec::reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, scores, n);
  at::vec::map([max](Vec x) { return (x - Vec(max)).exp_u20(); }, scores, scores, n);
  return {max, at::vec::reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, scores, n)};
}

at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& kv_cache, int64_t layer,
                                  const at::Tensor& block_tables, const at::Tensor& positions, int64_t block_size) {
  TORCH_CHECK(query.device().is_cpu() && kv_cache.device().is_cpu(), "paged_decode_attention runs on the CPU");
  TORCH_CHECK(query.scalar_type() == at::kFloat && kv_cache.scalar_type() == at::kFloat,
              "paged_decode_attention takes float32 query and cache");
  TORCH_CHECK(query.dim() == 3 && kv_cache.dim() == 5 && kv_cache.size(1) == 2,
              "query must be [rows, heads, head_dim] and kv_cache [layers, 2, slots, kv_heads, head_dim]");
  const auto q = query.contiguous();
  const auto cache = kv_cache.contiguous();
  const auto tables = block_tables.to(at::kLong).contiguous();
  const auto pos = positions.to(at::kLong).contiguous().view({-1});
  const int64_t rows = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t slots = cache.size(2), kv_heads = cache.size(3), blocks_per_row = tables.size(1);
  TORCH_CHECK(cache.size(4) == dim && heads % kv_heads == 0, "query and cache disagree on head_dim or heads");
  TORCH_CHECK(tables.dim() == 2 && tables.size(0) == rows && pos.size(0) == rows, "one block table and position per row");
  TORCH_CHECK(0 <= layer && layer < cache.size(0), "layer ", layer, " is outside the cache's ", cache.size(0));
  TORCH_CHECK(block_size > 0 && slots % block_size == 0, "block_size must divide the cache's slots");
  const int64_t groups = heads / kv_heads, slot_stride = kv_heads * dim, num_blocks = slots / block_size;
  const float* keys = cache.data_ptr<float>() + layer * 2 * slots * slot_stride;
  const float* values = keys + slots * slot_stride;
  const float* qp = q.data_ptr<float>();
  const int64_t* table = tables.data_ptr<int64_t>();
  const int64_t* position = pos.data_ptr<int64_t>();

  int64_t longest = 0;
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(0 <= position[r] && position[r] < blocks_per_row * block_size, "row ", r, "'s position ",
                position[r], " is outside its ", blocks_per_row, " blocks of ", block_size);
    for (int64_t b = 0; b <= position[r] / block_size; ++b) {
      const int64_t block = table[r * blocks_per_row + b];
      TORCH_CHECK(0 <= block && block < num_blocks, "row ", r, "'s block table names block ", block,
                  " of a cache of ", num_blocks);
    }
    longest = std::max(longest, position[r] + 1);
  }
  const int64_t chunks = (longest + kChunk - 1) / kChunk;
  // Per task, its softmax partials: the max and the sum of exponentials per head, then the output before
  // division [heads, dim]. Tasks past a row's position leave sum 0 and are skipped when combined.
  const int64_t part = heads * (2 + dim);
  std::vector<float> partials(rows * chunks * part, 0.f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(dim));

  at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(heads * kChunk), scaled_q(heads * dim);
    std::vector<int64_t> slot_of(kChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / chunks, first = (task % chunks) * kChunk;
      const int64_t n = std::min(first + kChunk, position[r] + 1) - first;
      if (n <= 0) continue;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t p = first + i;
        slot_of[i] = (table[r * blocks_per_row + p / block_size] * block_size + p % block_size) * slot_stride;
      }
      for (int64_t j = 0; j < heads * dim; ++j) scaled_q[j] = qp[r * heads * dim + j] * scale;
      // Keys, then values, slot by slot with every head at once: one sequential stream each.
      for (int64_t i = 0; i < n; ++i) {
        if (i + kAhead < n) prefetch_slot(keys + slot_of[i + kAhead], slot_stride);
        const float* key = keys + slot_of[i];
        for (int64_t h = 0; h < heads; ++h) scores[h * kChunk + i] = dot(&scaled_q[h * dim], key + (h / groups) * dim, dim);
      }
      float* out = partials.data() + task * part;
      for (int64_t h = 0; h < heads; ++h) std::tie(out[h], out[heads + h]) = exp_shifted(&scores[h * kChunk], n);
      float* acc = out + 2 * heads;
      for (int64_t i = 0; i < n; ++i) {
        if (i + kAhead < n) prefetch_slot(values + slot_of[i + kAhead], slot_stride);
        const float* value = values + slot_of[i];
        for (int64_t h = 0; h < heads; ++h) add_scaled(acc + h * dim, scores[h * kChunk + i], value + (h / groups) * dim, dim);
      }
    }
  });

  // Each row's chunks combined: every chunk's partials rescaled to the row's overall max.
  auto result = at::empty({rows, heads, dim}, q.options());
  float* res = result.data_ptr<float>();
  at::parallel_for(0, rows * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t rh = begin; rh < end; ++rh) {
      const int64_t r = rh / heads, h = rh % heads;
      float max = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) {
        const float* p = partials.data() + (r * chunks + c) * part;
        if (p[heads + h] > 0.f) max = std::max(max, p[h]);
      }
      float total = 0.f;
      float* o = res + rh * dim;
      std::fill(o, o + dim, 0.f);
      for (int64_t c = 0; c < chunks; ++c) {
        const float* p = partials.data() + (r * chunks + c) * part;
        if (p[heads + h] == 0.f) continue;
        const float weight = std::exp(p[h] - max);
        total += weight * p[heads + h];
        add_scaled(o, weight, p + 2 * heads + h * dim, dim);
      }
      for (int64_t d = 0; d < dim; ++d) o[d] /= total;
    }
  });
  return result;
}

}  // namespace

TORCH_LIBRARY(bucketserve, m) {
  m.def("paged_decode_attention(Tensor query, Tensor kv_cache, int layer, Tensor block_tables, Tensor positions, "
        "int block_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(bucketserve, CPU, m) { m.impl("paged_decode_attention", &paged_decode_attention); }

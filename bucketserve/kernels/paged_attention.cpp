// bucketserve::paged_decode_attention: one query token per row attending over its context in a paged KV
// cache, read in place. The compiled CPU decoders call it for every layer (models/llama.py, Attention).
//
// Why a kernel: Inductor's loops for the same attention read the context at 14 to 17 GB/s on our 2-core
// machine, with per-position index arithmetic, a reduction parallelised over the context inside a loop over
// rows, and the value pass split into one strided sweep per 16 floats of head_dim. This reads each row's
// slots in order, a vector's worth of slots at a time for every head, and only up to the row's own position
// (docs/PERFORMANCE.md).
//
// The cache holds float32, or bfloat16 (half the bytes, kv_cache_dtype="bf16"); the query and all arithmetic
// are float32 either way: bfloat16 keys and values are widened to fp32 as they are loaded.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
// Context positions one task reads: rows x chunks are the tasks, so one long row still feeds every thread.
constexpr int64_t kChunk = 256;
// Slots the any-head_dim pass prefetches ahead of the one it reads, into every cache level (locality 3),
// as the others prefetch the next group of slots. Against a non-temporal prefetch (locality 0) of 4 slots
// ahead, `python docs/bench/attention_forms.py ROWS kernel` (30 layers, context 2048) took 9.1 and 8.3 ms
// against 11.1 and 11.3 at 1 row, and 59.9 and 65.5 against 80.6 and 93.2 at 8 rows (when every head_dim
// took this pass).
constexpr int64_t kAhead = 8;

// The cache holds float32 or bfloat16 (KV below): a bfloat16 is the top half of a float32, so its keys and
// values become exact fp32 in registers and the arithmetic is the fp32 path's.
inline Vec load_kv(const float* p) { return Vec::loadu(p); }

inline Vec load_kv(const c10::BFloat16* p) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512i halves = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return Vec(_mm512_castsi512_ps(_mm512_slli_epi32(halves, 16)));
#else
  float floats[Vec::size()];
  for (int64_t i = 0; i < Vec::size(); ++i) floats[i] = static_cast<float>(p[i]);
  return Vec::loadu(floats);
#endif
}

template <typename KV>
inline void prefetch_slot(const KV* slot, int64_t elements) {
  for (int64_t i = 0; i < elements; i += 64 / sizeof(KV)) __builtin_prefetch(slot + i, 0, 3);
}

template <typename KV>
inline float dot(const float* a, const KV* b, int64_t n) {
  Vec acc(0.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) acc = at::vec::fmadd(Vec::loadu(a + i), load_kv(b + i), acc);
  float sum = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; i < n; ++i) sum += a[i] * static_cast<float>(b[i]);
  return sum;
}

template <typename KV>
inline void add_scaled(float* y, float a, const KV* x, int64_t n) {
  const Vec scale(a);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) at::vec::fmadd(scale, load_kv(x + i), Vec::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += a * static_cast<float>(x[i]);
}

// scores[i] = exp(scores[i] - max) in place; returns {max, sum of the exponentials}.
inline std::pair<float, float> exp_shifted(float* scores, int64_t n) {
  const float max = at::vec::reduce_all<float>([](Vec& x, Vec& y) { return at::vec::maximum(x, y); }, scores, n);
  at::vec::map([max](Vec x) { return (x - Vec(max)).exp_u20(); }, scores, scores, n);
  return {max, at::vec::reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, scores, n)};
}

// Slots whose scores one step computes, and whose values one step adds: a vector's worth.
constexpr int64_t kGroup = Vec::size();
// Vector registers (AVX-512 has 32, AVX2 16): half may hold a value pass's outputs, a quarter a slot's value.
constexpr int64_t kRegisters = Vec::size() == 16 ? 32 : 16;

// scores[s] = q . key of slot s for kGroup slots, head_dim V vectors. The kGroup dot products' vectors are
// summed across their lanes together, by a tree of deinterleave-and-add: kGroup - 1 steps in all, where
// reducing each slot's vector alone takes log2(kGroup) shuffles and adds per slot (docs/PERFORMANCE.md,
// "The attention kernel's arithmetic").
template <int64_t V, typename KV>
inline void scores_of_group(const float* q, const KV* keys, const int64_t* slot_of, float* scores) {
  Vec sums[kGroup];
  for (int64_t s = 0; s < kGroup; ++s) {
    const KV* key = keys + slot_of[s];
    Vec acc = Vec::loadu(q) * load_kv(key);
    for (int64_t v = 1; v < V; ++v) acc = at::vec::fmadd(Vec::loadu(q + v * kGroup), load_kv(key + v * kGroup), acc);
    sums[s] = acc;
  }
  // Each step halves the vectors: lanes [0, kGroup / 2) of the result add up pairs of the first vector's
  // lanes, the rest the second's, so after log2(kGroup) levels lane s holds slot s's whole sum.
  for (int64_t width = kGroup; width > 1; width /= 2) {
    for (int64_t j = 0; j < width / 2; ++j) {
      const auto halves = at::vec::deinterleave2(sums[2 * j], sums[2 * j + 1]);
      sums[j] = halves.first + halves.second;
    }
  }
  sums[0].store(scores);
}

// out[a] += sum over m slots of scores[a][s] * value of slot s, over V vectors of head_dim, for A query heads
// sharing one KV head (their outputs `dim` floats apart): the outputs stay in registers over the slots, so a
// slot costs V loads and A * V multiply-adds, not a load and a store of every head's output.
template <int64_t V, int64_t A, typename KV>
void add_values(float* out, int64_t dim, const float* scores, const KV* values, const int64_t* slot_of, int64_t m) {
  Vec acc[A][V];
  for (int64_t a = 0; a < A; ++a)
    for (int64_t v = 0; v < V; ++v) acc[a][v] = Vec::loadu(out + a * dim + v * kGroup);
  for (int64_t s = 0; s < m; ++s) {
    const KV* value = values + slot_of[s];
    Vec x[V];
    for (int64_t v = 0; v < V; ++v) x[v] = load_kv(value + v * kGroup);
    for (int64_t a = 0; a < A; ++a) {
      const Vec p(scores[a * kChunk + s]);
      for (int64_t v = 0; v < V; ++v) acc[a][v] = at::vec::fmadd(p, x[v], acc[a][v]);
    }
  }
  for (int64_t a = 0; a < A; ++a)
    for (int64_t v = 0; v < V; ++v) acc[a][v].store(out + a * dim + v * kGroup);
}

template <typename KV>
using ValuesFn = void (*)(float*, int64_t, const float*, const KV*, const int64_t*, int64_t);

template <int64_t V, typename KV, int64_t... A>
constexpr std::array<ValuesFn<KV>, sizeof...(A)> values_by_heads(std::integer_sequence<int64_t, A...>) {
  return {&add_values<V, A + 1, KV>...};
}

// One task's chunk of n slots, head_dim V vectors: every head's scores kGroup slots at a time, then the
// values kGroup slots at a time, each KV head's query heads together. Each pass prefetches the next group.
template <int64_t V, typename KV>
void attend_chunk(const float* scaled_q, const KV* keys, const KV* values, const int64_t* slot_of, int64_t n,
                  int64_t heads, int64_t groups, int64_t slot_stride, float* scores, float* out) {
  constexpr int64_t dim = V * kGroup;
  int64_t i = 0;
  for (; i + kGroup <= n; i += kGroup) {
    for (int64_t s = i + kGroup; s < std::min(i + 2 * kGroup, n); ++s) prefetch_slot(keys + slot_of[s], slot_stride);
    for (int64_t h = 0; h < heads; ++h)
      scores_of_group<V, KV>(&scaled_q[h * dim], keys + (h / groups) * dim, slot_of + i, &scores[h * kChunk + i]);
  }
  for (; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h) scores[h * kChunk + i] = dot(&scaled_q[h * dim], keys + slot_of[i] + (h / groups) * dim, dim);

  for (int64_t h = 0; h < heads; ++h) std::tie(out[h], out[heads + h]) = exp_shifted(&scores[h * kChunk], n);
  float* acc = out + 2 * heads;
  constexpr int64_t kPiece = std::min(V, kRegisters / 4);  // vectors of head_dim one value pass covers
  constexpr int64_t kMaxHeads = kRegisters / 2 / kPiece;
  static constexpr auto pass = values_by_heads<kPiece, KV>(std::make_integer_sequence<int64_t, kMaxHeads>());
  for (int64_t i = 0; i < n; i += kGroup) {
    const int64_t m = std::min(kGroup, n - i);
    for (int64_t s = i + kGroup; s < std::min(i + 2 * kGroup, n); ++s) prefetch_slot(values + slot_of[s], slot_stride);
    for (int64_t h = 0, a; h < heads; h += a) {
      a = std::min(kMaxHeads, groups - h % groups);  // query heads of one KV head, as many as the registers hold
      for (int64_t piece = 0; piece < dim; piece += kPiece * kGroup)
        pass[a - 1](acc + h * dim + piece, dim, &scores[h * kChunk + i], values + (h / groups) * dim + piece, slot_of + i, m);
    }
  }
}

// The same for any head_dim, slot by slot with every head at once.
template <typename KV>
void attend_chunk_any_dim(const float* scaled_q, const KV* keys, const KV* values, const int64_t* slot_of,
                          int64_t n, int64_t heads, int64_t groups, int64_t dim, int64_t slot_stride, float* scores,
                          float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) prefetch_slot(keys + slot_of[i + kAhead], slot_stride);
    for (int64_t h = 0; h < heads; ++h) scores[h * kChunk + i] = dot(&scaled_q[h * dim], keys + slot_of[i] + (h / groups) * dim, dim);
  }
  for (int64_t h = 0; h < heads; ++h) std::tie(out[h], out[heads + h]) = exp_shifted(&scores[h * kChunk], n);
  float* acc = out + 2 * heads;
  for (int64_t i = 0; i < n; ++i) {
    if (i + kAhead < n) prefetch_slot(values + slot_of[i + kAhead], slot_stride);
    for (int64_t h = 0; h < heads; ++h) add_scaled(acc + h * dim, scores[h * kChunk + i], values + slot_of[i] + (h / groups) * dim, dim);
  }
}

template <typename KV>
using ChunkFn = void (*)(const float*, const KV*, const KV*, const int64_t*, int64_t, int64_t, int64_t, int64_t,
                         float*, float*);

// attend_chunk for head_dim's vectors, where that is 1, 2, 4, 8 or 16; nullptr otherwise.
template <typename KV>
ChunkFn<KV> chunk_pass(int64_t dim) {
  switch (dim % kGroup == 0 ? dim / kGroup : 0) {
    case 1: return &attend_chunk<1, KV>;
    case 2: return &attend_chunk<2, KV>;
    case 4: return &attend_chunk<4, KV>;
    case 8: return &attend_chunk<8, KV>;
    case 16: return &attend_chunk<16, KV>;
    default: return nullptr;
  }
}

at::Tensor paged_decode_attention(const at::Tensor& query, const at::Tensor& kv_cache, int64_t layer,
                                  const at::Tensor& block_tables, const at::Tensor& positions, int64_t block_size) {
  TORCH_CHECK(query.device().is_cpu() && kv_cache.device().is_cpu(), "paged_decode_attention runs on the CPU");
  TORCH_CHECK(query.scalar_type() == at::kFloat, "paged_decode_attention takes a float32 query, got ",
              query.scalar_type());
  TORCH_CHECK(kv_cache.scalar_type() == at::kFloat || kv_cache.scalar_type() == at::kBFloat16,
              "paged_decode_attention takes a float32 or bfloat16 kv_cache, got ", kv_cache.scalar_type());
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

  // The tasks over a cache of KV elements (float or c10::BFloat16), from the layer's keys.
  auto attend = [&](const auto* keys) {
    using KV = std::remove_const_t<std::remove_pointer_t<decltype(keys)>>;
    const KV* values = keys + slots * slot_stride;
    const ChunkFn<KV> pass = chunk_pass<KV>(dim);
    at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(heads * kChunk), scaled_q(heads * dim);
      std::vector<int64_t> slot_of(kChunk);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task / chunks, first = (task % chunks) * kChunk;
        const int64_t n = std::min(first + kChunk, position[r] + 1) - first;
        if (n <= 0) continue;
        for (int64_t i = 0, run; i < n; i += run) {  // the chunk's slots, a block's run at a time
          const int64_t p = first + i, offset = p % block_size;
          run = std::min(n - i, block_size - offset);
          const int64_t slot = table[r * blocks_per_row + p / block_size] * block_size + offset;
          for (int64_t j = 0; j < run; ++j) slot_of[i + j] = (slot + j) * slot_stride;
        }
        for (int64_t j = 0; j < heads * dim; ++j) scaled_q[j] = qp[r * heads * dim + j] * scale;
        float* out = partials.data() + task * part;
        if (pass) {
          pass(scaled_q.data(), keys, values, slot_of.data(), n, heads, groups, slot_stride, scores.data(), out);
        } else {
          attend_chunk_any_dim(scaled_q.data(), keys, values, slot_of.data(), n, heads, groups, dim, slot_stride,
                               scores.data(), out);
        }
      }
    });
  };
  if (cache.scalar_type() == at::kFloat) {
    attend(cache.data_ptr<float>() + layer * 2 * slots * slot_stride);
  } else {
    attend(cache.data_ptr<c10::BFloat16>() + layer * 2 * slots * slot_stride);
  }

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

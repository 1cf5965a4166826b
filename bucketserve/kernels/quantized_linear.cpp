// bucketserve::quantized_linear: x @ W.T for a weight W stored in the packed int8 / int4 layout of
// quantization/layout.py: qweight [ceil(n/16), k_pad, 16] int8 (value = q * scale) or
// [ceil(n/16), k_pad/2, 16] uint8, two inputs a byte, low nibble first (value = q * scale + min), with
// float16 scales (and mins) [ceil(n/16), k_pad/32, 16].
//
// Weight-only: every weight value is dequantized to fp32 in registers, exactly as layout.dequantize defines
// it (q * scale and q * scale + min are exact in fp32: q has at most 8 bits, a float16 scale 11), then
// multiplied with the fp32 input. So the result is x @ layout.dequantize(W).T up to fp32 summation order,
// and a quantized model gives the tokens of the fp32 model holding the dequantized values. (llama.cpp's
// trick of quantizing the activations to int8 for VNNI dot products would change the results.)
//
// Two shapes of work, as the decoders and the prefill call it:
// - few rows (a decode step, up to kFusedMaxRows): each block of 16 outputs is dequantized input by input
//   and multiplied straight into every row's accumulator, kept in registers: the weight is read once and
//   nothing is written but the outputs. Bound by the weight's bytes at 1 row, by the FMAs at 8.
// - more rows (a prefill chunk): three blocks at a time are dequantized once into a per-thread fp32 tile
//   [k_pad, 48], which blocked_linear's register-blocked passes of up to 8 rows then read (gemm_micro_kernel.h).
// Threads take whole blocks, in order, so each streams one contiguous stretch of the weight, and the weight
// is prefetched well ahead of its loads, as in blocked_linear.cpp.
//
// Vectors: AVX-512 (a block's 16 outputs are one vector; 8 rows a pass), or AVX2 with FMA and F16C (two
// halves; 4 rows a pass), both written once over Out16. Elsewhere every call takes the tile's path, the
// block dequantized by plain loops.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "gemm_micro_kernel.h"
#include "packed_weight.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using bucketserve_gemm::kAheadBytes;
using bucketserve_gemm::kRowsPerPass;
using bucketserve_gemm::Vec;

using bucketserve_packed::kBlockN;
using bucketserve_packed::kGroup;
using Packed = bucketserve_packed::PackedWeight;
// Blocks one tile of the many-rows path holds: 48 outputs, blocked_linear's register tile on AVX-512
// (8 rows x 3 vectors of accumulators); one vector's worth elsewhere.
constexpr int64_t kTileBlocks = Vec::size() == 16 ? 3 : 1;
constexpr int64_t kTileWidth = kTileBlocks * kBlockN;
static_assert(kTileWidth % Vec::size() == 0, "a tile is a whole number of vectors");


float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

// Block b's values as fp32 into tile[i * ld + j], inputs i < k_pad, outputs j < 16: the portable form.
void dequantize_block_scalar(const Packed& w, int64_t b, float* tile, int64_t ld) {
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const uint16_t* mins = w.block_mins(b);
  for (int64_t g = 0; g < w.groups; ++g) {
    float scale[kBlockN], min[kBlockN];
    for (int64_t j = 0; j < kBlockN; ++j) {
      scale[j] = half_to_float(scales[g * kBlockN + j]);
      min[j] = mins ? half_to_float(mins[g * kBlockN + j]) : 0.f;
    }
    for (int64_t i = g * kGroup; i < (g + 1) * kGroup; ++i) {
      float* out = tile + i * ld;
      if (w.bits == 8) {
        const int8_t* values = reinterpret_cast<const int8_t*>(q) + i * kBlockN;
        for (int64_t j = 0; j < kBlockN; ++j) out[j] = static_cast<float>(values[j]) * scale[j];
      } else {
        const uint8_t* pairs = q + (i / 2) * kBlockN;
        const int shift = (i % 2) * 4;
        for (int64_t j = 0; j < kBlockN; ++j) out[j] = static_cast<float>((pairs[j] >> shift) & 0xF) * scale[j] + min[j];
      }
    }
  }
}

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#define BUCKETSERVE_FUSED 1

// The 16 outputs of a block as fp32: one AVX-512 vector, or two AVX2 halves. The fused path and the
// vector dequantizing below are written once over these.
#if defined(__AVX512F__)
struct Out16 {
  __m512 v;
};
// Output rows the fused path keeps in registers: 8 x 1 vector of accumulators fit AVX-512's 32.
constexpr int kFusedRowsPerPass = 8;

inline Out16 zero16() { return {_mm512_setzero_ps()}; }
inline Out16 add16(Out16 a, Out16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Out16 fma16(float x, Out16 w, Out16 acc) { return {_mm512_fmadd_ps(_mm512_set1_ps(x), w.v, acc.v)}; }
inline void store16(float* out, Out16 a) { _mm512_storeu_ps(out, a.v); }
inline void store16(float* out, Out16 a, int64_t valid) {
  _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << valid) - 1), a.v);
}
inline Out16 load_halves(const uint16_t* p) {
  return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
inline Out16 int8_values(const uint8_t* p, Out16 scale) {
  const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm512_mul_ps(_mm512_cvtepi32_ps(q), scale.v)};
}
// The 16 bytes of one pair of inputs: the low nibbles (the even input) and the high ones (the odd). A nibble
// becomes its float by a lookup in a vector of 0..15 (vpermps reads only an index's low 4 bits), one
// instruction where masking and converting take two: the few-row pass is bound by these instructions.
inline void int4_values(const uint8_t* p, Out16 scale, Out16 min, Out16& even, Out16& odd) {
  const __m512 nibbles = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i pairs = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  even.v = _mm512_fmadd_ps(_mm512_permutexvar_ps(pairs, nibbles), scale.v, min.v);
  odd.v = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(pairs, 4), nibbles), scale.v, min.v);
}
#else
struct Out16 {
  __m256 lo, hi;
};
// 4 rows x 2 halves of accumulators leave AVX2's 16 registers room for the weights, scales and mins.
constexpr int kFusedRowsPerPass = 4;

inline Out16 zero16() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Out16 add16(Out16 a, Out16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline Out16 fma16(float x, Out16 w, Out16 acc) {
  const __m256 xs = _mm256_set1_ps(x);
  return {_mm256_fmadd_ps(xs, w.lo, acc.lo), _mm256_fmadd_ps(xs, w.hi, acc.hi)};
}
inline void store16(float* out, Out16 a) {
  _mm256_storeu_ps(out, a.lo);
  _mm256_storeu_ps(out + 8, a.hi);
}
inline void store16(float* out, Out16 a, int64_t valid) {
  float full[16];
  store16(full, a);
  std::copy(full, full + valid, out);
}
inline Out16 load_halves(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
}
inline __m256i bytes8(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
inline Out16 int8_values(const uint8_t* p, Out16 scale) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), scale.lo),
          _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8))), scale.hi)};
}
inline void int4_values(const uint8_t* p, Out16 scale, Out16 min, Out16& even, Out16& odd) {
  const __m256i nibble = _mm256_set1_epi32(0xF);
  const __m256i lo = bytes8(p), hi = bytes8(p + 8);
  even = {_mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo, nibble)), scale.lo, min.lo),
          _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(hi, nibble)), scale.hi, min.hi)};
  odd = {_mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4)), scale.lo, min.lo),
         _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4)), scale.hi, min.hi)};
}
#endif

// The same as dequantize_block_scalar, in vectors.
void dequantize_block(const Packed& w, int64_t b, float* tile, int64_t ld) {
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const uint16_t* mins = w.block_mins(b);
  for (int64_t g = 0; g < w.groups; ++g) {
    const Out16 scale = load_halves(scales + g * kBlockN);
    if (w.bits == 8) {
      for (int64_t i = g * kGroup; i < (g + 1) * kGroup; ++i) store16(tile + i * ld, int8_values(q + i * kBlockN, scale));
    } else {
      const Out16 min = load_halves(mins + g * kBlockN);
      for (int64_t i = g * kGroup; i < (g + 1) * kGroup; i += 2) {
        Out16 even, odd;
        int4_values(q + (i / 2) * kBlockN, scale, min, even, odd);
        store16(tile + i * ld, even);
        store16(tile + (i + 1) * ld, odd);
      }
    }
  }
}

// Independent accumulators a row keeps (each input's product goes to one of them in turn, summed at the
// end): few rows alone would chain every FMA on the one before and wait on its latency.
constexpr int splits_for(int rows) { return rows >= 4 ? 1 : rows >= 2 ? 2 : 4; }

template <int ROWS>
inline void store_rows(Out16 (&acc)[4][ROWS], int splits, float* out, int64_t ldo, int64_t valid) {
  for (int r = 0; r < ROWS; ++r) {
    Out16 sum = acc[0][r];
    for (int s = 1; s < splits; ++s) sum = add16(sum, acc[s][r]);
    store16(out + r * ldo, sum, valid);
  }
}

// out[r, j] for ROWS rows and block b's 16 outputs (valid of them), from x_t [k_pad, ROWS]: each input's
// 16 values dequantized in registers, then one FMA per row with that row's input broadcast.
template <int ROWS>
void fused_block_int8(const Packed& w, int64_t b, const float* x_t, float* out, int64_t ldo, int64_t valid) {
  constexpr int S = splits_for(ROWS);
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const int64_t ahead_groups = kAheadBytes / (kGroup * kBlockN);
  Out16 acc[4][ROWS];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < ROWS; ++r) acc[s][r] = zero16();
  for (int64_t g = 0; g < w.groups; ++g) {
    __builtin_prefetch(scales + (g + ahead_groups) * kBlockN, 0, 2);
    const Out16 scale = load_halves(scales + g * kBlockN);
    for (int64_t i = g * kGroup; i < (g + 1) * kGroup; i += 4) {  // 4 inputs: one line of the weight
      __builtin_prefetch(q + i * kBlockN + kAheadBytes, 0, 2);
      for (int u = 0; u < 4; ++u) {
        const Out16 values = int8_values(q + (i + u) * kBlockN, scale);
        for (int r = 0; r < ROWS; ++r) acc[u % S][r] = fma16(x_t[(i + u) * ROWS + r], values, acc[u % S][r]);
      }
    }
  }
  store_rows<ROWS>(acc, S, out, ldo, valid);
}

template <int ROWS>
void fused_block_int4(const Packed& w, int64_t b, const float* x_t, float* out, int64_t ldo, int64_t valid) {
  constexpr int S = splits_for(ROWS) > 2 ? splits_for(ROWS) : 2;  // the even and odd inputs at least
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const uint16_t* mins = w.block_mins(b);
  const int64_t ahead_groups = kAheadBytes / (kGroup / 2 * kBlockN);
  Out16 acc[4][ROWS];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < ROWS; ++r) acc[s][r] = zero16();
  for (int64_t g = 0; g < w.groups; ++g) {
    __builtin_prefetch(scales + (g + ahead_groups) * kBlockN, 0, 2);
    __builtin_prefetch(mins + (g + ahead_groups) * kBlockN, 0, 2);
    const Out16 scale = load_halves(scales + g * kBlockN), min = load_halves(mins + g * kBlockN);
    for (int64_t i = g * kGroup; i < (g + 1) * kGroup; i += 8) {  // 4 pairs of inputs: one line
      __builtin_prefetch(q + (i / 2) * kBlockN + kAheadBytes, 0, 2);
      for (int u = 0; u < 8; u += 2) {
        Out16 even, odd;
        int4_values(q + ((i + u) / 2) * kBlockN, scale, min, even, odd);
        for (int r = 0; r < ROWS; ++r) {
          acc[u % S][r] = fma16(x_t[(i + u) * ROWS + r], even, acc[u % S][r]);
          acc[(u + 1) % S][r] = fma16(x_t[(i + u + 1) * ROWS + r], odd, acc[(u + 1) % S][r]);
        }
      }
    }
  }
  store_rows<ROWS>(acc, S, out, ldo, valid);
}

using FusedFn = void (*)(const Packed&, int64_t, const float*, float*, int64_t, int64_t);

template <int... ROWS>
constexpr std::array<FusedFn, sizeof...(ROWS)> fused_int8(std::integer_sequence<int, ROWS...>) {
  return {&fused_block_int8<ROWS + 1>...};
}
template <int... ROWS>
constexpr std::array<FusedFn, sizeof...(ROWS)> fused_int4(std::integer_sequence<int, ROWS...>) {
  return {&fused_block_int4<ROWS + 1>...};
}

// Rows up to which a call takes the fused path; past it, the tile's. On our machine (AVX-512, 1 thread, by
// CPU time, a 576 x 1536 weight) the two took about as long at 16 rows, and at 32 and 128 rows the fused
// path's dequantizing again for each group of 8 rows cost 10 to 35% more.
constexpr int64_t kFusedMaxRows = kFusedRowsPerPass;

// Each block of 16 outputs for every group of up to kFusedRowsPerPass rows in turn (dequantized again for
// each group).
void fused_gemm(const Packed& w, const float* x, float* out, int64_t rows, int64_t k, int64_t n) {
  constexpr int64_t per_group = kFusedRowsPerPass;
  static constexpr auto by_rows_int8 = fused_int8(std::make_integer_sequence<int, kFusedRowsPerPass>{});
  static constexpr auto by_rows_int4 = fused_int4(std::make_integer_sequence<int, kFusedRowsPerPass>{});
  const auto& by_rows = w.bits == 8 ? by_rows_int8 : by_rows_int4;
  const int64_t row_groups = (rows + per_group - 1) / per_group;
  std::vector<float> x_t(row_groups * w.k_pad * per_group);
  bucketserve_gemm::transpose_row_groups(x, x_t.data(), rows, k, w.k_pad, per_group);
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t g = 0; g < row_groups; ++g) {
        const int64_t first = g * per_group, count = std::min(per_group, rows - first);
        by_rows[count - 1](w, b, x_t.data() + g * w.k_pad * per_group, out + first * n + b * kBlockN, n,
                           std::min(kBlockN, n - b * kBlockN));
      }
    }
  });
}

#else

void dequantize_block(const Packed& w, int64_t b, float* tile, int64_t ld) { dequantize_block_scalar(w, b, tile, ld); }

#endif  // BUCKETSERVE_FUSED

// Many rows (or any rows without AVX-512): kTileBlocks blocks dequantized once into a per-thread fp32 tile
// [k_pad, kTileWidth], then passes of up to 8 rows over it.
void tiled_gemm(const Packed& w, const float* x, float* out, int64_t rows, int64_t k, int64_t n) {
  const auto& passes = bucketserve_gemm::passes<kTileWidth / Vec::size(), /*PREFETCH=*/false>;  // the tile is in L2
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN, num_tiles = (num_blocks + kTileBlocks - 1) / kTileBlocks;
  const int64_t row_groups = (rows + kRowsPerPass - 1) / kRowsPerPass;
  std::vector<float> x_t(row_groups * w.k_pad * kRowsPerPass);
  bucketserve_gemm::transpose_row_groups(x, x_t.data(), rows, k, w.k_pad);
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(w.k_pad * kTileWidth);
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t j = 0; j < kTileBlocks; ++j) {
        const int64_t b = t * kTileBlocks + j;
        if (b < num_blocks) {
          dequantize_block(w, b, tile.data() + j * kBlockN, kTileWidth);
        } else {  // past the last block: zero, and its outputs are dropped
          for (int64_t i = 0; i < w.k_pad; ++i) std::fill_n(tile.data() + i * kTileWidth + j * kBlockN, kBlockN, 0.f);
        }
      }
      const int64_t valid_cols = std::min(kTileWidth, n - t * kTileWidth);
      for (int64_t g = 0; g < row_groups; ++g) {
        const int64_t first = g * kRowsPerPass, count = std::min(kRowsPerPass, rows - first);
        passes[count - 1](x_t.data() + g * w.k_pad * kRowsPerPass, tile.data(), out + first * n + t * kTileWidth,
                          w.k_pad, n, valid_cols);
      }
    }
  });
}

at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                            const c10::optional<at::Tensor>& mins, int64_t n, int64_t k) {
  const auto call = bucketserve_packed::check_packed_call("quantized_linear", x, qweight, scales, mins, n, k);
  const int64_t rows = call.rows;
  const Packed& w = call.weight;
  auto out = call.out;
  if (rows == 0) return out;
  const auto& input = call.input;
#if defined(BUCKETSERVE_FUSED)
  if (rows <= kFusedMaxRows) {
    fused_gemm(w, input.data_ptr<float>(), out.data_ptr<float>(), rows, k, n);
    return out;
  }
#endif
  tiled_gemm(w, input.data_ptr<float>(), out.data_ptr<float>(), rows, k, n);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bucketserve, m) {
  m.def("quantized_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? mins, int n, int k) -> Tensor");
}

TORCH_LIBRARY_IMPL(bucketserve, CPU, m) { m.impl("quantized_linear", &quantized_linear); }

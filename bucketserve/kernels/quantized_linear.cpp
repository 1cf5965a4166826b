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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "gemm_micro_kernel.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using bucketserve_gemm::kAheadBytes;
using bucketserve_gemm::kRowsPerPass;
using bucketserve_gemm::Vec;

constexpr int64_t kGroup = 32;   // inputs per scale (and min): layout.GROUP
constexpr int64_t kBlockN = 16;  // output rows per packed block: layout.BLOCK_N
// Blocks one tile of the many-rows path holds: 48 outputs, blocked_linear's register tile on AVX-512
// (8 rows x 3 vectors of accumulators); one vector's worth elsewhere.
constexpr int64_t kTileBlocks = Vec::size() == 16 ? 3 : 1;
constexpr int64_t kTileWidth = kTileBlocks * kBlockN;
static_assert(kTileWidth % Vec::size() == 0, "a tile is a whole number of vectors");

// One packed weight, read-only.
struct Packed {
  const uint8_t* q;          // int8 values, or uint8 pairs of int4 values
  const uint16_t* scales;    // float16 bits [blocks, groups, 16]
  const uint16_t* mins;      // float16 bits [blocks, groups, 16]; nullptr for int8
  int64_t bits, k_pad, groups;

  int64_t block_bytes() const { return k_pad * kBlockN * bits / 8; }
  const uint8_t* block_q(int64_t b) const { return q + b * block_bytes(); }
  const uint16_t* block_scales(int64_t b) const { return scales + b * groups * kBlockN; }
  const uint16_t* block_mins(int64_t b) const { return mins ? mins + b * groups * kBlockN : nullptr; }
};

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

#if defined(__AVX512F__)

inline __m512 load_halves(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

inline __m512 int8_values(const uint8_t* p, __m512 scale) {
  const __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale);
}

// The 16 bytes of one pair of inputs: the low nibbles (the even input) and the high ones (the odd).
inline void int4_values(const uint8_t* p, __m512 scale, __m512 min, __m512& even, __m512& odd) {
  const __m512i pairs = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  even = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(0xF))), scale, min);
  odd = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(pairs, 4)), scale, min);
}

// The same as dequantize_block_scalar, in vectors.
void dequantize_block(const Packed& w, int64_t b, float* tile, int64_t ld) {
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const uint16_t* mins = w.block_mins(b);
  for (int64_t g = 0; g < w.groups; ++g) {
    const __m512 scale = load_halves(scales + g * kBlockN);
    if (w.bits == 8) {
      for (int64_t i = g * kGroup; i < (g + 1) * kGroup; ++i)
        _mm512_storeu_ps(tile + i * ld, int8_values(q + i * kBlockN, scale));
    } else {
      const __m512 min = load_halves(mins + g * kBlockN);
      for (int64_t i = g * kGroup; i < (g + 1) * kGroup; i += 2) {
        __m512 even, odd;
        int4_values(q + (i / 2) * kBlockN, scale, min, even, odd);
        _mm512_storeu_ps(tile + i * ld, even);
        _mm512_storeu_ps(tile + (i + 1) * ld, odd);
      }
    }
  }
}

// Independent accumulators a row keeps (each input's product goes to one of them in turn, summed at the
// end): few rows alone would chain every FMA on the one before and wait on its latency.
constexpr int splits_for(int rows) { return rows >= 4 ? 1 : rows >= 2 ? 2 : 4; }

template <int ROWS>
inline void store_rows(__m512 (&acc)[4][ROWS], int splits, float* out, int64_t ldo, int64_t valid) {
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
  for (int r = 0; r < ROWS; ++r) {
    __m512 sum = acc[0][r];
    for (int s = 1; s < splits; ++s) sum = _mm512_add_ps(sum, acc[s][r]);
    _mm512_mask_storeu_ps(out + r * ldo, mask, sum);
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
  __m512 acc[4][ROWS];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < ROWS; ++r) acc[s][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __builtin_prefetch(scales + (g + ahead_groups) * kBlockN, 0, 2);
    const __m512 scale = load_halves(scales + g * kBlockN);
    for (int64_t i = g * kGroup; i < (g + 1) * kGroup; i += 4) {  // 4 inputs: one line of the weight
      __builtin_prefetch(q + i * kBlockN + kAheadBytes, 0, 2);
      for (int u = 0; u < 4; ++u) {
        const __m512 values = int8_values(q + (i + u) * kBlockN, scale);
        for (int r = 0; r < ROWS; ++r)
          acc[u % S][r] = _mm512_fmadd_ps(_mm512_set1_ps(x_t[(i + u) * ROWS + r]), values, acc[u % S][r]);
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
  __m512 acc[4][ROWS];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < ROWS; ++r) acc[s][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __builtin_prefetch(scales + (g + ahead_groups) * kBlockN, 0, 2);
    __builtin_prefetch(mins + (g + ahead_groups) * kBlockN, 0, 2);
    const __m512 scale = load_halves(scales + g * kBlockN), min = load_halves(mins + g * kBlockN);
    for (int64_t i = g * kGroup; i < (g + 1) * kGroup; i += 8) {  // 4 pairs of inputs: one line
      __builtin_prefetch(q + (i / 2) * kBlockN + kAheadBytes, 0, 2);
      for (int u = 0; u < 8; u += 2) {
        __m512 even, odd;
        int4_values(q + ((i + u) / 2) * kBlockN, scale, min, even, odd);
        for (int r = 0; r < ROWS; ++r) {
          acc[u % S][r] = _mm512_fmadd_ps(_mm512_set1_ps(x_t[(i + u) * ROWS + r]), even, acc[u % S][r]);
          acc[(u + 1) % S][r] = _mm512_fmadd_ps(_mm512_set1_ps(x_t[(i + u + 1) * ROWS + r]), odd, acc[(u + 1) % S][r]);
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

// Rows up to which a call takes the fused path; past it, the tile's.
constexpr int64_t kFusedMaxRows = kRowsPerPass;

void fused_gemm(const Packed& w, const float* x, float* out, int64_t rows, int64_t k, int64_t n) {
  static constexpr auto by_rows_int8 = fused_int8(std::make_integer_sequence<int, kFusedMaxRows>{});
  static constexpr auto by_rows_int4 = fused_int4(std::make_integer_sequence<int, kFusedMaxRows>{});
  const FusedFn pass = (w.bits == 8 ? by_rows_int8 : by_rows_int4)[rows - 1];
  std::vector<float> x_t(w.k_pad * rows);
  bucketserve_gemm::transpose_row_groups(x, x_t.data(), rows, k, w.k_pad);
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      pass(w, b, x_t.data(), out + b * kBlockN, n, std::min(kBlockN, n - b * kBlockN));
  });
}

#else

void dequantize_block(const Packed& w, int64_t b, float* tile, int64_t ld) { dequantize_block_scalar(w, b, tile, ld); }

#endif  // __AVX512F__

// Many rows (or any rows without AVX-512): kTileBlocks blocks dequantized once into a per-thread fp32 tile
// [k_pad, kTileWidth], then passes of up to 8 rows over it.
void tiled_gemm(const Packed& w, const float* x, float* out, int64_t rows, int64_t k, int64_t n) {
  const auto& passes = bucketserve_gemm::passes<kTileWidth / Vec::size()>;
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
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && scales.device().is_cpu(),
              "quantized_linear runs on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "quantized_linear takes float32 x, got ", x.scalar_type());
  TORCH_CHECK(qweight.scalar_type() == at::kChar || qweight.scalar_type() == at::kByte,
              "qweight must be int8 (the int8 scheme) or uint8 (int4, two values a byte), got ", qweight.scalar_type());
  const int64_t bits = qweight.scalar_type() == at::kChar ? 8 : 4;
  TORCH_CHECK(qweight.dim() == 3 && qweight.size(2) == kBlockN, "qweight must be [ceil(n / 16), ",
              bits == 8 ? "k_pad" : "k_pad / 2", ", 16], got ", qweight.sizes());
  const int64_t num_blocks = qweight.size(0), k_pad = qweight.size(1) * (bits == 8 ? 1 : 2);
  const int64_t groups = k_pad / kGroup;
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, "x has ", x.dim() ? x.size(-1) : 0, " features, the weight k = ", k);
  TORCH_CHECK(k > 0 && k_pad == (k + kGroup - 1) / kGroup * kGroup, "qweight holds ", k_pad,
              " inputs a row, but k = ", k, " pads to ", (k + kGroup - 1) / kGroup * kGroup);
  TORCH_CHECK(n > 0 && (num_blocks - 1) * kBlockN < n && n <= num_blocks * kBlockN, "n = ", n,
              " does not fit qweight's ", num_blocks, " blocks of 16 rows");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.sizes() == at::IntArrayRef({num_blocks, groups, kBlockN}),
              "scales must be float16 [", num_blocks, ", ", groups, ", 16], got ", scales.scalar_type(), " ",
              scales.sizes());
  const bool has_mins = mins.has_value() && mins->defined();
  TORCH_CHECK(has_mins == (bits == 4), bits == 8 ? "int8 weights are symmetric: mins must be None"
                                                 : "int4 weights need mins (value = q * scale + min)");
  if (has_mins)
    TORCH_CHECK(mins->device().is_cpu() && mins->scalar_type() == at::kHalf && mins->sizes() == scales.sizes(),
                "mins must be float16 ", scales.sizes(), " as scales, got ", mins->scalar_type(), " ", mins->sizes());

  const auto input = x.contiguous();
  const auto q = qweight.contiguous();
  const auto s = scales.contiguous();
  const auto m = has_mins ? mins->contiguous() : at::Tensor();
  const int64_t rows = input.numel() / k;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  auto out = at::empty(out_shape, input.options());
  if (rows == 0) return out;
  const Packed w{reinterpret_cast<const uint8_t*>(q.data_ptr()), reinterpret_cast<const uint16_t*>(s.data_ptr()),
                 has_mins ? reinterpret_cast<const uint16_t*>(m.data_ptr()) : nullptr, bits, k_pad, groups};
#if defined(__AVX512F__)
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

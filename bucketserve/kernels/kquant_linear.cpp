// bucketserve::kquant_linear: x @ W.T for a weight kept from GGUF's Q4_K, Q5_K, Q6_K, Q5_0 or Q5_1 blocks, in
// the layout of quantization/kquant_layout.py:
//   qweight uint8 [ceil(n/16), k/2, 16]   the low 4 bits of each value, two inputs a byte (low nibble first)
//   qhigh   uint8 [ceil(n/16), k/8, 16]   5 bits: per input a 16-bit mask, bit j = bit 4 of output j's value
//           uint8 [ceil(n/16), k/4, 16]   6 bits: per input two masks, of bit 4 then bit 5;  None: 4 bits
//   scales, mins float32 [ceil(n/16), k/group, 16], group 32 or 16 (Q6_K)      value = q * scale + min
//
// Weight-only, as quantized_linear.cpp: each value is dequantized to fp32 in registers exactly as
// kquant_layout.dequantize defines it (q * scale is exact in fp32, so an FMA rounds q * scale + min once, as
// the reference's multiply-then-add does), then multiplied with the fp32 input: the result is
// x @ dequantize(W).T up to fp32 summation order. (Quantizing the activations to int8 for VNNI dot products,
// as llama.cpp's vec_dot_q4_K_q8_K does, would change the results, so no VNNI here.)
//
// Few rows (a decode step, up to kFusedRowsPerPass): each block of 16 outputs is dequantized 8 inputs at a
// time (one 64-byte line of qweight) straight into every row's accumulators. More rows: blocks are
// dequantized once into a per-thread fp32 tile that gemm_micro_kernel.h's register-blocked passes read.
// Vectors: AVX-512 (16 outputs a vector), AVX2 with FMA (two halves), written once over I16 / Out16;
// elsewhere the tile path with the block dequantized by plain loops.
//
// BUCKETSERVE_KQUANT_NAMESPACE (default bucketserve) names the op's namespace, so the tests can build this
// file for AVX2 and scalar into namespaces of their own and load them beside the library.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "gemm_micro_kernel.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#ifndef BUCKETSERVE_KQUANT_NAMESPACE
#define BUCKETSERVE_KQUANT_NAMESPACE bucketserve
#endif

namespace {

using bucketserve_gemm::kAheadBytes;
using bucketserve_gemm::kRowsPerPass;
using bucketserve_gemm::Vec;

constexpr int64_t kBlockN = 16;  // output rows per packed block: layout.BLOCK_N
constexpr int64_t kTileBlocks = Vec::size() == 16 ? 3 : 1;
constexpr int64_t kTileWidth = kTileBlocks * kBlockN;
static_assert(kTileWidth % Vec::size() == 0, "a tile is a whole number of vectors");

struct KPacked {
  const uint8_t* q;       // low nibbles [blocks, k/2, 16]
  const uint8_t* high;    // [blocks, k / per_byte, 16], nullptr for 4 bits
  const float* scales;    // [blocks, k / group, 16]
  const float* mins;      // as scales
  int64_t bits, k, group;

  int64_t high_per_byte() const { return bits == 5 ? 8 : 4; }
  const uint8_t* block_q(int64_t b) const { return q + b * (k / 2) * kBlockN; }
  const uint8_t* block_high(int64_t b) const { return high ? high + b * (k / high_per_byte()) * kBlockN : nullptr; }
  const float* block_scales(int64_t b) const { return scales + b * (k / group) * kBlockN; }
  const float* block_mins(int64_t b) const { return mins + b * (k / group) * kBlockN; }
};

// Block b's values as fp32 into tile[i * ld + j], inputs i < k, outputs j < 16: the portable form.
void dequantize_block_scalar(const KPacked& w, int64_t b, float* tile, int64_t ld) {
  const uint8_t* q = w.block_q(b);
  const uint8_t* high = w.block_high(b);
  const float* scales = w.block_scales(b);
  const float* mins = w.block_mins(b);
  for (int64_t i = 0; i < w.k; ++i) {
    const int64_t g = i / w.group;
    for (int64_t j = 0; j < kBlockN; ++j) {
      uint32_t v = (q[(i / 2) * kBlockN + j] >> ((i % 2) * 4)) & 0xF;
      for (int64_t plane = 0; plane < w.bits - 4; ++plane) {  // bit 4 (and 5): bit j of the input's mask(s)
        const uint8_t* mask = high + (i * (w.bits - 4) + plane) * 2;
        v |= ((mask[j / 8] >> (j % 8)) & 1u) << (4 + plane);
      }
      tile[i * ld + j] = static_cast<float>(v) * scales[g * kBlockN + j] + mins[g * kBlockN + j];
    }
  }
}

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define BUCKETSERVE_KQUANT_FUSED 1

// 16 int32 lanes (I16) and 16 fp32 lanes (Out16), one per output of a block.
#if defined(__AVX512F__)
struct I16 {
  __m512i v;
};
struct Out16 {
  __m512 v;
};
constexpr int kFusedRowsPerPass = 8;  // 8 x 1 vector of accumulators, in AVX-512's 32 registers

inline I16 load_u8(const uint8_t* p) { return {_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
inline I16 and_mask(I16 a, int mask) { return {_mm512_and_si512(a.v, _mm512_set1_epi32(mask))}; }
inline I16 or_(I16 a, I16 b) { return {_mm512_or_si512(a.v, b.v)}; }
inline I16 shift_left(I16 a, int s) { return {_mm512_slli_epi32(a.v, s)}; }
inline I16 shift_right(I16 a, int s) { return {_mm512_srli_epi32(a.v, s)}; }
inline Out16 to_float(I16 a) { return {_mm512_cvtepi32_ps(a.v)}; }
inline Out16 fmadd(Out16 a, Out16 b, Out16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline Out16 load16(const float* p) { return {_mm512_loadu_ps(p)}; }
inline Out16 zero16() { return {_mm512_setzero_ps()}; }
inline Out16 add16(Out16 a, Out16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Out16 fma16(float x, Out16 w, Out16 acc) { return {_mm512_fmadd_ps(_mm512_set1_ps(x), w.v, acc.v)}; }
inline void store16(float* out, Out16 a) { _mm512_storeu_ps(out, a.v); }
inline void store16(float* out, Out16 a, int64_t valid) {
  _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << valid) - 1), a.v);
}
#else
struct I16 {
  __m256i lo, hi;
};
struct Out16 {
  __m256 lo, hi;
};
constexpr int kFusedRowsPerPass = 4;  // 4 rows x 2 halves leave AVX2's 16 registers room for the weights

inline I16 load_u8(const uint8_t* p) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return {_mm256_cvtepu8_epi32(bytes), _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8))};
}
inline I16 and_mask(I16 a, int mask) {
  const __m256i m = _mm256_set1_epi32(mask);
  return {_mm256_and_si256(a.lo, m), _mm256_and_si256(a.hi, m)};
}
inline I16 or_(I16 a, I16 b) { return {_mm256_or_si256(a.lo, b.lo), _mm256_or_si256(a.hi, b.hi)}; }
inline I16 shift_left(I16 a, int s) { return {_mm256_slli_epi32(a.lo, s), _mm256_slli_epi32(a.hi, s)}; }
inline I16 shift_right(I16 a, int s) { return {_mm256_srli_epi32(a.lo, s), _mm256_srli_epi32(a.hi, s)}; }
inline Out16 to_float(I16 a) { return {_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }
inline Out16 fmadd(Out16 a, Out16 b, Out16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
inline Out16 load16(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
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
#endif

// q of inputs i .. i + 7 (i a multiple of 8) for the block's 16 outputs: q8 = qweight + (i / 2) * 16 (four
// rows of pairs), h = the high plane's masks from input i on (16 bits each, bit j for output j: one mask per
// input for 5 bits, two for 6, bit 4's then bit 5's). AVX2 and the portable form build integers.
inline I16 lane_bits(uint16_t mask, int value) {  // value where the output's bit of mask is set, else 0
#if defined(__AVX512F__)
  return {_mm512_maskz_mov_epi32(static_cast<__mmask16>(mask), _mm512_set1_epi32(value))};
#else
  const __m256i lanes_lo = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i lanes_hi = _mm256_setr_epi32(256, 512, 1024, 2048, 4096, 8192, 16384, 32768);
  const __m256i m = _mm256_set1_epi32(mask), v = _mm256_set1_epi32(value);
  return {_mm256_and_si256(_mm256_cmpeq_epi32(_mm256_and_si256(m, lanes_lo), lanes_lo), v),
          _mm256_and_si256(_mm256_cmpeq_epi32(_mm256_and_si256(m, lanes_hi), lanes_hi), v)};
#endif
}

template <int BITS>
inline void values8(const uint8_t* q8, const uint16_t* h, I16 (&out)[8]) {
  for (int u = 0; u < 4; ++u) {
    const I16 pairs = load_u8(q8 + u * kBlockN);
    out[2 * u] = and_mask(pairs, 0xF);
    out[2 * u + 1] = shift_right(pairs, 4);
  }
  if constexpr (BITS == 5) {
    for (int t = 0; t < 8; ++t) out[t] = or_(out[t], lane_bits(h[t], 16));
  } else if constexpr (BITS == 6) {
    for (int t = 0; t < 8; ++t) out[t] = or_(or_(out[t], lane_bits(h[2 * t], 16)), lane_bits(h[2 * t + 1], 32));
  }
}

// The same q as floats (exact: at most 6 bits). AVX-512 looks the low nibble up rather than converting it, as
// quantized_linear.cpp does for int4 (vpermps picks a float of 0..15 by an index's low 4 bits, so a pair's
// high nibble needs no mask), then adds 16 (and 32) under the high plane's masks, which it reads as they are.
#if defined(__AVX512F__)
template <int BITS>
inline void values8f(const uint8_t* q8, const uint16_t* h, Out16 (&out)[8]) {
  const __m512 low_table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 sixteen = _mm512_set1_ps(16), thirty_two = _mm512_set1_ps(32);
  for (int u = 0; u < 4; ++u) {
    const __m512i pairs = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q8 + u * kBlockN)));
    out[2 * u].v = _mm512_permutexvar_ps(pairs, low_table);
    out[2 * u + 1].v = _mm512_permutexvar_ps(_mm512_srli_epi32(pairs, 4), low_table);
  }
  // _load_mask16: kmovw from memory (a load), not through a general register (the permutes' port).
  auto mask = [h](int at) { return _load_mask16(reinterpret_cast<__mmask16*>(const_cast<uint16_t*>(h + at))); };
  if constexpr (BITS == 5) {
    for (int t = 0; t < 8; ++t) out[t].v = _mm512_mask_add_ps(out[t].v, mask(t), out[t].v, sixteen);
  } else if constexpr (BITS == 6) {
    for (int t = 0; t < 8; ++t) {
      out[t].v = _mm512_mask_add_ps(out[t].v, mask(2 * t), out[t].v, sixteen);
      out[t].v = _mm512_mask_add_ps(out[t].v, mask(2 * t + 1), out[t].v, thirty_two);
    }
  }
}
#else
template <int BITS>
inline void values8f(const uint8_t* q8, const uint16_t* h, Out16 (&out)[8]) {
  I16 q[8];
  values8<BITS>(q8, h, q);
  for (int t = 0; t < 8; ++t) out[t] = to_float(q[t]);
}
#endif

// The high plane's masks of input i: 16 bits each, one per input for 5 bits, two for 6.
inline const uint16_t* high_row(const KPacked& w, const uint8_t* high, int64_t i) {
  return high ? reinterpret_cast<const uint16_t*>(high) + i * (w.bits - 4) : nullptr;
}

template <int BITS>
void dequantize_block_vec(const KPacked& w, int64_t b, float* tile, int64_t ld) {
  const uint8_t* q = w.block_q(b);
  const uint8_t* high = w.block_high(b);
  Out16 scale = zero16(), min = zero16();
  for (int64_t i = 0; i < w.k; i += 8) {
    if (i % w.group == 0) {
      scale = load16(w.block_scales(b) + (i / w.group) * kBlockN);
      min = load16(w.block_mins(b) + (i / w.group) * kBlockN);
    }
    Out16 v[8];
    values8f<BITS>(q + (i / 2) * kBlockN, high_row(w, high, i), v);
    for (int u = 0; u < 8; ++u) store16(tile + (i + u) * ld, fmadd(v[u], scale, min));
  }
}

void dequantize_block(const KPacked& w, int64_t b, float* tile, int64_t ld) {
  if (w.bits == 4) return dequantize_block_vec<4>(w, b, tile, ld);
  if (w.bits == 5) return dequantize_block_vec<5>(w, b, tile, ld);
  dequantize_block_vec<6>(w, b, tile, ld);
}

// Independent accumulators a row keeps, so that few rows do not chain every FMA on the one before.
constexpr int splits_for(int rows) { return rows >= 4 ? 2 : 4; }

// out[r, j] for ROWS rows and block b's 16 outputs (valid of them), from x_t [k, ROWS].
template <int BITS, int ROWS>
void fused_block(const KPacked& w, int64_t b, const float* x_t, float* out, int64_t ldo, int64_t valid) {
  constexpr int S = splits_for(ROWS);
  const uint8_t* q = w.block_q(b);
  const uint8_t* high = w.block_high(b);
  const float* scales = w.block_scales(b);
  const float* mins = w.block_mins(b);
  const int64_t ahead_groups = kAheadBytes / (w.group / 2 * kBlockN);
  Out16 acc[S][ROWS];
  for (int s = 0; s < S; ++s)
    for (int r = 0; r < ROWS; ++r) acc[s][r] = zero16();
  Out16 scale = zero16(), min = zero16();
  for (int64_t i = 0; i < w.k; i += 8) {
    if (i % w.group == 0) {
      const int64_t g = i / w.group;
      __builtin_prefetch(scales + (g + ahead_groups) * kBlockN, 0, 2);
      __builtin_prefetch(mins + (g + ahead_groups) * kBlockN, 0, 2);
      scale = load16(scales + g * kBlockN);
      min = load16(mins + g * kBlockN);
    }
    __builtin_prefetch(q + (i / 2) * kBlockN + kAheadBytes, 0, 2);
    if (BITS > 4 && i % 32 == 0) __builtin_prefetch(high_row(w, high, i) + kAheadBytes / 8, 0, 2);
    Out16 v[8];
    values8f<BITS>(q + (i / 2) * kBlockN, high_row(w, high, i), v);
    for (int u = 0; u < 8; ++u) {
      const Out16 values = fmadd(v[u], scale, min);
      for (int r = 0; r < ROWS; ++r) acc[u % S][r] = fma16(x_t[(i + u) * ROWS + r], values, acc[u % S][r]);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    Out16 sum = acc[0][r];
    for (int s = 1; s < S; ++s) sum = add16(sum, acc[s][r]);
    store16(out + r * ldo, sum, valid);
  }
}

using FusedFn = void (*)(const KPacked&, int64_t, const float*, float*, int64_t, int64_t);

template <int BITS, int... ROWS>
constexpr std::array<FusedFn, sizeof...(ROWS)> fused_by_rows(std::integer_sequence<int, ROWS...>) {
  return {&fused_block<BITS, ROWS + 1>...};
}

void fused_gemm(const KPacked& w, const float* x, float* out, int64_t rows, int64_t n) {
  constexpr int64_t per_group = kFusedRowsPerPass;
  using Rows = std::make_integer_sequence<int, kFusedRowsPerPass>;
  static constexpr auto by_rows_4 = fused_by_rows<4>(Rows{});
  static constexpr auto by_rows_5 = fused_by_rows<5>(Rows{});
  static constexpr auto by_rows_6 = fused_by_rows<6>(Rows{});
  const auto& by_rows = w.bits == 4 ? by_rows_4 : w.bits == 5 ? by_rows_5 : by_rows_6;
  const int64_t row_groups = (rows + per_group - 1) / per_group;
  std::vector<float> x_t(row_groups * w.k * per_group);
  bucketserve_gemm::transpose_row_groups(x, x_t.data(), rows, w.k, w.k, per_group);
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t g = 0; g < row_groups; ++g) {
        const int64_t first = g * per_group, count = std::min(per_group, rows - first);
        by_rows[count - 1](w, b, x_t.data() + g * w.k * per_group, out + first * n + b * kBlockN, n,
                           std::min(kBlockN, n - b * kBlockN));
      }
    }
  });
}

#else

void dequantize_block(const KPacked& w, int64_t b, float* tile, int64_t ld) { dequantize_block_scalar(w, b, tile, ld); }

#endif  // BUCKETSERVE_KQUANT_FUSED

// Many rows (or any rows without vectors): kTileBlocks blocks dequantized once into a per-thread fp32 tile
// [k, kTileWidth], then passes of up to 8 rows over it.
void tiled_gemm(const KPacked& w, const float* x, float* out, int64_t rows, int64_t n) {
  const auto& passes = bucketserve_gemm::passes<kTileWidth / Vec::size(), /*PREFETCH=*/false>;
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN, num_tiles = (num_blocks + kTileBlocks - 1) / kTileBlocks;
  const int64_t row_groups = (rows + kRowsPerPass - 1) / kRowsPerPass;
  std::vector<float> x_t(row_groups * w.k * kRowsPerPass);
  bucketserve_gemm::transpose_row_groups(x, x_t.data(), rows, w.k, w.k);
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(w.k * kTileWidth);
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t j = 0; j < kTileBlocks; ++j) {
        const int64_t b = t * kTileBlocks + j;
        if (b < num_blocks) {
          dequantize_block(w, b, tile.data() + j * kBlockN, kTileWidth);
        } else {  // past the last block: zero, and its outputs are dropped
          for (int64_t i = 0; i < w.k; ++i) std::fill_n(tile.data() + i * kTileWidth + j * kBlockN, kBlockN, 0.f);
        }
      }
      const int64_t valid_cols = std::min(kTileWidth, n - t * kTileWidth);
      for (int64_t g = 0; g < row_groups; ++g) {
        const int64_t first = g * kRowsPerPass, count = std::min(kRowsPerPass, rows - first);
        passes[count - 1](x_t.data() + g * w.k * kRowsPerPass, tile.data(), out + first * n + t * kTileWidth, w.k, n,
                          valid_cols);
      }
    }
  });
}

at::Tensor kquant_linear(const at::Tensor& x, const at::Tensor& qweight, const c10::optional<at::Tensor>& qhigh,
                         const at::Tensor& scales, const at::Tensor& mins, int64_t n, int64_t k) {
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && scales.device().is_cpu() && mins.device().is_cpu(),
              "kquant_linear runs on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat, "kquant_linear takes float32 x, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == k, "x has ", x.dim() ? x.size(-1) : 0, " features, the weight k = ", k);
  TORCH_CHECK(k > 0 && k % 16 == 0, "k = ", k, " is not a whole number of sub-blocks of 16 or 32 inputs");
  TORCH_CHECK(qweight.scalar_type() == at::kByte && qweight.dim() == 3 && qweight.size(1) == k / 2 &&
                  qweight.size(2) == kBlockN,
              "qweight must be uint8 [ceil(n / 16), k / 2 = ", k / 2, ", 16], got ", qweight.scalar_type(), " ",
              qweight.sizes());
  const int64_t num_blocks = qweight.size(0);
  TORCH_CHECK(n > 0 && (num_blocks - 1) * kBlockN < n && n <= num_blocks * kBlockN, "n = ", n,
              " does not fit qweight's ", num_blocks, " blocks of 16 rows");
  const bool has_high = qhigh.has_value() && qhigh->defined();
  int64_t bits = 4;
  if (has_high) {
    TORCH_CHECK(qhigh->device().is_cpu() && qhigh->scalar_type() == at::kByte && qhigh->dim() == 3 &&
                    qhigh->size(0) == num_blocks && qhigh->size(2) == kBlockN &&
                    (qhigh->size(1) * 8 == k || qhigh->size(1) * 4 == k),
                "qhigh must be uint8 [", num_blocks, ", k / 8 = ", k / 8, " (5 bits) or k / 4 = ", k / 4,
                " (6 bits), 16], got ", qhigh->scalar_type(), " ", qhigh->sizes());
    bits = qhigh->size(1) * 8 == k ? 5 : 6;
  }
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 3 && scales.size(0) == num_blocks &&
                  scales.size(2) == kBlockN && (scales.size(1) * 32 == k || scales.size(1) * 16 == k),
              "scales must be float32 [", num_blocks, ", k / 32 = ", k / 32, " or k / 16 = ", k / 16, ", 16], got ",
              scales.scalar_type(), " ", scales.sizes());
  TORCH_CHECK(mins.scalar_type() == at::kFloat && mins.sizes() == scales.sizes(), "mins must be float32 ",
              scales.sizes(), " as scales, got ", mins.scalar_type(), " ", mins.sizes());

  const auto input = x.contiguous();
  const auto q = qweight.contiguous();
  const auto h = has_high ? qhigh->contiguous() : at::Tensor();
  const auto s = scales.contiguous();
  const auto m = mins.contiguous();
  const int64_t rows = input.numel() / k;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  auto out = at::empty(out_shape, input.options());
  if (rows == 0) return out;
  const KPacked w{q.data_ptr<uint8_t>(), has_high ? h.data_ptr<uint8_t>() : nullptr, s.data_ptr<float>(),
                  m.data_ptr<float>(), bits, k, k / s.size(1)};
#if defined(BUCKETSERVE_KQUANT_FUSED)
  if (rows <= kFusedRowsPerPass) {
    fused_gemm(w, input.data_ptr<float>(), out.data_ptr<float>(), rows, n);
    return out;
  }
#endif
  tiled_gemm(w, input.data_ptr<float>(), out.data_ptr<float>(), rows, n);
  return out;
}

}  // namespace

// Through a second macro, so that BUCKETSERVE_KQUANT_NAMESPACE is expanded before TORCH_LIBRARY pastes it.
#define BUCKETSERVE_KQUANT_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define BUCKETSERVE_KQUANT_IMPL(ns, m) TORCH_LIBRARY_IMPL(ns, CPU, m)

BUCKETSERVE_KQUANT_FRAGMENT(BUCKETSERVE_KQUANT_NAMESPACE, m) {
  m.def("kquant_linear(Tensor x, Tensor qweight, Tensor? qhigh, Tensor scales, Tensor mins, int n, int k) -> Tensor");
}

BUCKETSERVE_KQUANT_IMPL(BUCKETSERVE_KQUANT_NAMESPACE, m) { m.impl("kquant_linear", &kquant_linear); }

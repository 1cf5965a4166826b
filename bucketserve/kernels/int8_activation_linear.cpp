// bucketserve::int8_activation_linear: x @ W.T for a weight W in the packed int8 / int4 layout of
// quantization/layout.py (the one quantized_linear.cpp reads), with the activations quantized to int8 too:
// each row of x, in groups of 32 inputs (the weight's groups), becomes d * xq with d = absmax / 127 and
// xq = round(x / d) in -127..127, as quantization/activations.py's torch reference defines it bit for bit.
// Then every group's dot product is exact integer math (int8 x int8 -> int32, or int4 nibbles x int8) and is
// scaled back once per group:  out[r, j] = sum_g d[r, g] * (scale[j, g] * isum + min[j, g] * sum xq[r, g]).
// So the result is dequantize(xq) @ dequantize(W).T up to fp32 rounding of the per-group terms, close to
// quantized_linear's exact result but not equal to it (activations="int8" is opt-in for that reason).
//
// Paths, picked once per process from what the CPU has (__builtin_cpu_supports), each compiled with its own
// target attribute so that one build holds them all:
// - "avx512_vnni": 16 outputs a vector, vpdpbusd (u8 x s8, 4 bytes a lane); AVX-512 VBMI's vpermb turns the
//   layout's [4 inputs][16 outputs] bytes into VNNI's [16 outputs][4 inputs] in one instruction a load.
// - "avx_vnni": the same in two 256-bit halves (VEX vpdpbusd); the 4 x 16 byte transpose by unpacks.
// - "avx2": pmaddubsw + pmaddwd in place of vpdpbusd (u8 x s8 pairs saturate int16, so int8 weights take
//   llama.cpp's sign trick: |w| x sign(w) * xq, each pair at most 2 * 128 * 127 < 32768).
// - "scalar": plain loops, the portable form.
// - "amx": AMX-INT8 tiles, for many rows (a prefill chunk; auto takes it for int8 weights from kAmxMinRows
//   rows, see best_isa): 16 rows x 16
//   outputs x one group of 32 inputs a tile multiply (tdpbssd for int8 weights, tdpbsud for int4), each group's
//   int32 tile then scaled in AVX-512 registers (4 groups in flight). The kernel asks the OS for the tile state once per process
//   (arch_prctl ARCH_REQ_XCOMP_PERM) and loads the tile config on every thread, in each task of the
//   parallel loop (a pool thread of at::parallel_for has no config of its own, and other code - oneDNN - may
//   load its own between our calls); refused, or without AMX, auto keeps to the VNNI paths.
// vpdpbusd multiplies unsigned by signed bytes. int4 nibbles (0..15) are the unsigned side as they are; for
// int8 weights the activations are, stored as xq + 128, and 128 * sum(w) of the group is taken off again.
//
// The weight is read as the compiled directory stores it (the GGUF's blocks, packed by layout.py) and put
// into VNNI's order in registers, one instruction a 64-byte load, rather than repacked into a second copy at
// load: a tied lm_head shares its tensors with the embedding, whose lookups read the layout as it is.
//
// Few rows (a decode step) are the reason for this kernel: each 64-byte load of the weight feeds up to 8 rows'
// vpdpbusd, kept in registers. More rows go through in passes of 8, the block still in L1 (at most
// k_pad * 16 bytes: 24 KiB for k = 1536 in int8).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "packed_weight.h"

namespace {

using bucketserve_packed::kBlockN;
using bucketserve_packed::kGroup;  // inputs per scale: layout.GROUP, and the activations' group
using Weight = bucketserve_packed::PackedWeight;
constexpr int64_t kAheadBytes = 4 * 1024;  // how far ahead of its loads a pass prefetches the weight


// The quantized activations, in the byte order the path reads.
struct Acts {
  const uint8_t* q;   // [rows, k_pad]
  const float* d;     // [rows, groups]: the scale of each group
  const float* dsum;  // [rows, groups]: d * sum(xq) of each group (the int4 min's term)
  int64_t k_pad, groups;

  const uint8_t* row(int64_t r) const { return q + r * k_pad; }
  float scale(int64_t r, int64_t g) const { return d[r * groups + g]; }
  float scaled_sum(int64_t r, int64_t g) const { return dsum[r * groups + g]; }
};

float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

enum class Isa { kScalar, kAvx2, kAvxVnni, kAvx512Vnni, kAmx };
bool amx_permitted();
const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmx: return "amx";
    case Isa::kAvx512Vnni: return "avx512_vnni";
    case Isa::kAvxVnni: return "avx_vnni";
    case Isa::kAvx2: return "avx2";
    default: return "scalar";
  }
}

// The paths this CPU runs, best first.
std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi")) {
    if (amx_permitted()) isas.push_back(Isa::kAmx);  // for many rows; its tiles are scaled in AVX-512
    isas.push_back(Isa::kAvx512Vnni);
  }
  if (avx2 && __builtin_cpu_supports("avxvnni")) isas.push_back(Isa::kAvxVnni);
  if (avx2) isas.push_back(Isa::kAvx2);
  isas.push_back(Isa::kScalar);
  return isas;
}

// ---- activations ------------------------------------------------------------------------------------------

// Row r of x [rows, k] quantized in groups of 32 (inputs past k are 0), as activations.quantize_activations.
// reorder: int4's order, each 8 inputs as 0 2 4 6 1 3 5 7 (a byte of the layout holds inputs 2i and 2i + 1:
// its low nibbles meet the even inputs, its high ones the odd). offset: stored as xq + 128 (unsigned).
void quantize_row(const float* x, int64_t k, int64_t k_pad, bool reorder, bool offset, uint8_t* q, float* d,
                  float* dsum) {
  for (int64_t g = 0; g * kGroup < k_pad; ++g) {
    float values[kGroup];
    float amax = 0.f;
    for (int64_t i = 0; i < kGroup; ++i) {
      const int64_t at = g * kGroup + i;
      values[i] = at < k ? x[at] : 0.f;
      amax = std::max(amax, std::fabs(values[i]));
    }
    const float scale = amax / 127.f;
    const float inverse = scale > 0.f ? 1.f / scale : 0.f;
    int32_t sum = 0;
    int8_t xq[kGroup];
    for (int64_t i = 0; i < kGroup; ++i) {
      const float v = std::nearbyint(values[i] * inverse);  // ties to even, as torch.round
      xq[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
      sum += xq[i];
    }
    d[g] = scale;
    dsum[g] = scale * static_cast<float>(sum);
    for (int64_t i = 0; i < kGroup; ++i) {
      const int64_t src = reorder ? (i & ~7) + ((i & 7) < 4 ? 2 * (i & 3) : 2 * (i & 3) + 1) : i;
      q[g * kGroup + i] = static_cast<uint8_t>(offset ? xq[src] + 128 : xq[src]);
    }
  }
}

// quantize_row in AVX-512, the same fp32 operations (cvtps rounds to nearest even, as nearbyint): at many
// rows the scalar form took a fifth of the call's time.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
void quantize_row_512(const float* x, int64_t k, int64_t k_pad, bool reorder, bool offset, uint8_t* q, float* d,
                      float* dsum) {
  const __m512i pairs = _mm512_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  for (int64_t g = 0; g * kGroup < k_pad; ++g) {
    __m512 v[2];
    for (int h = 0; h < 2; ++h) {
      const int64_t at = g * kGroup + 16 * h;
      const int64_t left = std::max<int64_t>(0, std::min<int64_t>(16, k - at));
      v[h] = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << left) - 1), x + at);
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    const float scale = amax / 127.f;
    const float inverse = scale > 0.f ? 1.f / scale : 0.f;
    int32_t sum = 0;
    for (int h = 0; h < 2; ++h) {
      const __m512 scaled = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_mul_ps(v[h], _mm512_set1_ps(inverse))));
      __m512i xq = _mm512_cvtps_epi32(scaled);
      sum += _mm512_reduce_add_epi32(xq);
      if (reorder) xq = _mm512_permutexvar_epi32(pairs, xq);
      __m128i bytes = offset ? _mm512_cvtusepi32_epi8(_mm512_add_epi32(xq, _mm512_set1_epi32(128)))
                             : _mm512_cvtsepi32_epi8(xq);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + g * kGroup + 16 * h), bytes);
    }
    d[g] = scale;
    dsum[g] = scale * static_cast<float>(sum);
  }
}

// ---- scalar -----------------------------------------------------------------------------------------------

void scalar_block(const Weight& w, int64_t b, const Acts& a, int64_t rows, float* out, int64_t ldo, int64_t valid) {
  const uint8_t* q = w.block_q(b);
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* xq = reinterpret_cast<const int8_t*>(a.row(r));
    for (int64_t j = 0; j < valid; ++j) {
      float acc = 0.f;
      for (int64_t g = 0; g < w.groups; ++g) {
        int32_t isum = 0;
        for (int64_t i = g * kGroup; i < (g + 1) * kGroup; ++i) {
          const int32_t wq = w.bits == 8 ? static_cast<int8_t>(q[i * kBlockN + j]) : (q[(i / 2) * kBlockN + j] >> ((i % 2) * 4)) & 0xF;
          isum += wq * xq[i];
        }
        const float scale = half_to_float(w.block_scales(b)[g * kBlockN + j]);
        float term = scale * static_cast<float>(isum);
        if (w.bits == 4) term = term * a.scale(r, g) + half_to_float(w.block_mins(b)[g * kBlockN + j]) * a.scaled_sum(r, g);
        else term = term * a.scale(r, g);
        acc += term;
      }
      out[r * ldo + j] = acc;
    }
  }
}

// ---- AVX-512 VNNI -----------------------------------------------------------------------------------------

#define TARGET_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")))

// vpermb's indices: byte 4j + u of the result is byte 16u + j of the load (input u, output j).
TARGET_512 inline __m512i vnni_order_512() {
  alignas(64) uint8_t index[64];
  for (int j = 0; j < 16; ++j)
    for (int u = 0; u < 4; ++u) index[4 * j + u] = static_cast<uint8_t>(16 * u + j);
  return _mm512_load_si512(index);
}

TARGET_512 inline __m512i broadcast4(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// ROWS rows (at most 8) x block b's 16 outputs. Few rows alone would chain every vpdpbusd on the one before
// (5 cycles each), so they keep two accumulators each.
template <int ROWS>
TARGET_512 void avx512_block_int8(const Weight& w, int64_t b, const Acts& a, float* out, int64_t ldo, int64_t valid) {
  constexpr int S = ROWS <= 4 ? 2 : 1;
  const __m512i order = vnni_order_512(), ones = _mm512_set1_epi8(1);
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  __m512 f[ROWS];
  for (int r = 0; r < ROWS; ++r) f[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512i acc[S][ROWS], wsum = _mm512_setzero_si512();
    for (int s = 0; s < S; ++s)
      for (int r = 0; r < ROWS; ++r) acc[s][r] = _mm512_setzero_si512();
    const uint8_t* qg = q + g * kGroup * kBlockN;
    for (int c = 0; c < 8; ++c) {  // 4 inputs x 16 outputs a load
      if (c % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(qg + c * 64 + kAheadBytes), _MM_HINT_T0);
      const __m512i wv = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(qg + c * 64));
      wsum = _mm512_dpbusd_epi32(wsum, ones, wv);
      for (int r = 0; r < ROWS; ++r)
        acc[c % S][r] = _mm512_dpbusd_epi32(acc[c % S][r], broadcast4(a.row(r) + g * kGroup + 4 * c), wv);
    }
    const __m512i offset = _mm512_slli_epi32(wsum, 7);  // 128 * sum(w): the activations were stored + 128
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + g * kBlockN)));
    for (int r = 0; r < ROWS; ++r) {
      __m512i isum = S == 2 ? _mm512_add_epi32(acc[0][r], acc[S - 1][r]) : acc[0][r];
      const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum, offset));
      f[r] = _mm512_fmadd_ps(_mm512_mul_ps(v, scale), _mm512_set1_ps(a.scale(r, g)), f[r]);
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
  for (int r = 0; r < ROWS; ++r) _mm512_mask_storeu_ps(out + r * ldo, mask, f[r]);
}

template <int ROWS>
TARGET_512 void avx512_block_int4(const Weight& w, int64_t b, const Acts& a, float* out, int64_t ldo, int64_t valid) {
  constexpr int S = ROWS <= 4 ? 2 : 1;  // the even and the odd inputs apart
  const __m512i order = vnni_order_512(), nibble = _mm512_set1_epi8(0xF);
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const uint16_t* mins = w.block_mins(b);
  __m512 f[ROWS];
  for (int r = 0; r < ROWS; ++r) f[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512i acc[S][ROWS];
    for (int s = 0; s < S; ++s)
      for (int r = 0; r < ROWS; ++r) acc[s][r] = _mm512_setzero_si512();
    const uint8_t* qg = q + g * (kGroup / 2) * kBlockN;
    for (int c = 0; c < 4; ++c) {  // 8 inputs x 16 outputs a load
      _mm_prefetch(reinterpret_cast<const char*>(qg + c * 64 + kAheadBytes), _MM_HINT_T0);
      const __m512i raw = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(qg + c * 64));
      const __m512i even = _mm512_and_si512(raw, nibble), odd = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
      for (int r = 0; r < ROWS; ++r) {
        const uint8_t* x = a.row(r) + g * kGroup + 8 * c;
        acc[0][r] = _mm512_dpbusd_epi32(acc[0][r], even, broadcast4(x));
        acc[S - 1][r] = _mm512_dpbusd_epi32(acc[S - 1][r], odd, broadcast4(x + 4));
      }
    }
    const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + g * kBlockN)));
    const __m512 min = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mins + g * kBlockN)));
    for (int r = 0; r < ROWS; ++r) {
      const __m512i isum = S == 2 ? _mm512_add_epi32(acc[0][r], acc[S - 1][r]) : acc[0][r];
      const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), scale);
      f[r] = _mm512_fmadd_ps(v, _mm512_set1_ps(a.scale(r, g)), f[r]);
      f[r] = _mm512_fmadd_ps(min, _mm512_set1_ps(a.scaled_sum(r, g)), f[r]);
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
  for (int r = 0; r < ROWS; ++r) _mm512_mask_storeu_ps(out + r * ldo, mask, f[r]);
}

// ---- AVX2 and AVX-VNNI (256-bit) --------------------------------------------------------------------------

#define TARGET_256 __attribute__((target("avx2,fma,f16c")))
#define TARGET_VNNI256 __attribute__((target("avxvnni,avx2,fma,f16c")))

// The 64 bytes at p, [4 inputs][16 outputs], as VNNI's [16 outputs][4 inputs]: lo holds outputs 0..7, hi 8..15.
TARGET_256 inline void vnni_order_256(const uint8_t* p, __m256i& lo, __m256i& hi) {
  const __m128i a0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i a1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16));
  const __m128i a2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32));
  const __m128i a3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 48));
  const __m128i t0 = _mm_unpacklo_epi8(a0, a1), t1 = _mm_unpackhi_epi8(a0, a1);
  const __m128i t2 = _mm_unpacklo_epi8(a2, a3), t3 = _mm_unpackhi_epi8(a2, a3);
  lo = _mm256_set_m128i(_mm_unpackhi_epi16(t0, t2), _mm_unpacklo_epi16(t0, t2));
  hi = _mm256_set_m128i(_mm_unpackhi_epi16(t1, t3), _mm_unpacklo_epi16(t1, t3));
}

TARGET_256 inline __m256i broadcast4_256(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// (The AVX2 instantiations carry the avxvnni target too, one attribute for both, and use no VNNI intrinsic;
// they hold no loop of byte products the compiler could vectorize into vpdpbusd on its own.)
// acc + the 4-byte dot products of u (unsigned) and s (signed): vpdpbusd, or pmaddubsw + pmaddwd (exact only
// where each pair's sum fits int16, which the callers see to).
template <bool VNNI>
TARGET_VNNI256 inline __m256i dot4(__m256i acc, __m256i u, __m256i s) {
  if constexpr (VNNI) {
    return _mm256_dpbusd_avx_epi32(acc, u, s);
  } else {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  }
}

template <bool VNNI>
TARGET_VNNI256 inline __m256 load_halves(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// ROWS rows (at most 4) x block b's 16 outputs, in two halves. int8 weights: with VNNI the activations are
// stored + 128 (the unsigned side) and 128 * sum(w) is taken off; without, |w| x sign(w) * xq.
template <bool VNNI, int ROWS>
TARGET_VNNI256 void avx256_block_int8(const Weight& w, int64_t b, const Acts& a, float* out, int64_t ldo, int64_t valid) {
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const __m256i ones = _mm256_set1_epi8(1);
  __m256 f[ROWS][2];
  for (int r = 0; r < ROWS; ++r) f[r][0] = f[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256i acc[ROWS][2], wsum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const uint8_t* qg = q + g * kGroup * kBlockN;
    for (int c = 0; c < 8; ++c) {
      if (c % 2 == 0) _mm_prefetch(reinterpret_cast<const char*>(qg + c * 64 + kAheadBytes), _MM_HINT_T0);
      __m256i wv[2];
      vnni_order_256(qg + c * 64, wv[0], wv[1]);
      for (int h = 0; h < 2; ++h) {
        if constexpr (VNNI) {
          wsum[h] = dot4<true>(wsum[h], ones, wv[h]);
          for (int r = 0; r < ROWS; ++r) acc[r][h] = dot4<true>(acc[r][h], broadcast4_256(a.row(r) + g * kGroup + 4 * c), wv[h]);
        } else {
          const __m256i magnitude = _mm256_abs_epi8(wv[h]);
          for (int r = 0; r < ROWS; ++r)
            acc[r][h] = dot4<false>(acc[r][h], magnitude, _mm256_sign_epi8(broadcast4_256(a.row(r) + g * kGroup + 4 * c), wv[h]));
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256 scale = load_halves<VNNI>(scales + g * kBlockN + 8 * h);
      const __m256i offset = VNNI ? _mm256_slli_epi32(wsum[h], 7) : _mm256_setzero_si256();
      for (int r = 0; r < ROWS; ++r) {
        const __m256 v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][h], offset));
        f[r][h] = _mm256_fmadd_ps(_mm256_mul_ps(v, scale), _mm256_set1_ps(a.scale(r, g)), f[r][h]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    alignas(32) float full[16];
    _mm256_store_ps(full, f[r][0]);
    _mm256_store_ps(full + 8, f[r][1]);
    std::copy(full, full + valid, out + r * ldo);
  }
}

template <bool VNNI, int ROWS>
TARGET_VNNI256 void avx256_block_int4(const Weight& w, int64_t b, const Acts& a, float* out, int64_t ldo, int64_t valid) {
  const uint8_t* q = w.block_q(b);
  const uint16_t* scales = w.block_scales(b);
  const uint16_t* mins = w.block_mins(b);
  const __m256i nibble = _mm256_set1_epi8(0xF);
  __m256 f[ROWS][2];
  for (int r = 0; r < ROWS; ++r) f[r][0] = f[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < w.groups; ++g) {
    __m256i acc[ROWS][2];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    const uint8_t* qg = q + g * (kGroup / 2) * kBlockN;
    for (int c = 0; c < 4; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(qg + c * 64 + kAheadBytes), _MM_HINT_T0);
      __m256i raw[2];
      vnni_order_256(qg + c * 64, raw[0], raw[1]);
      for (int h = 0; h < 2; ++h) {
        const __m256i even = _mm256_and_si256(raw[h], nibble), odd = _mm256_and_si256(_mm256_srli_epi16(raw[h], 4), nibble);
        for (int r = 0; r < ROWS; ++r) {
          const uint8_t* x = a.row(r) + g * kGroup + 8 * c;
          acc[r][h] = dot4<VNNI>(acc[r][h], even, broadcast4_256(x));
          acc[r][h] = dot4<VNNI>(acc[r][h], odd, broadcast4_256(x + 4));
        }
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256 scale = load_halves<VNNI>(scales + g * kBlockN + 8 * h);
      const __m256 min = load_halves<VNNI>(mins + g * kBlockN + 8 * h);
      for (int r = 0; r < ROWS; ++r) {
        const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][h]), scale);
        f[r][h] = _mm256_fmadd_ps(v, _mm256_set1_ps(a.scale(r, g)), f[r][h]);
        f[r][h] = _mm256_fmadd_ps(min, _mm256_set1_ps(a.scaled_sum(r, g)), f[r][h]);
      }
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    alignas(32) float full[16];
    _mm256_store_ps(full, f[r][0]);
    _mm256_store_ps(full + 8, f[r][1]);
    std::copy(full, full + valid, out + r * ldo);
  }
}


// ---- AMX-INT8 (many rows) ---------------------------------------------------------------------------------

#define TARGET_AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")))

constexpr int64_t kAmxMinRows = 16;  // auto takes the AMX path from this many rows: one tile's rows
constexpr int64_t kTileRows = 16;    // rows of x (and of the int32 result) a tile holds

bool cpu_has_amx_int8() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (d >> 24 & 1) && (d >> 25 & 1);  // AMX-TILE, AMX-INT8
}

// Whether this process may use the tile state: asked of the OS once (Linux keeps AMX off until asked).
bool amx_permitted() {
  static const bool permitted = [] {
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr int kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return cpu_has_amx_int8() && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return permitted;
}

// The tile config (palette 1): tiles 0-3 int32 results [16 rows, 16 outputs], one for each of 4 groups in
// flight; tiles 4-5 activations [16 rows, 32 inputs], 6-7 the weight [8 rows of 4 inputs, 16 outputs x 4
// bytes], each pair taken in turn. A group's result must leave its tile to be scaled (tile, then memory, then
// vectors); with one tile each group's multiply, store and loads would wait on one another, so 4 groups'
// multiplies go out before their stores.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
constexpr int kGroupsInFlight = 4;

TARGET_AMX void load_tile_config() {
  TileConfig config;
  for (int t = 0; t < 4; ++t) config.colsb[t] = 64, config.rows[t] = kTileRows;
  for (int t = 4; t < 6; ++t) config.colsb[t] = kGroup, config.rows[t] = kTileRows;
  for (int t = 6; t < 8; ++t) config.colsb[t] = 64, config.rows[t] = kGroup / 4;
  _tile_loadconfig(&config);
}

// Block b of the weight into VNNI's order, [k_pad / 4 rows][16 outputs][4 bytes], the tiles' B layout: int8
// as it is; int4 as nibbles (0..15), each 8 inputs as 0 2 4 6 | 1 3 5 7 (the activations' int4 order).
TARGET_AMX void vnni_block(const Weight& w, int64_t b, uint8_t* out) {
  const __m512i order = vnni_order_512(), nibble = _mm512_set1_epi8(0xF);
  const uint8_t* q = w.block_q(b);
  if (w.bits == 8) {
    for (int64_t c = 0; c < w.k_pad / 4; ++c)
      _mm512_storeu_si512(out + c * 64, _mm512_permutexvar_epi8(order, _mm512_loadu_si512(q + c * 64)));
  } else {
    for (int64_t c = 0; c < w.k_pad / 8; ++c) {
      const __m512i raw = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(q + c * 64));
      _mm512_storeu_si512(out + 2 * c * 64, _mm512_and_si512(raw, nibble));
      _mm512_storeu_si512(out + (2 * c + 1) * 64, _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble));
    }
  }
}

// One group's tile multiply into result tile C, from activation tile A and weight tile B. A macro: GCC's tile
// intrinsics paste their tile numbers into the instruction's text, so they must be literals.
#define TILE_GROUP(C, A, B, g)                                       \
  do {                                                               \
    _tile_zero(C);                                                   \
    _tile_loadd(A, a.row(0) + (g) * kGroup, a.k_pad);                \
    _tile_loadd(B, wb + (g) * kGroup * kBlockN, 64);                 \
    if constexpr (INT4) _tile_dpbsud(C, A, B); /* signed x unsigned */ \
    else _tile_dpbssd(C, A, B);                                      \
  } while (0)

// Group g's int32 results c [16 rows, 16 outputs] scaled into f.
template <bool INT4>
TARGET_AMX inline void scale_group(const Weight& w, int64_t b, const Acts& a, int64_t g, const int32_t* c, __m512* f) {
  const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.block_scales(b) + g * kBlockN)));
  __m512 min = _mm512_setzero_ps();
  if constexpr (INT4) min = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.block_mins(b) + g * kBlockN)));
  for (int r = 0; r < kTileRows; ++r) {
    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + r * 16)), scale);
    f[r] = _mm512_fmadd_ps(v, _mm512_set1_ps(a.scale(r, g)), f[r]);
    if constexpr (INT4) f[r] = _mm512_fmadd_ps(min, _mm512_set1_ps(a.scaled_sum(r, g)), f[r]);
  }
}

// 16 rows (tile m of the activations, padded with zero rows to whole tiles) x block b's 16 outputs, from the
// block in VNNI order; the first `rows` rows stored.
template <bool INT4>
TARGET_AMX void amx_tile_rows(const Weight& w, int64_t b, const uint8_t* wb, const Acts& a, int64_t rows,
                              float* out, int64_t ldo, int64_t valid) {
  alignas(64) int32_t c[kGroupsInFlight][kTileRows * 16];
  __m512 f[kTileRows];
  for (int r = 0; r < kTileRows; ++r) f[r] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + kGroupsInFlight <= w.groups; g += kGroupsInFlight) {
    TILE_GROUP(0, 4, 6, g);
    TILE_GROUP(1, 5, 7, g + 1);
    TILE_GROUP(2, 4, 6, g + 2);
    TILE_GROUP(3, 5, 7, g + 3);
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    _tile_stored(2, c[2], 64);
    _tile_stored(3, c[3], 64);
    for (int i = 0; i < kGroupsInFlight; ++i) scale_group<INT4>(w, b, a, g + i, c[i], f);
  }
  for (; g < w.groups; ++g) {
    TILE_GROUP(0, 4, 6, g);
    _tile_stored(0, c[0], 64);
    scale_group<INT4>(w, b, a, g, c[0], f);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
  for (int r = 0; r < rows; ++r) _mm512_mask_storeu_ps(out + r * ldo, mask, f[r]);
}

// Every block (threads take whole blocks), each put into VNNI order once, then every tile of rows over it.
TARGET_AMX void amx_gemm(const Weight& w, const Acts& a, int64_t rows, float* out, int64_t n) {
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    load_tile_config();  // this thread's, for this task
    std::vector<uint8_t> wb(w.k_pad * kBlockN);
    for (int64_t b = begin; b < end; ++b) {
      vnni_block(w, b, wb.data());
      const int64_t valid = std::min(kBlockN, n - b * kBlockN);
      for (int64_t first = 0; first < rows; first += kTileRows) {
        const Acts tile{a.row(first), a.d + first * a.groups, a.dsum + first * a.groups, a.k_pad, a.groups};
        (w.bits == 4 ? amx_tile_rows<true> : amx_tile_rows<false>)(w, b, wb.data(), tile, std::min(kTileRows, rows - first),
                                                                   out + first * n + b * kBlockN, n, valid);
      }
    }
    _tile_release();
  });
}

// ---- dispatch ---------------------------------------------------------------------------------------------

// One block of 16 outputs for `rows` rows (at most the path's rows a pass) starting at a.row(0) and out.
using BlockFn = void (*)(const Weight&, int64_t, const Acts&, float*, int64_t, int64_t);

template <template <int> class F, int... R>
constexpr std::array<BlockFn, sizeof...(R)> by_rows(std::integer_sequence<int, R...>) {
  return {&F<R + 1>::run...};
}
template <int R> struct A512Int8 { static void run(const Weight& w, int64_t b, const Acts& a, float* o, int64_t l, int64_t v) { avx512_block_int8<R>(w, b, a, o, l, v); } };
template <int R> struct A512Int4 { static void run(const Weight& w, int64_t b, const Acts& a, float* o, int64_t l, int64_t v) { avx512_block_int4<R>(w, b, a, o, l, v); } };
template <int R> struct VnniInt8 { static void run(const Weight& w, int64_t b, const Acts& a, float* o, int64_t l, int64_t v) { avx256_block_int8<true, R>(w, b, a, o, l, v); } };
template <int R> struct VnniInt4 { static void run(const Weight& w, int64_t b, const Acts& a, float* o, int64_t l, int64_t v) { avx256_block_int4<true, R>(w, b, a, o, l, v); } };
template <int R> struct Avx2Int8 { static void run(const Weight& w, int64_t b, const Acts& a, float* o, int64_t l, int64_t v) { avx256_block_int8<false, R>(w, b, a, o, l, v); } };
template <int R> struct Avx2Int4 { static void run(const Weight& w, int64_t b, const Acts& a, float* o, int64_t l, int64_t v) { avx256_block_int4<false, R>(w, b, a, o, l, v); } };

struct Path {
  int rows_per_pass;
  const BlockFn* int8;  // [rows_per_pass], by rows - 1
  const BlockFn* int4;
  bool offset_int8;     // int8 weights' activations stored + 128
  bool reorder_int4;    // int4 weights' activations in each 8's even-odd order
};

Path path_of(Isa isa) {
  static constexpr auto a512_8 = by_rows<A512Int8>(std::make_integer_sequence<int, 8>{});
  static constexpr auto a512_4 = by_rows<A512Int4>(std::make_integer_sequence<int, 8>{});
  static constexpr auto vnni_8 = by_rows<VnniInt8>(std::make_integer_sequence<int, 4>{});
  static constexpr auto vnni_4 = by_rows<VnniInt4>(std::make_integer_sequence<int, 4>{});
  static constexpr auto avx2_8 = by_rows<Avx2Int8>(std::make_integer_sequence<int, 4>{});
  static constexpr auto avx2_4 = by_rows<Avx2Int4>(std::make_integer_sequence<int, 4>{});
  switch (isa) {
    case Isa::kAvx512Vnni: return {8, a512_8.data(), a512_4.data(), true, true};
    case Isa::kAvxVnni: return {4, vnni_8.data(), vnni_4.data(), true, true};
    case Isa::kAvx2: return {4, avx2_8.data(), avx2_4.data(), false, true};
    case Isa::kAmx: return {kTileRows, nullptr, nullptr, false, true};  // tdpbssd / tdpbsud: signed activations
    default: return {0, nullptr, nullptr, false, false};
  }
}

// The best paths, chosen once per process (the first call), as the library loads: AMX (where the CPU has it
// and the OS allows it) for int8 weights from kAmxMinRows rows, the best vector path otherwise. Measured on
// our machine (1 thread, thread CPU time, a 1536 x 576 weight, 128 rows): int8 weights 0.69 ms on AMX against
// 1.06 ms on AVX-512 VNNI; int4 0.96 ms against 0.87 ms. Each group's int32 tile must be scaled in vectors (5
// to 6 operations a row, 7 with int4's min), as much work as VNNI's own dot products a row, and int4's
// nibbles must be widened to bytes for the tiles first, so for int4 the tiles save nothing.
Isa best_isa(int64_t rows, int64_t bits) {
  static const std::vector<Isa> isas = supported_isas();
  static const bool amx = isas.front() == Isa::kAmx;
  return amx && bits == 8 && rows >= kAmxMinRows ? Isa::kAmx : isas[amx ? 1 : 0];
}

Isa isa_named(const std::string& name, int64_t rows, int64_t bits) {
  if (name == "auto") return best_isa(rows, bits);
  for (Isa isa : supported_isas())
    if (name == isa_name(isa)) return isa;
  std::string have;
  for (Isa isa : supported_isas()) have += std::string(have.empty() ? "" : ", ") + isa_name(isa);
  TORCH_CHECK(false, "int8_activation_linear has no path '", name, "' on this CPU; it runs: auto, ", have);
}

void run_gemm(Isa isa, const Weight& w, const float* x, float* out, int64_t rows, int64_t k, int64_t n) {
  const Path path = path_of(isa);
  const bool offset = w.bits == 8 && path.offset_int8, reorder = w.bits == 4 && path.reorder_int4;
  const bool vector_quantize = isa == Isa::kAmx || isa == Isa::kAvx512Vnni;
  // AMX reads whole tiles of rows: the rows past the last are zeros (d = 0), computed and dropped.
  const int64_t rows_held = isa == Isa::kAmx ? (rows + kTileRows - 1) / kTileRows * kTileRows : rows;
  std::vector<uint8_t> xq(rows_held * w.k_pad);
  std::vector<float> d(rows_held * w.groups), dsum(rows_held * w.groups);
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      (vector_quantize ? quantize_row_512 : quantize_row)(x + r * k, k, w.k_pad, reorder, offset, xq.data() + r * w.k_pad,
                                                          d.data() + r * w.groups, dsum.data() + r * w.groups);
  });
  if (isa == Isa::kAmx) {
    amx_gemm(w, Acts{xq.data(), d.data(), dsum.data(), w.k_pad, w.groups}, rows, out, n);
    return;
  }
  const int64_t num_blocks = (n + kBlockN - 1) / kBlockN;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t valid = std::min(kBlockN, n - b * kBlockN);
      const int64_t per_pass = path.rows_per_pass ? path.rows_per_pass : rows;
      for (int64_t first = 0; first < rows; first += per_pass) {
        const int64_t count = std::min(per_pass, rows - first);
        const Acts a{xq.data() + first * w.k_pad, d.data() + first * w.groups, dsum.data() + first * w.groups,
                     w.k_pad, w.groups};
        float* o = out + first * n + b * kBlockN;
        if (path.rows_per_pass == 0) scalar_block(w, b, a, count, o, n, valid);
        else (w.bits == 8 ? path.int8 : path.int4)[count - 1](w, b, a, o, n, valid);
      }
    }
  });
}

at::Tensor int8_activation_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                                  const c10::optional<at::Tensor>& mins, int64_t n, int64_t k, c10::string_view isa) {
  const auto call = bucketserve_packed::check_packed_call("int8_activation_linear", x, qweight, scales, mins, n, k);
  const int64_t rows = call.rows;
  const Weight& w = call.weight;
  const Isa chosen = isa_named(std::string(isa), rows, w.bits);
  auto out = call.out;
  if (rows == 0) return out;
  const auto& input = call.input;
  run_gemm(chosen, w, input.data_ptr<float>(), out.data_ptr<float>(), rows, k, n);
  return out;
}

std::vector<std::string> int8_activation_isas() {
  std::vector<std::string> names;
  for (Isa isa : supported_isas()) names.emplace_back(isa_name(isa));
  return names;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(bucketserve, m) {
  m.def("int8_activation_linear(Tensor x, Tensor qweight, Tensor scales, Tensor? mins, int n, int k, "
        "str isa=\"auto\") -> Tensor");
  m.def("int8_activation_isas() -> str[]", &int8_activation_isas);
}

TORCH_LIBRARY_IMPL(bucketserve, CPU, m) { m.impl("int8_activation_linear", &int8_activation_linear); }

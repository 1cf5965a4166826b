// The packed int8 / int4 weight of quantization/layout.py, as the weight-only GEMM (quantized_linear.cpp) and the
// activation-quantized one (int8_activation_linear.cpp) read it, and the one check of their arguments against it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace bucketserve_packed {
namespace {  // internal to each kernel file: the variants the tests build for other ISAs load beside the library

constexpr int64_t kGroup = 32;   // inputs per scale (and min): layout.GROUP
constexpr int64_t kBlockN = 16;  // output rows per packed block: layout.BLOCK_N

// One packed weight, read-only.
struct PackedWeight {
  const uint8_t* q;        // int8 values [blocks, k_pad, 16], or uint8 pairs of int4 [blocks, k_pad/2, 16]
  const uint16_t* scales;  // float16 bits [blocks, groups, 16]
  const uint16_t* mins;    // float16 bits [blocks, groups, 16]; nullptr for int8
  int64_t bits, k_pad, groups;

  int64_t block_bytes() const { return k_pad * kBlockN * bits / 8; }
  const uint8_t* block_q(int64_t b) const { return q + b * block_bytes(); }
  const uint16_t* block_scales(int64_t b) const { return scales + b * groups * kBlockN; }
  const uint16_t* block_mins(int64_t b) const { return mins ? mins + b * groups * kBlockN : nullptr; }
};

// One call's arguments, checked: the contiguous tensors (held so the pointers stay valid), the weight over them,
// the rows of x and the output, shaped as x with n features.
struct PackedCall {
  at::Tensor input, q, s, m, out;
  PackedWeight weight;
  int64_t rows;
};

PackedCall check_packed_call(const char* op, const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const c10::optional<at::Tensor>& mins, int64_t n, int64_t k) {
  TORCH_CHECK(x.device().is_cpu() && qweight.device().is_cpu() && scales.device().is_cpu(), op, " runs on the CPU");
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, " takes float32 x, got ", x.scalar_type());
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

  PackedCall call;
  call.input = x.contiguous();
  call.q = qweight.contiguous();
  call.s = scales.contiguous();
  call.m = has_mins ? mins->contiguous() : at::Tensor();
  call.rows = call.input.numel() / k;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  call.out = at::empty(out_shape, call.input.options());
  call.weight = PackedWeight{reinterpret_cast<const uint8_t*>(call.q.data_ptr()),
                             reinterpret_cast<const uint16_t*>(call.s.data_ptr()),
                             has_mins ? reinterpret_cast<const uint16_t*>(call.m.data_ptr()) : nullptr, bits, k_pad,
                             groups};
  return call;
}

}  // namespace
}  // namespace bucketserve_packed

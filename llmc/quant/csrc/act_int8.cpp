// Fused CPU kernels of the integer-deployed linear (llmc/quant/int_linear.py), built on first use by
// llmc/quant/cpu_kernels.py. Each replaces a chain of PyTorch element-wise operations that makes several
// passes over memory (and, for a bfloat16 input, a slow mixed-dtype division) by one or two passes that
// the compiler vectorizes (-O3 -march=native, and -ffinite-math-only -fno-signed-zeros so that the max / min
// reductions vectorize; not -ffast-math: the division, the rounding and the products stay IEEE, no fused
// contractions but the explicit fma of the bias). Finite inputs only (a NaN or infinite activation gives unspecified codes).
//
// quantize_rows_s8: symmetric per-row (per-token) int8 codes, the same float32 operations as
//   Quantizer.fake_quant: s = max(max|x| / qmax, eps); q = round_half_even(x / s). No clamp is needed
//   (|x| <= max|x| = qmax * s up to rounding, so |x / s| < qmax + 1/2).
// rescale_rows: out[m, n] = acc[m, n] * s_x[m] (+ bias[n], fused multiply-add), float32 -> out's dtype.

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <limits>
#include <vector>

namespace {

template <typename T>
void quantize_rows(const T* x, int8_t* q, float* s, int64_t M, int64_t K, float qmax, float eps) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row_f(K);
    for (int64_t m = begin; m < end; ++m) {
      const T* row = x + m * K;
      float* f = row_f.data();
      float hi = std::numeric_limits<float>::lowest(), lo = std::numeric_limits<float>::max();
      for (int64_t k = 0; k < K; ++k) {
        float v = static_cast<float>(row[k]);
        f[k] = v;
        hi = v > hi ? v : hi;
        lo = v < lo ? v : lo;
      }
      float amax = hi > -lo ? hi : -lo;
      float sc = amax / qmax;
      sc = sc < eps ? eps : sc;
      s[m] = sc;
      int8_t* out = q + m * K;
      for (int64_t k = 0; k < K; ++k) {
        out[k] = static_cast<int8_t>(static_cast<int32_t>(__builtin_rintf(f[k] / sc)));
      }
    }
  });
}

template <typename O>
void rescale(const float* acc, const float* sx, const float* bias, O* out, int64_t M, int64_t N) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const float sc = sx[m];
      const float* r = acc + m * N;
      O* o = out + m * N;
      if (bias) {
        for (int64_t n = 0; n < N; ++n) o[n] = static_cast<O>(std::fma(r[n], sc, bias[n]));
      } else {
        for (int64_t n = 0; n < N; ++n) o[n] = static_cast<O>(r[n] * sc);
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> quantize_rows_s8(at::Tensor x, double qmax, double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "quantize_rows_s8: a contiguous 2-D CPU tensor");
  const int64_t M = x.size(0), K = x.size(1);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto s = at::empty({M, 1}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows(reinterpret_cast<const c10::BFloat16*>(x.data_ptr()), q.data_ptr<int8_t>(), s.data_ptr<float>(),
                  M, K, static_cast<float>(qmax), static_cast<float>(eps));
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize_rows_s8: bfloat16 or float32 input");
    quantize_rows(x.data_ptr<float>(), q.data_ptr<int8_t>(), s.data_ptr<float>(), M, K,
                  static_cast<float>(qmax), static_cast<float>(eps));
  }
  return {q, s};
}

at::Tensor rescale_rows(at::Tensor acc, at::Tensor sx, c10::optional<at::Tensor> bias, at::ScalarType out_dtype) {
  TORCH_CHECK(acc.dim() == 2 && acc.is_contiguous() && acc.scalar_type() == at::kFloat, "rescale_rows: float32 [M, N]");
  TORCH_CHECK(sx.is_contiguous() && sx.scalar_type() == at::kFloat && sx.numel() == acc.size(0), "rescale_rows: float32 s_x [M, 1]");
  const int64_t M = acc.size(0), N = acc.size(1);
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->scalar_type() == at::kFloat && bias->numel() == N, "rescale_rows: float32 bias [N]");
    b = bias->data_ptr<float>();
  }
  auto out = at::empty({M, N}, acc.options().dtype(out_dtype));
  if (out_dtype == at::kBFloat16) {
    rescale(acc.data_ptr<float>(), sx.data_ptr<float>(), b, reinterpret_cast<c10::BFloat16*>(out.data_ptr()), M, N);
  } else {
    TORCH_CHECK(out_dtype == at::kFloat, "rescale_rows: bfloat16 or float32 output");
    rescale(acc.data_ptr<float>(), sx.data_ptr<float>(), b, out.data_ptr<float>(), M, N);
  }
  return out;
}

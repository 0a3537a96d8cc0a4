// Fused CPU kernels of the integer-deployed linear (llmc/quant/int_linear.py), built on first use by
// llmc/quant/cpu_kernels.py. Each replaces a chain of PyTorch element-wise operations that makes several
// passes over memory (and, for a bfloat16 input, a slow mixed-dtype division) by one or two passes that
// the compiler vectorizes (-O3 -march=native, and -ffinite-math-only -fno-signed-zeros so that the max / min
// reductions vectorize; not -ffast-math: the division, the rounding and the products stay IEEE, no fused
// contractions but the explicit fma of the bias). Finite inputs only (a NaN or infinite activation gives unspecified codes).
//
// quantize_rows_sym: symmetric per-row (per-token) int8 codes (or, unsigned, uint8 codes + 128: oneDNN's
//   input), the same float32 operations as
//   Quantizer.fake_quant: s = max(max|x| / qmax, eps); q = round_half_even(x / s). No clamp is needed
//   (|x| <= max|x| = qmax * s up to rounding, so |x / s| < qmax + 1/2).
// quantize_rows_asym: asymmetric per-row codes as Quantizer.fake_quant computes them (range [min(x, 0),
//   max(x, 0)], s = max(range / qmax, eps), z = clamp(round(-min / s)), q = clamp(round(x / s) + z)),
//   returned shifted into int8 as q - shift with z - shift.
// rescale_rows: out[m, n] = acc[m, n] * s_x[m] (+ bias[n], fused multiply-add), float32 -> out's dtype.
// int_epilogue_rows: the int32 result of torch._int_mm with its zero-point corrections and rescale.
// fake_quant_rows: the fake-quant layers' (llmc/quant/fake_linear.py) per-row quantize-dequantize in one
//   pass, in the input's dtype: exactly Quantizer.fake_quant's float32 operations for a dynamic min/max
//   range per row (range [min(x, 0), max(x, 0)]; symmetric s = max(max(-lo, hi) / levels, eps), z = 0;
//   asymmetric s = max((hi - lo) / qmax, eps), z = clamp(round(-lo / s), qmin, qmax); then
//   x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s, rounded to bfloat16 to nearest-even).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

namespace {

template <typename T, typename Q>
void quantize_rows(const T* x, Q* q, float* s, int64_t M, int64_t K, float qmax, float eps, int32_t offset) {
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
      Q* out = q + m * K;
      for (int64_t k = 0; k < K; ++k) {
        out[k] = static_cast<Q>(static_cast<int32_t>(__builtin_rintf(f[k] / sc)) + offset);
      }
    }
  });
}

template <typename T>
void quantize_rows_asymmetric(const T* x, int8_t* q, float* s, int32_t* z, int64_t M, int64_t K, float qmax,
                              float eps, int32_t shift) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row_f(K);
    for (int64_t m = begin; m < end; ++m) {
      const T* row = x + m * K;
      float* f = row_f.data();
      float hi = 0.0f, lo = 0.0f;      // the range always holds 0: min(min x, 0), max(max x, 0)
      for (int64_t k = 0; k < K; ++k) {
        float v = static_cast<float>(row[k]);
        f[k] = v;
        hi = v > hi ? v : hi;
        lo = v < lo ? v : lo;
      }
      float sc = (hi - lo) / qmax;
      sc = sc < eps ? eps : sc;
      float zero = __builtin_rintf(-lo / sc);
      zero = zero < 0.0f ? 0.0f : (zero > qmax ? qmax : zero);
      s[m] = sc;
      z[m] = static_cast<int32_t>(zero) - shift;
      int8_t* out = q + m * K;
      for (int64_t k = 0; k < K; ++k) {
        float c = __builtin_rintf(f[k] / sc) + zero;
        c = c < 0.0f ? 0.0f : (c > qmax ? qmax : c);
        out[k] = static_cast<int8_t>(static_cast<int32_t>(c) - shift);
      }
    }
  });
}

template <typename O>
void int_epilogue(const int32_t* acc, const float* sx, const int32_t* zx, const int32_t* colterm,
                  const int32_t* zw, const int32_t* rowsum, const float* sw, const float* bias, O* out,
                  int64_t M, int64_t N) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const int32_t* r = acc + m * N;
      O* o = out + m * N;
      const int64_t zxm = zx ? zx[m] : 0, rsm = rowsum ? rowsum[m] : 0;
      const float sxm = sx[m];
      for (int64_t n = 0; n < N; ++n) {
        int64_t c = r[n];
        if (zx) c -= zxm * colterm[n];
        if (zw) c -= rsm * zw[n];
        float v = static_cast<float>(c) * sxm;
        v = v * sw[n];
        if (bias) v = v + bias[n];
        o[n] = static_cast<O>(v);
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

inline float load_f32(float v) { return v; }
inline float load_f32(uint16_t b) {        // bfloat16 bits -> float32 (exact)
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline void store_f32(float v, float* o) { *o = v; }
inline void store_f32(float v, uint16_t* o) {   // float32 -> bfloat16, round to nearest even (finite values),
  uint32_t u;                                   // as c10::BFloat16 and Tensor.to(torch.bfloat16) round
  std::memcpy(&u, &v, sizeof(u));
  u += 0x7FFFu + ((u >> 16) & 1u);
  *o = static_cast<uint16_t>(u >> 16);
}

// T: float or uint16_t (bfloat16 bits). Operation for operation the op path of Quantizer.fake_quant:
// the range, the scale (one IEEE division, clamp to eps), the zero point, then per element an IEEE
// division, round-half-even, + z, clamp, - z, * s (no contraction: -ffp-contract=off).
template <typename T>
void fake_quant_rows_impl(const T* x, T* y, int64_t M, int64_t K, float levels, float qmin, float qmax,
                          float eps, bool symmetric) {
  at::parallel_for(0, M, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> row_f(std::is_same<T, float>::value ? 0 : K);
    for (int64_t m = begin; m < end; ++m) {
      const T* row = x + m * K;
      const float* f;
      float hi = 0.0f, lo = 0.0f;      // the range always holds 0: min(min x, 0), max(max x, 0)
      if constexpr (std::is_same<T, float>::value) {
        f = row;
        for (int64_t k = 0; k < K; ++k) {
          float v = row[k];
          hi = v > hi ? v : hi;
          lo = v < lo ? v : lo;
        }
      } else {
        float* buf = row_f.data();
        for (int64_t k = 0; k < K; ++k) {
          float v = load_f32(row[k]);
          buf[k] = v;
          hi = v > hi ? v : hi;
          lo = v < lo ? v : lo;
        }
        f = buf;
      }
      float sc, zero;
      if (symmetric) {
        float amax = -lo > hi ? -lo : hi;
        sc = amax / levels;
        sc = sc < eps ? eps : sc;
        zero = 0.0f;
      } else {
        sc = (hi - lo) / qmax;
        sc = sc < eps ? eps : sc;
        zero = __builtin_rintf(-lo / sc);
        zero = zero < qmin ? qmin : (zero > qmax ? qmax : zero);
      }
      T* out = y + m * K;
      for (int64_t k = 0; k < K; ++k) {
        float c = __builtin_rintf(f[k] / sc) + zero;
        c = c < qmin ? qmin : (c > qmax ? qmax : c);
        store_f32((c - zero) * sc, out + k);
      }
    }
  });
}

}  // namespace

template <typename T>
void quantize_rows_to(const T* x, at::Tensor& q, float* s, int64_t M, int64_t K, float qmax, float eps, bool unsigned_) {
  if (unsigned_) {
    quantize_rows(x, q.data_ptr<uint8_t>(), s, M, K, qmax, eps, 128);
  } else {
    quantize_rows(x, q.data_ptr<int8_t>(), s, M, K, qmax, eps, 0);
  }
}

std::vector<at::Tensor> quantize_rows_sym(at::Tensor x, double qmax, double eps, bool unsigned_) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "quantize_rows_sym: a contiguous 2-D CPU tensor");
  const int64_t M = x.size(0), K = x.size(1);
  auto q = at::empty({M, K}, x.options().dtype(unsigned_ ? at::kByte : at::kChar));
  auto s = at::empty({M, 1}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows_to(reinterpret_cast<const c10::BFloat16*>(x.data_ptr()), q, s.data_ptr<float>(), M, K,
                     static_cast<float>(qmax), static_cast<float>(eps), unsigned_);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize_rows_sym: bfloat16 or float32 input");
    quantize_rows_to(x.data_ptr<float>(), q, s.data_ptr<float>(), M, K, static_cast<float>(qmax),
                     static_cast<float>(eps), unsigned_);
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

std::vector<at::Tensor> quantize_rows_asym(at::Tensor x, double qmax, double eps, int64_t shift) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "quantize_rows_asym: a contiguous 2-D CPU tensor");
  const int64_t M = x.size(0), K = x.size(1);
  auto q = at::empty({M, K}, x.options().dtype(at::kChar));
  auto s = at::empty({M, 1}, x.options().dtype(at::kFloat));
  auto z = at::empty({M, 1}, x.options().dtype(at::kInt));
  if (x.scalar_type() == at::kBFloat16) {
    quantize_rows_asymmetric(reinterpret_cast<const c10::BFloat16*>(x.data_ptr()), q.data_ptr<int8_t>(),
                             s.data_ptr<float>(), z.data_ptr<int32_t>(), M, K, static_cast<float>(qmax),
                             static_cast<float>(eps), static_cast<int32_t>(shift));
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "quantize_rows_asym: bfloat16 or float32 input");
    quantize_rows_asymmetric(x.data_ptr<float>(), q.data_ptr<int8_t>(), s.data_ptr<float>(), z.data_ptr<int32_t>(),
                             M, K, static_cast<float>(qmax), static_cast<float>(eps), static_cast<int32_t>(shift));
  }
  return {q, s, z};
}

// out[m, n] = ((acc[m, n] - zx[m] colterm[n] - rowsum[m] zw[n]) * sx[m]) * sw[n] (+ bias[n]): the zero-point
// corrections in int64 (exact), then the same float32 operations, in the same order, as IntLinear's op path.
at::Tensor int_epilogue_rows(at::Tensor acc, at::Tensor sx, c10::optional<at::Tensor> zx, at::Tensor colterm,
                             c10::optional<at::Tensor> zw, c10::optional<at::Tensor> rowsum, at::Tensor sw,
                             c10::optional<at::Tensor> bias, at::ScalarType out_dtype) {
  TORCH_CHECK(acc.dim() == 2 && acc.is_contiguous() && acc.scalar_type() == at::kInt, "int_epilogue_rows: int32 [M, N]");
  const int64_t M = acc.size(0), N = acc.size(1);
  auto vec = [](const c10::optional<at::Tensor>& t, int64_t n, at::ScalarType st, const char* what) -> const void* {
    if (!t.has_value() || !t->defined()) return nullptr;
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == st && t->numel() == n, "int_epilogue_rows: ", what);
    return t->data_ptr();
  };
  const float* sxp = static_cast<const float*>(vec(sx, M, at::kFloat, "float32 s_x of M values"));
  const int32_t* zxp = static_cast<const int32_t*>(vec(zx, M, at::kInt, "int32 z_x of M values"));
  const int32_t* colp = static_cast<const int32_t*>(vec(colterm, N, at::kInt, "int32 column term of N values"));
  const int32_t* zwp = static_cast<const int32_t*>(vec(zw, N, at::kInt, "int32 z_w of N values"));
  const int32_t* rsp = static_cast<const int32_t*>(vec(rowsum, M, at::kInt, "int32 row sums of M values"));
  const float* swp = static_cast<const float*>(vec(sw, N, at::kFloat, "float32 s_w of N values"));
  const float* bp = static_cast<const float*>(vec(bias, N, at::kFloat, "float32 bias of N values"));
  TORCH_CHECK(!zwp || rsp, "int_epilogue_rows: z_w needs the row sums");
  auto out = at::empty({M, N}, acc.options().dtype(out_dtype));
  if (out_dtype == at::kBFloat16) {
    int_epilogue(acc.data_ptr<int32_t>(), sxp, zxp, colp, zwp, rsp, swp, bp,
                 reinterpret_cast<c10::BFloat16*>(out.data_ptr()), M, N);
  } else {
    TORCH_CHECK(out_dtype == at::kFloat, "int_epilogue_rows: bfloat16 or float32 output");
    int_epilogue(acc.data_ptr<int32_t>(), sxp, zxp, colp, zwp, rsp, swp, bp, out.data_ptr<float>(), M, N);
  }
  return out;
}

// y = the per-row fake quantization of x [M, K] (bfloat16 or float32, contiguous), in x's dtype.
at::Tensor fake_quant_rows(at::Tensor x, double levels, double qmin, double qmax, double eps, bool symmetric) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.device().is_cpu(), "fake_quant_rows: a contiguous 2-D CPU tensor");
  const int64_t M = x.size(0), K = x.size(1);
  auto y = at::empty({M, K}, x.options());
  const float lv = static_cast<float>(levels), lo = static_cast<float>(qmin), hi = static_cast<float>(qmax),
              e = static_cast<float>(eps);
  if (x.scalar_type() == at::kBFloat16) {
    fake_quant_rows_impl(reinterpret_cast<const uint16_t*>(x.data_ptr()), reinterpret_cast<uint16_t*>(y.data_ptr()),
                         M, K, lv, lo, hi, e, symmetric);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "fake_quant_rows: bfloat16 or float32 input");
    fake_quant_rows_impl(x.data_ptr<float>(), y.data_ptr<float>(), M, K, lv, lo, hi, e, symmetric);
  }
  return y;
}

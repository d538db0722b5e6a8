// The TeaCache criterion (docs/criterion.md) for decision groups, written once for the host build and
// the CUDA kernel. runtime/criterion.py holds the Python reference that must give bit-identical
// results; tests/cpp_ext/ compares the two on random inputs.
//
// Exactness rules that both sides keep:
// - group sums in double, rows in order;
// - poly(d) by Horner in double, one rounding per multiply and per add (no fused multiply-add:
//   Python rounds each operation, so a contracted a*b+c would change decisions at the margin);
// - a ratio that is not a finite number (zero or non-finite previous sum, overflow) computes
//   and leaves acc untouched, so acc always stays a number.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TEACACHE_HD __host__ __device__ __forceinline__
#else
#include <cmath>
#define TEACACHE_HD inline
#endif

// Bumped whenever an entry point's arguments or the rule's semantics change. runtime/criterion.py
// has the same number (ABI_VERSION) and refuses a native module that reports another.
#define TEACACHE_CRITERION_ABI 1

namespace teacache {

TEACACHE_HD bool is_finite(double x) {
#if defined(__CUDA_ARCH__)
    return isfinite(x);
#else
    return std::isfinite(x);
#endif
}

TEACACHE_HD double quiet_nan() {
#if defined(__CUDA_ARCH__)
    return __longlong_as_double(0x7ff8000000000000LL);
#else
    return std::nan("");
#endif
}

// y * x + c with two roundings, on either side (the device intrinsics are never contracted).
TEACACHE_HD double mul_add_unfused(double y, double x, double c) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(__dmul_rn(y, x), c);
#else
    return y * x + c;  // the host build passes -ffp-contract=off
#endif
}

// numpy.poly1d(coefficients)(x): highest degree first.
TEACACHE_HD double horner(const double* coefficients, int32_t n, double x) {
    double y = 0.0;
    for (int32_t i = 0; i < n; ++i) y = mul_add_unfused(y, x, coefficients[i]);
    return y;
}

// manifest.ForcedSteps.is_forced: the first `first` calls, the first `fraction` of the steps,
// and the last call when `last`.
TEACACHE_HD bool is_forced(int64_t step, int64_t num_steps, int64_t first, bool last, double fraction) {
    if (step < first || step < static_cast<int64_t>(fraction * static_cast<double>(num_steps))) return true;
    return last && num_steps > 0 && step == num_steps - 1;
}

// Σ diff and Σ prev over the rows of group g, in double and in row order.
template <typename Row>
TEACACHE_HD void group_sums(const Row* l1_diff, const Row* l1_prev, const int32_t* group_of_row,
                            int64_t n_rows, int32_t g, double* sum_diff, double* sum_prev) {
    double d = 0.0, p = 0.0;
    for (int64_t r = 0; r < n_rows; ++r) {
        if (group_of_row[r] != g) continue;
        d += static_cast<double>(l1_diff[r]);
        p += static_cast<double>(l1_prev[r]);
    }
    *sum_diff = d;
    *sum_prev = p;
}

// The group's relative L1 change, NaN where there is none to use.
TEACACHE_HD double group_rel(bool has_prev, double sum_diff, double sum_prev) {
    if (!has_prev || sum_prev == 0.0 || !is_finite(sum_prev)) return quiet_nan();
    double rel = sum_diff / sum_prev;
    return is_finite(rel) ? rel : quiet_nan();
}

// One group's decision: true = compute. Updates *acc (0 after a compute).
TEACACHE_HD bool decide_group(double rel, bool forced, bool must_compute, double threshold,
                              const double* coefficients, int32_t n_coefficients, bool clamp, double* acc) {
    bool compute;
    if (forced || must_compute || rel != rel || threshold <= 0.0) {
        compute = true;
    } else {
        double y = horner(coefficients, n_coefficients, rel);
        if (clamp && y < 0.0) y = 0.0;
        *acc += y;
        compute = !(*acc < threshold);  // NaN computes, as upstream's test does
    }
    if (compute) *acc = 0.0;
    return compute;
}

}  // namespace teacache

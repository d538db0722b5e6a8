// The TeaCache criterion for decision groups, written once for the host build and the CUDA
// kernel (runtime/criterion.py's module doc states the rule). runtime/criterion.py holds the
// Python reference that must give bit-identical results; tests/cpp_ext/ compares the two on
// random inputs.
//
// Exactness rules that both sides keep:
// - group sums in double, rows in order;
// - every operation rounded once, in the order Python evaluates it (no fused multiply-add:
//   Python rounds each operation, so a contracted a*b+c would change decisions at the margin);
// - a ratio that is not a finite number (zero or non-finite denominator, overflow) computes
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
#define TEACACHE_CRITERION_ABI 2

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

TEACACHE_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dmul_rn(a, b);
#else
    return a * b;
#endif
}

TEACACHE_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __ddiv_rn(a, b);
#else
    return a / b;
#endif
}

TEACACHE_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
    return __dadd_rn(a, b);
#else
    return a + b;
#endif
}

TEACACHE_HD double absolute(double x) {
#if defined(__CUDA_ARCH__)
    return fabs(x);
#else
    return std::fabs(x);
#endif
}

// numpy.poly1d(coefficients)(x): highest degree first.
TEACACHE_HD double horner(const double* coefficients, int32_t n, double x) {
    double y = 0.0;
    for (int32_t i = 0; i < n; ++i) y = mul_add_unfused(y, x, coefficients[i]);
    return y;
}

// Call `step` of `num_steps` (counting the cache context's own calls) always computes: the
// first `first` calls, the calls below fraction * num_steps (compared in floating point, so the
// first ceil(fraction * num_steps)), and the last call when `last`.
TEACACHE_HD bool is_forced(int64_t step, int64_t num_steps, int64_t first, bool last, double fraction) {
    if (step < first || static_cast<double>(step) < mul_rn(fraction, static_cast<double>(num_steps))) return true;
    return last && num_steps > 0 && step == num_steps - 1;
}

// Σ diff and Σ prev over the rows of group g, in double and in row order.
template <typename Row>
TEACACHE_HD void group_sums(const Row* l1_diff, const Row* l1_prev, const int32_t* group_of_row,
                            int64_t n_rows, int32_t g, double* sum_diff, double* sum_prev) {
    double d = 0.0, p = 0.0;
    for (int64_t r = 0; r < n_rows; ++r) {
        if (group_of_row[r] != g) continue;
        d = add_rn(d, static_cast<double>(l1_diff[r]));
        p = add_rn(p, static_cast<double>(l1_prev[r]));
    }
    *sum_diff = d;
    *sum_prev = p;
}

// The group's relative change, NaN where there is none to use:
//   eps == 0: sum_diff / sum_prev (the ratio of the means, exactly as computed before eps existed);
//   eps > 0:  (sum_diff / elements) / (sum_prev / elements + eps).
TEACACHE_HD double group_rel(bool has_prev, double sum_diff, double sum_prev, double elements, double eps) {
    if (!has_prev) return quiet_nan();
    double rel;
    if (eps == 0.0) {
        if (sum_prev == 0.0 || !is_finite(sum_prev)) return quiet_nan();
        rel = div_rn(sum_diff, sum_prev);
    } else {
        if (!(elements > 0.0)) return quiet_nan();
        const double den = add_rn(div_rn(sum_prev, elements), eps);
        if (den == 0.0 || !is_finite(den)) return quiet_nan();
        rel = div_rn(div_rn(sum_diff, elements), den);
    }
    return is_finite(rel) ? rel : quiet_nan();
}

// The constants of one generation that every group's decision reads.
struct RuleKnobs {
    const double* coefficients;  // numpy.poly1d order
    int32_t n_coefficients;
    bool clamp;                  // poly(d) below 0 counts as 0
    bool accumulate_abs;         // acc += |poly(d)| instead of acc += poly(d)
};

// One group's decision: true = compute. Updates *acc (0 after a compute).
TEACACHE_HD bool decide_group(double rel, bool forced, bool must_compute, double threshold, const RuleKnobs& k,
                              double* acc) {
    bool compute;
    if (forced || must_compute || rel != rel || threshold <= 0.0) {
        compute = true;
    } else {
        double y = horner(k.coefficients, k.n_coefficients, rel);
        if (k.clamp && y < 0.0) y = 0.0;
        if (k.accumulate_abs) y = absolute(y);
        *acc = add_rn(*acc, y);
        compute = !(*acc < threshold);  // NaN computes, as upstream's test does
    }
    if (compute) *acc = 0.0;
    return compute;
}

}  // namespace teacache

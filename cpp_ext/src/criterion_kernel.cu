// The criterion on the device: one small kernel reads the embed graph's per-row sums where they
// were written and leaves the decision in device memory, so no step waits for the host.
// Built as a plain shared library (static CUDA runtime, no Python, no torch) and called through
// ctypes with raw device pointers and a raw stream handle, so it works with any torch build.
#include <cuda_runtime.h>

#include <cstddef>

#include "teacache_criterion.h"
#include "teacache_criterion_cuda.h"

namespace teacache {

constexpr int kThreads = 32;  // groups are batch rows at most: one warp, a loop past 32

__global__ void decide_kernel(DeviceDecideArgs a) {
    // Every thread reads the step before thread 0 may advance it below.
    const int64_t step = a.step_info[0];
    const int64_t num_steps = a.step_info[1];
    const bool has_prev = *a.has_prev != 0;
    const bool forced = is_forced(step, num_steps, a.forced_first, a.forced_last != 0, a.forced_first_fraction);
    const bool record = a.history_flags != nullptr && step < a.history_len;
    const RuleKnobs knobs{a.coefficients, a.n_coefficients, a.clamp != 0, a.accumulate_abs != 0};
    for (int32_t g = threadIdx.x; g < a.n_groups; g += blockDim.x) {
        double sum_diff, sum_prev;
        group_sums(a.l1_diff, a.l1_prev, a.group_of_row, a.n_rows, g, &sum_diff, &sum_prev);
        const double rel = group_rel(has_prev, sum_diff, sum_prev, a.group_elements[g], a.eps);
        const bool compute = decide_group(rel, forced, a.must_compute[g] != 0, a.thresholds[g], knobs, &a.acc[g]);
        a.compute_flags[g] = compute;
        a.rel[g] = rel;
        if (record) {
            a.history_flags[step * a.n_groups + g] = compute;
            a.history_rel[step * a.n_groups + g] = rel;
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t any = 0;
        for (int32_t g = 0; g < a.n_groups; ++g) any |= a.compute_flags[g];
        *a.any_compute = any;
        if (a.advance) {
            a.step_info[0] = step + 1;
            *a.has_prev = 1;
        }
    }
}

}  // namespace teacache

extern "C" {

int teacache_criterion_abi() { return TEACACHE_CRITERION_ABI; }

int teacache_decide_args_layout(int64_t* out, int n) {
    using A = teacache::DeviceDecideArgs;
    const int64_t layout[] = {
        sizeof(A), offsetof(A, l1_diff), offsetof(A, l1_prev), offsetof(A, group_of_row), offsetof(A, n_rows),
        offsetof(A, n_groups), offsetof(A, acc), offsetof(A, thresholds), offsetof(A, coefficients),
        offsetof(A, n_coefficients), offsetof(A, step_info), offsetof(A, has_prev), offsetof(A, must_compute),
        offsetof(A, compute_flags), offsetof(A, rel), offsetof(A, any_compute), offsetof(A, history_flags),
        offsetof(A, history_rel), offsetof(A, history_len), offsetof(A, forced_first_fraction),
        offsetof(A, forced_first), offsetof(A, forced_last), offsetof(A, clamp), offsetof(A, advance),
        offsetof(A, group_elements), offsetof(A, eps), offsetof(A, accumulate_abs)};
    const int count = static_cast<int>(sizeof(layout) / sizeof(layout[0]));
    for (int i = 0; i < count && i < n; ++i) out[i] = layout[i];
    return count;
}

const char* teacache_launch_decide(const teacache::DeviceDecideArgs* args, std::uintptr_t stream) {
    teacache::decide_kernel<<<1, teacache::kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(*args);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

int teacache_cuda_runtime_version() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
}

int teacache_cuda_driver_version() {
    int v = 0;
    return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

}  // extern "C"

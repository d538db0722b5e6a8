// The device criterion's C interface (no CUDA headers, no Python): runtime/experimental/device_criterion.py
// loads the library with ctypes and mirrors DeviceDecideArgs as a ctypes.Structure, whose size
// and field offsets it checks against teacache_decide_args_layout() before the first launch.
#pragma once

#include <cstdint>

namespace teacache {

// Everything one launch reads and writes; every pointer is device memory of the current device.
struct DeviceDecideArgs {
    const float* l1_diff;         // [n_rows] the embed graph's per-row sums (fp32)
    const float* l1_prev;         // [n_rows]
    const int32_t* group_of_row;  // [n_rows]
    int64_t n_rows;
    int32_t n_groups;
    double* acc;                  // [n_groups] in/out
    const double* thresholds;     // [n_groups]
    const double* coefficients;   // [n_coefficients] numpy.poly1d order
    int32_t n_coefficients;
    int64_t* step_info;           // [2]: step (advanced when `advance`), num_steps
    uint8_t* has_prev;            // scalar; set to 1 when `advance`
    const uint8_t* must_compute;  // [n_groups]
    uint8_t* compute_flags;       // [n_groups] out
    double* rel;                  // [n_groups] out, NaN where no ratio was usable
    int32_t* any_compute;         // scalar out: 1 when some group computes (the blocks must run)
    uint8_t* history_flags;       // [history_len * n_groups] out at row `step`, or null
    double* history_rel;          // [history_len * n_groups] out at row `step`, or null
    int64_t history_len;
    double forced_first_fraction;
    int64_t forced_first;
    int32_t forced_last;
    int32_t clamp;
    int32_t advance;              // after deciding: step += 1 and has_prev = 1 (a replayed graph's counter)
    const double* group_elements; // [n_groups] signal elements of each group (the means' denominators)
    double eps;                   // d = mean|s - s_prev| / (mean|s_prev| + eps)
    int32_t accumulate_abs;       // acc += |poly(d)| instead of acc += poly(d)
};

}  // namespace teacache

#define TEACACHE_EXPORT __attribute__((visibility("default")))  // the build hides everything else

extern "C" {
// TEACACHE_CRITERION_ABI of the build.
TEACACHE_EXPORT int teacache_criterion_abi();
// Writes sizeof(DeviceDecideArgs) then each field's offset, in declaration order, into out[0..n);
// returns how many values the layout has (write nothing past n).
TEACACHE_EXPORT int teacache_decide_args_layout(int64_t* out, int n);
// Enqueues the decision on `stream` (a cudaStream_t as an integer; 0 = the legacy default
// stream). Returns null on success, else the CUDA error string. Never synchronises.
TEACACHE_EXPORT const char* teacache_launch_decide(const teacache::DeviceDecideArgs* args, std::uintptr_t stream);
// The CUDA runtime version this library was built with, and the driver's (0 without a driver).
TEACACHE_EXPORT int teacache_cuda_runtime_version();
TEACACHE_EXPORT int teacache_cuda_driver_version();
}

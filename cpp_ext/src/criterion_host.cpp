// teacache_trt._criterion: decide_groups on host (numpy) buffers, the same arithmetic the CUDA
// kernel runs. runtime/criterion.py converts and checks the arguments before calling; the
// checks here only guard memory (sizes, group indices), never semantics.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "teacache_criterion.h"

namespace py = pybind11;

namespace {

template <typename T>
using Vec = py::array_t<T, py::array::c_style>;  // no forcecast: a wrong dtype is an error, not a copy

void need(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("teacache_trt._criterion.decide_groups: " + what);
}

py::tuple decide_groups(Vec<double> l1_diff, Vec<double> l1_prev, Vec<int32_t> group_of_row, int32_t n_groups,
                        Vec<double> acc, int64_t step, int64_t num_steps, Vec<double> thresholds,
                        Vec<double> coefficients, bool clamp, int64_t forced_first, bool forced_last,
                        double forced_first_fraction, bool has_prev, Vec<uint8_t> must_compute) {
    const int64_t rows = group_of_row.size();
    need(l1_diff.size() == rows && l1_prev.size() == rows, "l1_diff, l1_prev and group_of_row differ in length");
    need(n_groups >= 1 && acc.size() == n_groups && thresholds.size() == n_groups &&
             must_compute.size() == n_groups, "acc, thresholds and must_compute need n_groups values");
    need(coefficients.size() >= 1, "coefficients are empty");
    const int32_t* groups = group_of_row.data();
    for (int64_t r = 0; r < rows; ++r) need(groups[r] >= 0 && groups[r] < n_groups, "group index out of range");

    double* acc_ = acc.mutable_data();
    Vec<uint8_t> flags(n_groups);
    Vec<double> rels(n_groups);
    uint8_t* flags_ = flags.mutable_data();
    double* rels_ = rels.mutable_data();
    const bool forced = teacache::is_forced(step, num_steps, forced_first, forced_last, forced_first_fraction);
    for (int32_t g = 0; g < n_groups; ++g) {
        double sum_diff, sum_prev;
        teacache::group_sums(l1_diff.data(), l1_prev.data(), groups, rows, g, &sum_diff, &sum_prev);
        const double rel = teacache::group_rel(has_prev, sum_diff, sum_prev);
        flags_[g] = teacache::decide_group(rel, forced, must_compute.data()[g] != 0, thresholds.data()[g],
                                           coefficients.data(), static_cast<int32_t>(coefficients.size()),
                                           clamp, &acc_[g]);
        rels_[g] = rel;
    }
    return py::make_tuple(flags, rels);
}

}  // namespace

PYBIND11_MODULE(_criterion, m) {
    m.doc() = "TeaCache criterion for decision groups (cpp_ext host build); see runtime/criterion.py";
    m.attr("ABI_VERSION") = TEACACHE_CRITERION_ABI;
    m.def("decide_groups", &decide_groups, py::arg("l1_diff"), py::arg("l1_prev"), py::arg("group_of_row"),
          py::arg("n_groups"), py::arg("acc").noconvert(), py::arg("step"), py::arg("num_steps"), py::arg("thresholds"),
          py::arg("coefficients"), py::arg("clamp"), py::arg("forced_first"), py::arg("forced_last"),
          py::arg("forced_first_fraction"), py::arg("has_prev"), py::arg("must_compute"));
}

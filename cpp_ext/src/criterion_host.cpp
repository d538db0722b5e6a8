// teacache_trt._criterion: the criterion on host (numpy) buffers, the same arithmetic the CUDA
// kernel runs. runtime/criterion.py checks a generation's constants once (its Rule, which holds
// one of these Rule objects) and converts nothing per call; the checks here only guard memory
// (sizes, group indices), never semantics.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "teacache_criterion.h"

namespace py = pybind11;

namespace {

template <typename T>
using Vec = py::array_t<T, py::array::c_style>;  // no forcecast: a wrong dtype is an error, not a copy

void need(bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("teacache_trt._criterion: " + what);
}

template <typename T>
std::vector<T> copy(const Vec<T>& a) {
    need(a.ndim() == 1, "rule arrays must be 1-D");
    return std::vector<T>(a.data(), a.data() + a.size());
}

// A generation's constants, copied once (runtime/criterion.py: Rule).
struct Rule {
    std::vector<double> coefficients, thresholds, group_elements;
    std::vector<int32_t> group_of_row;
    int32_t n_groups;
    int64_t num_steps, forced_first;
    bool forced_last;
    double forced_fraction;
    bool accumulate_abs;
    double eps;
    bool clamp;

    Rule(Vec<double> coefficients_, Vec<double> thresholds_, Vec<int32_t> group_of_row_, Vec<double> group_elements_,
         int32_t n_groups_, int64_t num_steps_, int64_t forced_first_, bool forced_last_, double forced_fraction_,
         bool accumulate_abs_, double eps_, bool clamp_)
        : coefficients(copy(coefficients_)), thresholds(copy(thresholds_)), group_elements(copy(group_elements_)),
          group_of_row(copy(group_of_row_)), n_groups(n_groups_), num_steps(num_steps_), forced_first(forced_first_),
          forced_last(forced_last_), forced_fraction(forced_fraction_), accumulate_abs(accumulate_abs_), eps(eps_),
          clamp(clamp_) {
        need(n_groups >= 1 && static_cast<int64_t>(thresholds.size()) == n_groups &&
                 static_cast<int64_t>(group_elements.size()) == n_groups,
             "thresholds and group_elements need n_groups values");
        need(!coefficients.empty(), "coefficients are empty");
        for (int32_t g : group_of_row) need(g >= 0 && g < n_groups, "group index out of range");
    }
};

template <typename Sum>
py::tuple decide_groups(const Rule& rule, Vec<Sum> l1_diff, Vec<Sum> l1_prev, Vec<double> acc, int64_t step,
                        bool has_prev, Vec<uint8_t> must_compute) {
    const int64_t rows = static_cast<int64_t>(rule.group_of_row.size());
    const int32_t n_groups = rule.n_groups;
    need(l1_diff.ndim() == 1 && l1_prev.ndim() == 1 && l1_diff.size() == rows && l1_prev.size() == rows,
         "l1_diff and l1_prev need one value per row of the rule");
    need(acc.ndim() == 1 && acc.size() == n_groups && must_compute.ndim() == 1 && must_compute.size() == n_groups,
         "acc and must_compute need n_groups values");
    need(step >= 0, "step must be >= 0");

    double* acc_ = acc.mutable_data();  // throws for a read-only array
    Vec<uint8_t> flags(n_groups);
    Vec<double> rels(n_groups);
    uint8_t* flags_ = flags.mutable_data();
    double* rels_ = rels.mutable_data();
    const teacache::RuleKnobs knobs{rule.coefficients.data(), static_cast<int32_t>(rule.coefficients.size()),
                                    rule.clamp, rule.accumulate_abs};
    const bool forced = teacache::is_forced(step, rule.num_steps, rule.forced_first, rule.forced_last,
                                            rule.forced_fraction);
    for (int32_t g = 0; g < n_groups; ++g) {
        double sum_diff, sum_prev;
        teacache::group_sums(l1_diff.data(), l1_prev.data(), rule.group_of_row.data(), rows, g, &sum_diff, &sum_prev);
        const double rel = teacache::group_rel(has_prev, sum_diff, sum_prev, rule.group_elements[g], rule.eps);
        flags_[g] = teacache::decide_group(rel, forced, must_compute.data()[g] != 0, rule.thresholds[g], knobs,
                                           &acc_[g]);
        rels_[g] = rel;
    }
    return py::make_tuple(flags, rels);
}

}  // namespace

PYBIND11_MODULE(_criterion, m) {
    m.doc() = "TeaCache criterion for decision groups (cpp_ext host build); see runtime/criterion.py";
    m.attr("ABI_VERSION") = TEACACHE_CRITERION_ABI;
    py::class_<Rule>(m, "Rule")
        .def(py::init<Vec<double>, Vec<double>, Vec<int32_t>, Vec<double>, int32_t, int64_t, int64_t, bool, double,
                      bool, double, bool>(),
             py::arg("coefficients"), py::arg("thresholds"), py::arg("group_of_row"), py::arg("group_elements"),
             py::arg("n_groups"), py::arg("num_steps"), py::arg("forced_first"), py::arg("forced_last"),
             py::arg("forced_fraction"), py::arg("accumulate_abs"), py::arg("eps"), py::arg("clamp"));
    // The sums come as the graph wrote them (fp32) or as fp64; neither is converted.
    m.def("decide_groups", &decide_groups<float>, py::arg("rule"), py::arg("l1_diff").noconvert(),
          py::arg("l1_prev").noconvert(), py::arg("acc").noconvert(), py::arg("step"), py::arg("has_prev"),
          py::arg("must_compute").noconvert());
    m.def("decide_groups", &decide_groups<double>, py::arg("rule"), py::arg("l1_diff").noconvert(),
          py::arg("l1_prev").noconvert(), py::arg("acc").noconvert(), py::arg("step"), py::arg("has_prev"),
          py::arg("must_compute").noconvert());
}

// The optimizer half of pyallreduce._C (the fused LARS step).
#pragma once

#include <pybind11/pybind11.h>

namespace pyallreduce {

void bind_optim(pybind11::module_& m);

}  // namespace pyallreduce

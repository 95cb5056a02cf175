// polarkernels._C: the Python binding of the launcher in launch.cu (no torch headers needed;
// pybind11 comes with torch's include directories). Built only by setup.py.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

const char* pk_launch(const char* name, int device, unsigned grid, unsigned block, unsigned smem,
                      unsigned long long stream, unsigned long long params);

namespace {

void launch(const std::string& name, int device, unsigned grid, unsigned block, unsigned smem,
            unsigned long long stream, unsigned long long params) {
  if (const char* err = pk_launch(name.c_str(), device, grid, block, smem, stream, params))
    throw std::runtime_error("polarkernels._C.launch(" + name + "): " + err);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "polarkernels CUDA kernels (csrc/), launched by name with a device parameter block";
  m.def("launch", &launch, "launch(name, device, grid, block, smem, stream, params)");
}

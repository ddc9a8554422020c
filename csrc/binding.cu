// fastscale._C: the torch-free pybind11 binding of csrc/. Python passes device pointers and the CUDA
// stream as integers (ops/cross_entropy_cuda.py validates the tensors behind them); this layer checks
// that a device exists, then the plain arguments, then launches on the caller's device and stream.
// The CUDA runtime is linked statically (setup.py picks the toolkit matching torch's CUDA where torch
// has one), so a driver older than that runtime is the likely reason for "no device" on a machine
// with a GPU: the error then names both versions (no_device_message).
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cross_entropy.h"

namespace py = pybind11;

namespace {

using fastscale::CrossEntropyArgs;
using fastscale::DType;

std::string cuda_version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

// Why cudaGetDeviceCount failed, in words a user can act on: no driver at all, a driver older than
// the runtime compiled in (the usual cause with a GPU present), or else the runtime's own error.
std::string no_device_message(const std::string& error_name, const std::string& error_text, int driver, int runtime) {
  std::string message = "fastscale._C: no CUDA device is available (cudaGetDeviceCount: " + error_name + ": " + error_text + ")";
  if (driver == 0)
    return message + "; no NVIDIA driver was found (cudaDriverGetVersion: 0), so no GPU can be used: if this machine has one, install an NVIDIA driver for CUDA " +
           cuda_version_text(runtime) + " or newer";
  if (driver < runtime)
    return message + "; the NVIDIA driver supports CUDA up to " + cuda_version_text(driver) + " (cudaDriverGetVersion: " +
           std::to_string(driver) + ") but fastscale._C was compiled with the CUDA " + cuda_version_text(runtime) +
           " runtime (" + std::to_string(runtime) + "): update the driver to one for CUDA " + cuda_version_text(runtime) +
           " or newer, or reinstall fastscale with CUDA_HOME set to a CUDA toolkit no newer than " +
           cuda_version_text(driver);
  return message;
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) version = 0;
  return version;
}

// The number of CUDA devices; an error that says why if there are none.
int require_cuda_device() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so that a later call starts clean
    throw std::runtime_error(no_device_message(cudaGetErrorName(err), cudaGetErrorString(err), driver_version(), CUDART_VERSION));
  }
  if (count == 0)
    throw std::runtime_error("fastscale._C: no CUDA device is available (cudaGetDeviceCount: 0 devices)");
  return count;
}

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("fastscale._C: ") + what + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the launch (the caller's tensors may live on another device than the
// current one) and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

[[noreturn]] void invalid(const std::string& name, const std::string& value, const std::string& expected) {
  throw py::value_error("fastscale._C: " + name + "=" + value + ": expected " + expected);
}

void check_range(const char* name, int64_t value, int64_t low, int64_t high) {
  if (value < low || value > high)
    invalid(name, std::to_string(value), "an integer in [" + std::to_string(low) + ", " + std::to_string(high) + "]");
}

void check_pointer(const char* name, uintptr_t pointer, size_t alignment) {
  if (pointer == 0) invalid(name, "0", "a device pointer");
  if (pointer % alignment != 0)
    invalid(name, std::to_string(pointer), "a pointer aligned to " + std::to_string(alignment) + " bytes");
}

void check_float(const char* name, float value, float low, float high) {
  if (!(value >= low && value <= high))  // also rejects NaN
    invalid(name, std::to_string(value), "a number in [" + std::to_string(low) + ", " + std::to_string(high) + "]");
}

size_t element_size(int dtype) {
  switch (static_cast<DType>(dtype)) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16:
    case DType::kFloat16: return 2;
  }
  invalid("dtype", std::to_string(dtype), "0 (float32), 1 (bfloat16) or 2 (float16)");
}

struct Call {
  uintptr_t logits;
  int dtype;
  int64_t rows, vocab, row_stride;
  uintptr_t targets, loss, lse, workspace;
  int splits;
  int64_t ignore_index;
  float label_smoothing, z_loss, softcap;
  uintptr_t token_grad;
  int device;
  uintptr_t stream;
};

CrossEntropyArgs validated(const Call& c, bool backward, int devices) {
  check_range("device", c.device, 0, devices - 1);
  const size_t size = element_size(c.dtype);
  check_range("rows", c.rows, 0, INT32_MAX);  // one block per row along gridDim.x
  check_range("vocab", c.vocab, 1, INT64_MAX / 2);
  check_range("row_stride", c.row_stride, c.vocab, INT64_MAX / 2);
  check_range("splits", c.splits, 1, fastscale::kMaxSplits);
  check_float("label_smoothing", c.label_smoothing, 0.f, 1.f);
  check_float("z_loss", c.z_loss, 0.f, INFINITY);
  check_float("softcap", c.softcap, 0.f, INFINITY);
  if (c.rows > 0) {
    check_pointer("logits", c.logits, size);
    check_pointer("targets", c.targets, sizeof(int64_t));
    check_pointer("loss", c.loss, sizeof(float));
    check_pointer("lse", c.lse, sizeof(float));
    check_pointer("workspace", c.workspace, sizeof(float));
    if (backward) check_pointer("token_grad", c.token_grad, sizeof(float));
  }
  return CrossEntropyArgs{
      reinterpret_cast<void*>(c.logits), static_cast<DType>(c.dtype), c.rows, c.vocab, c.row_stride,
      reinterpret_cast<const int64_t*>(c.targets), reinterpret_cast<float*>(c.loss),
      reinterpret_cast<float*>(c.lse), reinterpret_cast<float*>(c.workspace), c.splits, c.ignore_index,
      c.label_smoothing, c.z_loss, c.softcap, reinterpret_cast<const float*>(c.token_grad),
      reinterpret_cast<cudaStream_t>(c.stream)};
}

void run(const Call& call, bool backward) {
  const CrossEntropyArgs args = validated(call, backward, require_cuda_device());
  const DeviceGuard guard(call.device);
  py::gil_scoped_release no_gil;
  if (backward) fastscale::cross_entropy_backward(args);
  else fastscale::cross_entropy_forward(args);
}

void forward(uintptr_t logits, int dtype, int64_t rows, int64_t vocab, int64_t row_stride, uintptr_t targets,
             uintptr_t loss, uintptr_t lse, uintptr_t workspace, int splits, int64_t ignore_index,
             float label_smoothing, float z_loss, float softcap, int device, uintptr_t stream) {
  run(Call{logits, dtype, rows, vocab, row_stride, targets, loss, lse, workspace, splits, ignore_index,
           label_smoothing, z_loss, softcap, 0, device, stream},
      false);
}

void backward(uintptr_t logits, int dtype, int64_t rows, int64_t vocab, int64_t row_stride, uintptr_t targets,
              uintptr_t token_grad, uintptr_t loss, uintptr_t lse, uintptr_t workspace, int splits,
              int64_t ignore_index, float label_smoothing, float z_loss, float softcap, int device, uintptr_t stream) {
  run(Call{logits, dtype, rows, vocab, row_stride, targets, loss, lse, workspace, splits, ignore_index,
           label_smoothing, z_loss, softcap, token_grad, device, stream},
      true);
}

py::dict cuda_versions() {
  int runtime = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) runtime = 0;
  py::dict versions;
  versions["runtime_compiled"] = CUDART_VERSION;
  versions["runtime"] = runtime;
  versions["driver"] = driver_version();
  return versions;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastscale's CUDA kernels (csrc/), torch-free: tensors are passed as device pointers.";
  m.attr("FLOAT32") = static_cast<int>(DType::kFloat32);
  m.attr("BFLOAT16") = static_cast<int>(DType::kBFloat16);
  m.attr("FLOAT16") = static_cast<int>(DType::kFloat16);
  m.attr("MAX_SPLITS") = fastscale::kMaxSplits;
  m.def("cross_entropy_forward", &forward, py::kw_only(), py::arg("logits"), py::arg("dtype"), py::arg("rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("targets"), py::arg("loss"), py::arg("lse"),
        py::arg("workspace"), py::arg("splits"), py::arg("ignore_index"), py::arg("label_smoothing"),
        py::arg("z_loss"), py::arg("softcap"), py::arg("device"), py::arg("stream"),
        "Per-row loss and logsumexp of a [rows, vocab] logits chunk (see csrc/cross_entropy.h). "
        "Pointers are integers; workspace holds 3 * splits * rows float32; softcap 0 means none.");
  m.def("cross_entropy_backward", &backward, py::kw_only(), py::arg("logits"), py::arg("dtype"), py::arg("rows"),
        py::arg("vocab"), py::arg("row_stride"), py::arg("targets"), py::arg("token_grad"), py::arg("loss"),
        py::arg("lse"), py::arg("workspace"), py::arg("splits"), py::arg("ignore_index"),
        py::arg("label_smoothing"), py::arg("z_loss"), py::arg("softcap"), py::arg("device"), py::arg("stream"),
        "As cross_entropy_forward, then overwrites the logits in place with token_grad * d loss / d logits.");
  m.def("cuda_versions", &cuda_versions,
        "CUDA versions as integers (1000 * major + 10 * minor): runtime_compiled (CUDART_VERSION of the "
        "toolkit it was built with), runtime (the linked runtime) and driver (the newest CUDA the "
        "installed driver supports; 0 without a driver).");
  m.def("device_count", &require_cuda_device,
        "The number of CUDA devices; raises the error every entry point raises when there is none, "
        "naming a missing or too old driver (fastscale doctor reports it).");
  m.def("no_device_message", &no_device_message, py::kw_only(), py::arg("error_name"), py::arg("error_text"),
        py::arg("driver"), py::arg("runtime"),
        "The error text raised when cudaGetDeviceCount fails, for these versions (exposed for tests and "
        "fastscale doctor).");
}

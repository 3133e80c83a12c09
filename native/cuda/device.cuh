// Device discovery that never throws or aborts: with no driver, no GPU or a broken install it returns 0 devices
// and the reason (the CUDA runtime's error string), so callers can fall back to the CPU.
#pragma once
#include <string>

#include "common.cuh"

namespace undo {
namespace cuda {

struct DeviceInfo {
  int count = 0;            // devices visible (0 on any error)
  std::string reason;       // why count is 0 ("" when count > 0)
  std::string name;         // device 0 (or the current device)
  int device = -1;          // the current device
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_mem = 0;
  size_t free_mem = 0;
  int driver_version = 0, runtime_version = 0;
  bool kernels_run = false;  // whether this build's kernels have an image (SASS or PTX) this device can run
};

// Number of devices, or 0 with *reason set. Clears the error it caught (it is not sticky).
int device_count(std::string* reason);
DeviceInfo device_info();
// Runs a tiny kernel on the current device and checks its result; false with *reason on any failure
// (e.g. "no kernel image is available for execution on the device" on a GPU older than sm_90).
bool device_self_test(std::string* reason);
std::string error_string(cudaError_t e);

}  // namespace cuda
}  // namespace undo

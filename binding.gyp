{
  # The CPU addon. Each kernel family in native/cpu is compiled three times, once per instruction set
  # (static libraries undo_kernels_generic / _avx2 / _avx512); cpu_features.cc picks one at run time.
  # native/cpu/matmul_bf16.cc (the AVX512-BF16 GEMM) is compiled once more, alone, with -mavx512bf16 and runs
  # only where cpuid reports the extension. Nothing here uses -march=native, so the build runs on any x86-64 CPU.
  "variables": {
    "kernel_sources": [
      "native/cpu/matmul.cc",
      "native/cpu/attention.cc",
      "native/cpu/rmsnorm.cc",
      "native/cpu/layernorm.cc",
      "native/cpu/rope.cc",
      "native/cpu/glu.cc",
      "native/cpu/embedding.cc",
      "native/cpu/cross_entropy.cc",
      "native/cpu/adamw.cc",
      "native/cpu/kd_losses.cc"
    ],
    "common_cflags": ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas"]
  },
  "target_defaults": {
    "cflags!": ["-fno-exceptions", "-O2", "-O0"],
    "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17", "-std=gnu++14"],
    "cflags_cc": ["-std=c++17", "-fexceptions"],
    "include_dirs": ["native/cpu"]
  },
  "targets": [
    {
      "target_name": "undo_kernels_generic",
      "type": "static_library",
      "sources": ["<@(kernel_sources)"],
      "defines": ["UNDO_ISA=generic", "UNDO_ISA_ID=0"],
      "cflags": ["<@(common_cflags)"]
    },
    {
      "target_name": "undo_kernels_avx2",
      "type": "static_library",
      "sources": ["<@(kernel_sources)"],
      "defines": ["UNDO_ISA=avx2", "UNDO_ISA_ID=1"],
      "cflags": ["<@(common_cflags)", "-mavx2", "-mfma", "-mf16c"]
    },
    {
      "target_name": "undo_kernels_avx512",
      "type": "static_library",
      "sources": ["<@(kernel_sources)"],
      "defines": ["UNDO_ISA=avx512", "UNDO_ISA_ID=2"],
      "cflags": ["<@(common_cflags)", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma", "-mf16c", "-mprefer-vector-width=512"]
    },
    {
      "target_name": "undo_kernels_bf16",
      "type": "static_library",
      "sources": ["native/cpu/matmul_bf16.cc"],
      "cflags": ["<@(common_cflags)", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mavx2", "-mfma", "-mprefer-vector-width=512"]
    },
    {
      "target_name": "undo_native",
      "sources": [
        "native/cpu/cpu_features.cc",
        "native/cpu/model.cc",
        "native/cpu/random.cc",
        "native/cpu/noise.cc",
        "native/napi/addon.cc"
      ],
      "dependencies": ["undo_kernels_generic", "undo_kernels_avx2", "undo_kernels_avx512", "undo_kernels_bf16"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags": ["<@(common_cflags)"],
      "ldflags": ["-fopenmp"]
    }
  ]
}

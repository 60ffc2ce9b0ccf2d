{
  "targets": [
    {
      "target_name": "cubefs_native",
      "sources": ["native/addon.cc", "native/fuse/allocator.cc", "native/fuse/session.cc",
                  "native/pool/pool.cc", "native/pool/pool_js.cc", "native/pool/rdma_probe.cc",
                  "native/rdma/rdma.cc", "native/store/punch_hole.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "cflags": ["<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)", "-libverbs", "-lrdmacm"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-fexceptions"]
    }
  ]
}

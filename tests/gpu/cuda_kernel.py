#!/usr/bin/env python3
"""Run inside a box on a real GPU: a CUDA driver-API program that launches a kernel.

No compiler and no CUDA toolkit: the kernel is PTX text, JIT-compiled by the driver
(cuModuleLoadData, libnvidia-ptxjitcompiler), launched on 1024 threads, and its output
copied back and checked.  Prints JSON; exits 1 on any CUDA error.
"""

import ctypes
import json
import sys

PTX = b"""
.version 7.0
.target sm_50
.address_size 64
.visible .entry fill(.param .u64 out, .param .u32 n)
{
    .reg .pred %p;
    .reg .b32 %r<6>;
    .reg .b64 %rd<5>;
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r2, %r2, %r3, %r4;
    setp.ge.u32 %p, %r2, %r1;
    @%p bra DONE;
    cvta.to.global.u64 %rd2, %rd1;
    mul.wide.u32 %rd3, %r2, 4;
    add.s64 %rd4, %rd2, %rd3;
    mul.lo.u32 %r5, %r2, 2;
    st.global.u32 [%rd4], %r5;
DONE:
    ret;
}
\0"""

N = 1024
cuda = ctypes.CDLL("libcuda.so.1")


def check(name, status):
    if status != 0:
        text = ctypes.c_char_p()
        cuda.cuGetErrorString(status, ctypes.byref(text))
        print(json.dumps({"failed": name, "status": status,
                          "error": (text.value or b"?").decode()}))
        sys.exit(1)


check("cuInit", cuda.cuInit(0))
count = ctypes.c_int()
check("cuDeviceGetCount", cuda.cuDeviceGetCount(ctypes.byref(count)))
dev = ctypes.c_int()
check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(dev), 0))
name = ctypes.create_string_buffer(256)
check("cuDeviceGetName", cuda.cuDeviceGetName(name, 256, dev))
ctx = ctypes.c_void_p()
check("cuCtxCreate", cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev))
module = ctypes.c_void_p()
check("cuModuleLoadData", cuda.cuModuleLoadData(ctypes.byref(module), PTX))
func = ctypes.c_void_p()
check("cuModuleGetFunction", cuda.cuModuleGetFunction(ctypes.byref(func), module, b"fill"))
buf = ctypes.c_uint64()
check("cuMemAlloc", cuda.cuMemAlloc_v2(ctypes.byref(buf), N * 4))
n = ctypes.c_uint32(N)
params = (ctypes.c_void_p * 2)(ctypes.addressof(buf), ctypes.addressof(n))
check("cuLaunchKernel", cuda.cuLaunchKernel(func, N // 256, 1, 1, 256, 1, 1, 0, None,
                                            params, None))
check("cuCtxSynchronize", cuda.cuCtxSynchronize())
host = (ctypes.c_uint32 * N)()
check("cuMemcpyDtoH", cuda.cuMemcpyDtoH_v2(host, buf, N * 4))
ok = all(host[i] == 2 * i for i in range(N))
print(json.dumps({"devices": count.value, "name": name.value.decode(), "kernel_ok": ok}))
sys.exit(0 if ok else 1)

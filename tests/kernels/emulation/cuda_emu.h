// cuda_emu.h: CUDA on the CPU, for the kernels' tests. Included (by emulator.py)
// in front of an UNMODIFIED .cu source whose local headers are inlined as
// kvstore.kernels.cuda_backend.source() hands them to NVRTC; compiled by g++.
//
// Every CUDA thread of a block is a fiber (ucontext, emu_runtime.cpp) on one OS
// thread; blocks run one after another. threadIdx / blockIdx / blockDim /
// gridDim read the running fiber's. __shared__ variables are statics: the
// kernel library holds nothing else in its .bss (linked without start files),
// which is poisoned before every block (huge floats, alternating sign).
// __syncthreads() is a counting barrier over the block; __shfl_*_sync an
// exchange among the lanes of a warp named in the mask (PTX shfl.sync
// semantics, width included). A fiber runs until it
// reaches a barrier, a warp exchange or its end; after every such point the
// runnable fibers are run in a freshly shuffled (seeded) order, so a missing
// barrier shows as a wrong result. Deadlocks (a thread missing a barrier, a lane
// of a mask missing an exchange) abort with the kernel, block, threads and
// source lines. The kernel TU is compiled with -fsanitize=kernel-address and
// every global / shared access is checked against the launch's buffers
// (memcheck, in emu_runtime.cpp).
//
// __CUDA_ARCH__ / __CUDACC__ stay undefined: headers that branch on them (the
// conversions of kv_convert.cuh) compile their host branch, which
// tests/kernels/test_cuda_sources.py holds to torch bit for bit; the PTX asm of
// the device branch cannot run here.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static  // the .bss of the kernel library is the shared memory
#define __constant__ static

struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };

namespace emu {

struct Thread {
  uint3 tid;
  dim3 bdim;
  uint3 bid;
  dim3 gdim;
};
extern Thread* cur;  // the running fiber

void syncthreads(int line);
// One warp exchange: every lane named in mask calls it with the same kind, mask
// and width; returns the value of the source lane (PTX shfl.sync).
enum Kind { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, VOTE_BALLOT, SYNCWARP };
uint64_t exchange(int line, Kind kind, unsigned mask, uint64_t value, int arg, int width);

inline uint32_t fbits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float ffrom(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
// CUDA float results that are NaN are the canonical NaN 0x7fffffff.
inline float canon(float f) { return f != f ? ffrom(0x7fffffffu) : f; }

template <class T>
inline uint64_t pack(T v) {
  static_assert(sizeof(T) <= 8, "shuffles move 4- or 8-byte values");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T unpack(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::cur->bid)
#define blockDim (emu::cur->bdim)
#define gridDim (emu::cur->gdim)
#define warpSize 32

#define __syncthreads() emu::syncthreads(__LINE__)

template <class T>
inline T emu_shfl(int line, emu::Kind k, unsigned mask, T v, int arg, int width = 32) {
  return emu::unpack<T>(emu::exchange(line, k, mask, emu::pack(v), arg, width));
}
#define __shfl_sync(mask, v, ...) emu_shfl(__LINE__, emu::SHFL_IDX, mask, v, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) emu_shfl(__LINE__, emu::SHFL_UP, mask, v, __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) emu_shfl(__LINE__, emu::SHFL_DOWN, mask, v, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) emu_shfl(__LINE__, emu::SHFL_XOR, mask, v, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
  ((unsigned)emu::exchange(__LINE__, emu::VOTE_BALLOT, mask, (pred) ? 1u : 0u, 0, 32))
#define __all_sync(mask, pred) (__ballot_sync(mask, pred) == (mask))
#define __any_sync(mask, pred) (__ballot_sync(mask, pred) != 0u)
#define __syncwarp(...) emu_syncwarp(__LINE__, ##__VA_ARGS__)
inline void emu_syncwarp(int line, unsigned mask = 0xffffffffu) {
  emu::exchange(line, emu::SYNCWARP, mask, 0, 0, 32);
}
__device__ inline unsigned __activemask() { return 0xffffffffu; }

// ---- float intrinsics, as CUDA defines them --------------------------------
// IEEE single operations rounded to nearest even (SSE arithmetic, no FMA
// contraction: -ffp-contract=off), NaN results canonical.
inline float __fadd_rn(float a, float b) { return emu::canon(a + b); }
inline float __fsub_rn(float a, float b) { return emu::canon(a - b); }
inline float __fmul_rn(float a, float b) { return emu::canon(a * b); }
inline float __fdiv_rn(float a, float b) { return emu::canon(a / b); }
inline float __fsqrt_rn(float a) { return emu::canon(std::sqrt(a)); }
inline int __float2int_rn(float v) {  // NaN -> 0, saturating
  if (v != v) return 0;
  if (v >= 2147483648.0f) return 2147483647;
  if (v <= -2147483648.0f) return (-2147483647 - 1);
  return (int)std::nearbyintf(v);
}
inline unsigned __float_as_uint(float f) { return emu::fbits(f); }
inline float __uint_as_float(unsigned u) { return emu::ffrom(u); }
inline int __float_as_int(float f) { return (int)emu::fbits(f); }
inline float __int_as_float(int i) { return emu::ffrom((uint32_t)i); }
// fmaxf / fminf: a NaN operand yields the other one, two NaNs the canonical
// NaN; -0 < +0 (PTX max.f32 / min.f32).
inline float emu_fmaxf(float a, float b) {
  if (a != a) return emu::canon(b);
  if (b != b) return a;
  if (a == 0.0f && b == 0.0f) return std::signbit(a) ? b : a;
  return a > b ? a : b;
}
inline float emu_fminf(float a, float b) {
  if (a != a) return emu::canon(b);
  if (b != b) return a;
  if (a == 0.0f && b == 0.0f) return std::signbit(a) ? a : b;
  return a < b ? a : b;
}
inline float emu_fabsf(float a) { return emu::ffrom(emu::fbits(a) & 0x7fffffffu); }
#define fmaxf emu_fmaxf
#define fminf emu_fminf
#define fabsf emu_fabsf

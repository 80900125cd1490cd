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
#include <cstdlib>
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

// ---- cuda_fp16.h / cuda_bf16.h / cuda_fp8.h, the parts a kernel may use ----
// (pack.cu / unpack.cu carry their own conversions in kv_convert.cuh; these are
// for sources that use CUDA's types.) Round to nearest even; CUDA's NaN results:
// f16 0x7fff, bf16 0x7fff, e4m3 0x7f.
struct __half_raw { unsigned short x; };
struct __half { unsigned short __x; };
struct __nv_bfloat16_raw { unsigned short x; };
struct __nv_bfloat16 { unsigned short __x; };
typedef unsigned char __nv_fp8_storage_t;
enum __nv_saturation_t { __NV_NOSAT, __NV_SATFINITE };
enum __nv_fp8_interpretation_t { __NV_E4M3, __NV_E5M2 };

namespace emu {
// Round |x| (float bits a, finite) to a binary format of `man` mantissa bits and
// minimum normal exponent `emin` (unbiased), returning its bits without sign;
// subnormals included, results may carry into the exponent (and to "inf").
inline uint32_t round_to(uint32_t a, int man, int emin, int bias) {
  const int e = (int)(a >> 23) - 127;
  if (e < emin) {  // subnormal target: quantum 2^(emin - man)
    const float q = std::ldexp(ffrom(a), man - emin);  // exact scaling
    return (uint32_t)std::nearbyintf(q);              // may reach 1 << man: the min normal
  }
  const int drop = 23 - man;
  uint32_t code = ((uint32_t)(e + bias) << man) | ((a & 0x7fffffu) >> drop);
  const uint32_t rest = a & ((1u << drop) - 1), half = 1u << (drop - 1);
  if (rest > half || (rest == half && (code & 1u))) code += 1u;
  return code;
}
}  // namespace emu

inline __half __float2half_rn(float f) {
  const uint32_t u = emu::fbits(f), a = u & 0x7fffffffu;
  const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
  if (a > 0x7f800000u) return __half{0x7fff};
  uint32_t code = a == 0x7f800000u ? 0x7c00u : emu::round_to(a, 10, -14, 15);
  if (code > 0x7c00u) code = 0x7c00u;
  return __half{(unsigned short)(sign | code)};
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16, e = (h.__x >> 10) & 31u,
                 m = h.__x & 0x3ffu;
  if (e == 31) return emu::ffrom(sign | 0x7f800000u | (m << 13));
  const float v = e ? std::ldexp((float)(m | 0x400u), (int)e - 25) : std::ldexp((float)m, -24);
  return sign ? -v : v;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = emu::fbits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
  return __nv_bfloat16{(unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::ffrom((uint32_t)b.__x << 16); }

// float -> e4m3fn (bias 7, max 448, no infinities, NaN 0x7f): SATFINITE clamps
// finite overflow and infinities to +-448, NOSAT makes them NaN.
inline __nv_fp8_storage_t __nv_cvt_float_to_fp8(float f, __nv_saturation_t sat,
                                                  __nv_fp8_interpretation_t interp) {
  if (interp != __NV_E4M3) std::abort();  // e5m2: not emulated (no source uses it)
  const uint32_t u = emu::fbits(f), a = u & 0x7fffffffu;
  const unsigned char sign = (unsigned char)((u >> 24) & 0x80u);
  if (a > 0x7f800000u) return 0x7f;
  uint32_t code = a == 0x7f800000u ? 0x7fu : emu::round_to(a, 3, -6, 7);
  if (code > 0x7eu) code = sat == __NV_SATFINITE ? 0x7eu : 0x7fu;
  return (unsigned char)(sign | code);
}
inline __half_raw __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t b,
                                          __nv_fp8_interpretation_t interp) {
  if (interp != __NV_E4M3) std::abort();
  const unsigned short sign = (unsigned short)((b & 0x80u) << 8);
  const unsigned e = (b >> 3) & 15u, m = b & 7u;
  if (e == 15 && m == 7) return __half_raw{0x7fff};
  float v = e ? std::ldexp((float)(8 | m), (int)e - 10) : std::ldexp((float)m, -9);
  return __half_raw{(unsigned short)(sign | __float2half_rn(v).__x)};
}

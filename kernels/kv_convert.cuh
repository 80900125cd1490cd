// Number conversions of the KV kernels, bit-exact with torch's:
//   float16  <-> float32   (round to nearest even)
//   bfloat16 <-> float32   (round to nearest even, NaN -> 0x7FC0 as c10::BFloat16)
//   float8 e4m3fn <-> float32 (round to nearest even, saturating at +-448,
//                              NaN -> 0x7F), in software so that it also
//                              compiles for sm_80, which has no fp8 instructions
// No header is included: the file compiles with NVRTC (CuPy RawModule), with
// nvcc, and as plain C++ for the host test harness (tests/kernels), which
// checks these functions against torch on this CPU-only machine.
#pragma once

typedef unsigned int kv_u32;
typedef unsigned short kv_u16;
typedef unsigned char kv_u8;
typedef unsigned long long kv_u64;

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define KV_HD __host__ __device__ __forceinline__
#else
#define KV_HD inline
#endif

KV_HD kv_u32 kv_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  kv_u32 u;
  __builtin_memcpy(&u, &f, 4);
  return u;
#endif
}

KV_HD float kv_float(kv_u32 u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

// Round to the nearest integer, ties to even (the current rounding mode on the host).
KV_HD int kv_rint(float v) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(v);
#else
  return (int)__builtin_rintf(v);
#endif
}

// ---- float16 ---------------------------------------------------------------
KV_HD float kv_f16_to_f32(kv_u16 h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  kv_u32 sign = (kv_u32)(h & 0x8000u) << 16;
  kv_u32 exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float32
    float v = (float)man * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return kv_float(sign | 0x7f800000u | (man << 13));
  return kv_float(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}

KV_HD kv_u16 kv_f32_to_f16(float f) {
#if defined(__CUDA_ARCH__)
  kv_u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  kv_u32 u = kv_bits(f);
  kv_u16 sign = (kv_u16)((u >> 16) & 0x8000u);
  kv_u32 a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (kv_u16)(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return (kv_u16)(sign | 0x7c00u);  // rounds to >= 65536: inf
  if (a < 0x38800000u) {  // below 2^-14: subnormal half, quantum 2^-24
    int q = kv_rint(kv_float(a) * 16777216.0f);          // exact scaling by 2^24
    return (kv_u16)(sign | (kv_u16)q);                     // q == 1024 is the smallest normal
  }
  kv_u32 code = ((((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));
  kv_u32 rest = a & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (code & 1u))) code += 1u;
  return (kv_u16)(sign | code);
#endif
}

// ---- bfloat16 --------------------------------------------------------------
KV_HD float kv_bf16_to_f32(kv_u16 b) { return kv_float((kv_u32)b << 16); }

KV_HD kv_u16 kv_f32_to_bf16(float f) {
  kv_u32 u = kv_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (kv_u16)0x7fc0u;
  u += 0x7fffu + ((u >> 16) & 1u);
  return (kv_u16)(u >> 16);
}

// ---- float8 e4m3fn (bias 7, no infinities, 0x7F/0xFF = NaN, max 448) --------
KV_HD float kv_e4m3_to_f32(kv_u8 b) {
  kv_u32 sign = (kv_u32)(b & 0x80u) << 24;
  kv_u32 exp = (b >> 3) & 0xfu, man = b & 0x7u;
  if (exp == 0) {  // zero or subnormal: man * 2^-9
    float v = (float)man * 0.001953125f;
    return sign ? -v : v;
  }
  if (exp == 15 && man == 7) return kv_float(sign | 0x7fc00000u);
  return kv_float(sign | ((exp + 120u) << 23) | (man << 20));
}

KV_HD kv_u8 kv_f32_to_e4m3(float f) {
  kv_u32 u = kv_bits(f);
  kv_u8 sign = (kv_u8)((u >> 24) & 0x80u);
  kv_u32 a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (kv_u8)(sign | 0x7fu);    // NaN
  if (a >= 0x43e00000u) return (kv_u8)(sign | 0x7eu);   // >= 448 (and inf): saturate
  if (a < 0x3c800000u) {                                // below 2^-6: quantum 2^-9
    int q = kv_rint(kv_float(a) * 512.0f);              // 0..8; 8 == code of 2^-6
    return (kv_u8)(sign | (kv_u8)q);
  }
  kv_u32 code = ((((a >> 23) - 120u) << 3) | ((a >> 20) & 0x7u));
  kv_u32 rest = a & 0xfffffu;
  if (rest > 0x80000u || (rest == 0x80000u && (code & 1u))) code += 1u;  // carry is fine
  return (kv_u8)(sign | (kv_u8)code);
}

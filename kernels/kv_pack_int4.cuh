// pack kernels of codec int4 (included by pack.cu): V rows are quantized per
// (token, head) like int8 rows; K per channel over groups of 64 tokens.
#pragma once
#include "kv_common.cuh"

// Asymmetric 4-bit level of x against its group's (min, scale).
__device__ __forceinline__ int kv_q4(float x, float mn, float scale) {
  return scale > 0.0f ? kv_clampi(kv_rint(__fdiv_rn(__fsub_rn(x, mn), scale)), 0, 15) : 0;
}

// ---- int4 V: asymmetric per row (token x head), rows as in int8 ---------------
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void pack_int4_v(const KvSlab& s, long long off2, long long off3,
                                            long long off4, int lanes_per_row) {
  const long long esz = sizeof(typename DT::raw);
  const int T = s.T, D = s.D;
  const int upr = D / VEC, G = lanes_per_row, rpw = 32 / G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, li = lane % G;
  const int nwarps = blockDim.x >> 5;
  const float inf = kv_float(0x7f800000u);
  const long long row0 = ((long long)s.l * s.H + s.h) * T;  // into v_scale / v_min
  float* v_scale = reinterpret_cast<float*>(s.payload + off2) + row0;
  float* v_min = reinterpret_cast<float*>(s.payload + off3) + row0;
  char* q = s.payload + off4 + ((long long)s.lkv * s.H + s.h) * T * (D / 2);
  for (int r0 = warp * rpw; r0 < T; r0 += nwarps * rpw) {
    const int t = r0 + lane / G;
    const char* src = t < T ? s.row(t) : nullptr;
    float mn = inf, mx = -inf;
    if (src) {
      for (int u = li; u < upr; u += G) {
        float x[VEC];
        kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
#pragma unroll
        for (int k = 0; k < VEC; ++k) kv_min_max(x[k], mn, mx);
      }
    }
    mn = __fadd_rn(kv_group_min(mn, G), 0.0f);  // a -0 min / max becomes +0
    mx = __fadd_rn(kv_group_max(mx, G), 0.0f);
    if (!src) continue;
    const float scale = kv_poison(__fdiv_rn(__fsub_rn(mx, mn), 15.0f));  // NaN: q = 0
    if (li == 0) {
      v_scale[t] = scale;
      v_min[t] = scale == scale ? mn : scale;
    }
    for (int u = li; u < upr; u += G) {
      float x[VEC];
      kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
      kv_u8 b[VEC / 2];
#pragma unroll
      for (int j = 0; j < VEC / 2; ++j)
        b[j] = (kv_u8)(kv_q4(x[2 * j], mn, scale) | (kv_q4(x[2 * j + 1], mn, scale) << 4));
      kv_put_bytes<VEC / 2, VL>(q + (long long)t * (D / 2) + u * (VEC / 2), b);
    }
  }
}

// ---- int4 K: asymmetric per channel over groups of 64 tokens ------------------
// Thread (rl, u) = (threadIdx / upr, threadIdx % upr) owns channel unit u of
// rows t0+rl, t0+rl+NR, ...; partial min/max meet in shared memory.
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void pack_int4_k(const KvSlab& s, long long off0, long long off1,
                                            long long off4) {
  __shared__ float part_mn[KV_THREADS * 8], part_mx[KV_THREADS * 8];
  __shared__ float g_scale[512], g_min[512];  // host: D <= 512
  const long long esz = sizeof(typename DT::raw);
  const int T = s.T, D = s.D;
  const int upr = D / VEC, NR = blockDim.x / upr;  // host: upr <= blockDim
  const int rl = threadIdx.x / upr, u = threadIdx.x % upr;
  const bool active = rl < NR;
  const int G = (T + 63) / 64;
  const float inf = kv_float(0x7f800000u);
  const long long g0 = ((long long)s.l * s.H + s.h) * G * D;  // into k_scale / k_min
  float* k_scale = reinterpret_cast<float*>(s.payload + off0) + g0;
  float* k_min = reinterpret_cast<float*>(s.payload + off1) + g0;
  char* q = s.payload + off4 + ((long long)s.lkv * s.H + s.h) * T * (D / 2);
  for (int g = 0; g < G; ++g) {
    const int t0 = g * 64, t1 = t0 + 64 < T ? t0 + 64 : T;
    float mn[VEC], mx[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      mn[k] = inf;
      mx[k] = -inf;
    }
    if (active) {
      for (int t = t0 + rl; t < t1; t += NR) {
        const char* src = s.row(t);
        if (!src) continue;
        float x[VEC];
        kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
#pragma unroll
        for (int k = 0; k < VEC; ++k) kv_min_max(x[k], mn[k], mx[k]);
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        part_mn[(rl * upr + u) * VEC + k] = mn[k];
        part_mx[(rl * upr + u) * VEC + k] = mx[k];
      }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      const int du = d / VEC, dk = d % VEC;
      float a = inf, b = -inf;
      for (int r = 0; r < NR; ++r) {
        a = fminf(a, part_mn[(r * upr + du) * VEC + dk]);
        b = fmaxf(b, part_mx[(r * upr + du) * VEC + dk]);
      }
      a = __fadd_rn(a, 0.0f);  // a -0 min / max becomes +0
      b = __fadd_rn(b, 0.0f);
      const float sc = kv_poison(__fdiv_rn(__fsub_rn(b, a), 15.0f));  // NaN: q = 0
      a = sc == sc ? a : sc;
      k_scale[(long long)g * D + d] = sc;
      k_min[(long long)g * D + d] = a;
      g_scale[d] = sc;
      g_min[d] = a;
    }
    __syncthreads();
    if (active) {
      for (int t = t0 + rl; t < t1; t += NR) {
        const char* src = s.row(t);
        if (!src) continue;
        float x[VEC];
        kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
        kv_u8 b[VEC / 2];
#pragma unroll
        for (int j = 0; j < VEC / 2; ++j) {
          const int d = u * VEC + 2 * j;
          b[j] = (kv_u8)(kv_q4(x[2 * j], g_min[d], g_scale[d]) |
                         (kv_q4(x[2 * j + 1], g_min[d + 1], g_scale[d + 1]) << 4));
        }
        kv_put_bytes<VEC / 2, VL>(q + (long long)t * (D / 2) + u * (VEC / 2), b);
      }
    }
    __syncthreads();  // g_scale / part_* are reused by the next group
  }
}

template <class DT, int VEC, bool VL>
__device__ __forceinline__ void pack_int4(KV_PARAMS) {
  const KvSlab s = kv_slab(k_ptrs, v_ptrs, block_ids, payload_ptrs, T, H, D, ebs, num_blocks,
                           block_stride, token_stride, head_stride);
  kv_zero_gaps(s.payload, gap0, gap1, gap2, gap3, gap4);
  if (s.kv) {
    pack_int4_v<DT, VEC, VL>(s, off2, off3, off4, lanes_per_row);
  } else {
    pack_int4_k<DT, VEC, VL>(s, off0, off1, off4);
  }
}

// pack: gather the rows of a store block out of an engine KV cache and encode
// them into the block's payload (layouts in codecs.py). Grid (H, 2*L, S),
// KV_THREADS threads; see kv_common.cuh for the slab each thread block owns.
// Entry points: kv_pack_<codec>_<f16|bf16|f32>_<v|s> (v: 16-byte vectors,
// s: scalar access for unaligned caches or payload slots).
#include "kv_common.cuh"
#include "kv_pack_int4.cuh"

#define KV_SLAB()                                                                     \
  const KvSlab s = kv_slab(k_ptrs, v_ptrs, block_ids, payload_ptrs, T, H, D, ebs,     \
                           num_blocks, block_stride, token_stride, head_stride)

// ---- none: payload = canonical block [L, 2, T, H, D] -------------------------
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void pack_none(KV_PARAMS) {
  KV_SLAB();
  const long long esz = sizeof(typename DT::raw);
  const int upr = D / VEC, n = T * upr;  // units per row, per slab
  for (int i0 = threadIdx.x; i0 < n; i0 += KV_BATCH * blockDim.x) {
    KvRaw<DT, VEC> buf[KV_BATCH];
    char* dst[KV_BATCH];
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      const int i = i0 + b * blockDim.x, t = i / upr, u = i - t * upr;
      const char* src = i < n ? s.row(t) : nullptr;
      dst[b] = nullptr;
      if (src) {
        kv_load_raw<DT, VEC, VL>(src + u * VEC * esz, buf[b]);
        dst[b] = s.payload + off0 +
                 ((((long long)s.lkv * T + t) * H + s.h) * D + (long long)u * VEC) * esz;
      }
    }
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b)
      if (dst[b]) kv_store_raw<DT, VEC, VL>(dst[b], buf[b]);
  }
}

// ---- fp8 e4m3: scale = amax / 448 of the whole slab ---------------------------
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void pack_fp8(KV_PARAMS) {
  KV_SLAB();
  kv_zero_gaps(s.payload, gap0, gap1, gap2, gap3, gap4);
  const long long esz = sizeof(typename DT::raw);
  const int upr = D / VEC, n = T * upr;
  float m = 0.0f;
#pragma unroll 4
  for (int i = threadIdx.x; i < n; i += blockDim.x) {  // pass 1: amax (loads only)
    const int t = i / upr, u = i - t * upr;
    const char* src = s.row(t);
    if (!src) continue;
    float x[VEC];
    kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
#pragma unroll
    for (int k = 0; k < VEC; ++k) m = fmaxf(m, kv_abs_or_inf(x[k]));
  }
  m = kv_block_max(m);
  const float scale = kv_poison(__fdiv_rn(m, 448.0f));  // NaN: q = 0 below
  const long long slab = (long long)s.lkv * H + s.h;
  if (threadIdx.x == 0) reinterpret_cast<float*>(s.payload + off0)[slab] = scale;
  char* q = s.payload + off1 + slab * T * D;
  for (int i0 = threadIdx.x; i0 < n; i0 += KV_BATCH * blockDim.x) {  // pass 2 (L2 hits)
    float x[KV_BATCH][VEC];
    char* dst[KV_BATCH];
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      const int i = i0 + b * blockDim.x, t = i / upr, u = i - t * upr;
      const char* src = i < n ? s.row(t) : nullptr;
      dst[b] = nullptr;
      if (src) {
        kv_load<DT, VEC, VL>(src + u * VEC * esz, x[b]);
        dst[b] = q + (long long)t * D + u * VEC;
      }
    }
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      if (!dst[b]) continue;
      kv_u8 c[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float y = scale > 0.0f ? __fdiv_rn(x[b][k], scale) : 0.0f;
        c[k] = kv_f32_to_e4m3(fminf(fmaxf(y, -448.0f), 448.0f));
      }
      kv_put_bytes<VEC, VL>(dst[b], c);
    }
  }
}

// ---- int8: scale = amax / 127 of each row (token x head) ----------------------
// A row is handled by `lanes_per_row` (G) lanes of one warp, 32/G rows a warp.
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void pack_int8(KV_PARAMS) {
  KV_SLAB();
  kv_zero_gaps(s.payload, gap0, gap1, gap2, gap3, gap4);
  const long long esz = sizeof(typename DT::raw);
  const int upr = D / VEC, G = lanes_per_row, rpw = 32 / G;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, li = lane % G;
  const int nwarps = blockDim.x >> 5;
  const long long slab = (long long)s.lkv * H + s.h;
  float* scales = reinterpret_cast<float*>(s.payload + off0) + slab * T;
  char* q = s.payload + off1 + slab * T * D;
  for (int r0 = warp * rpw; r0 < T; r0 += nwarps * rpw) {  // uniform per warp
    const int t = r0 + lane / G;
    const char* src = t < T ? s.row(t) : nullptr;
    float m = 0.0f;
    if (src) {
      for (int u = li; u < upr; u += G) {
        float x[VEC];
        kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
#pragma unroll
        for (int k = 0; k < VEC; ++k) m = fmaxf(m, kv_abs_or_inf(x[k]));
      }
    }
    m = kv_group_max(m, G);  // every lane of the warp takes part
    const float scale = kv_poison(__fdiv_rn(m, 127.0f));  // NaN: q = 0 below
    if (!src) continue;
    if (li == 0) scales[t] = scale;
    for (int u = li; u < upr; u += G) {
      float x[VEC];
      kv_load<DT, VEC, VL>(src + u * VEC * esz, x);
      kv_u8 b[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        int v = scale > 0.0f ? kv_clampi(kv_rint(__fdiv_rn(x[k], scale)), -127, 127) : 0;
        b[k] = (kv_u8)(signed char)v;
      }
      kv_put_bytes<VEC, VL>(q + (long long)t * D + u * VEC, b);
    }
  }
}

#define KV_PACK_ENTRY(codec, dt, DT, VEC_S)                                                 \
  extern "C" __global__ void __launch_bounds__(KV_THREADS)                                \
      kv_pack_##codec##_##dt##_v(KV_PARAMS) {                                             \
    pack_##codec<DT, 16 / (int)sizeof(DT::raw), true>(KV_ARGS);                           \
  }                                                                                       \
  extern "C" __global__ void __launch_bounds__(KV_THREADS)                                \
      kv_pack_##codec##_##dt##_s(KV_PARAMS) {                                             \
    pack_##codec<DT, VEC_S, false>(KV_ARGS);                                              \
  }

#define KV_PACK_DTYPES(codec, VEC_S) \
  KV_PACK_ENTRY(codec, f16, KvF16, VEC_S) \
  KV_PACK_ENTRY(codec, bf16, KvBF16, VEC_S) \
  KV_PACK_ENTRY(codec, f32, KvF32, VEC_S)

KV_PACK_DTYPES(none, 1)
KV_PACK_DTYPES(fp8, 1)
KV_PACK_DTYPES(int8, 1)
KV_PACK_DTYPES(int4, 2)

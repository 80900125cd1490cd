// unpack: decode a store block's payload and scatter its rows into the target
// slots of an engine KV cache; nothing else of the cache is written. Grid
// (H, 2*L, S), KV_THREADS threads (slab: kv_common.cuh; payloads: codecs.py).
// Entry points: kv_unpack_<codec>_<f16|bf16|f32>_<v|s>.
#include "kv_common.cuh"

#define KV_SLAB()                                                                     \
  const KvSlab s = kv_slab(k_ptrs, v_ptrs, block_ids, payload_ptrs, T, H, D, ebs,     \
                           num_blocks, block_stride, token_stride, head_stride)

// Every unpack walks the slab the same way: unit u (VEC elements) of row t,
// KV_BATCH units per thread per step, their loads issued before any store.
#define KV_FOR_UNITS                                                                  \
  const long long esz = sizeof(typename DT::raw);                                     \
  const int upr = D / VEC, n = T * upr;                                               \
  for (int i0 = threadIdx.x; i0 < n; i0 += KV_BATCH * blockDim.x)

#define KV_BATCH_UNIT(b)                                                              \
  const int i = i0 + (b) * blockDim.x, t = i / upr, u = i - t * upr;                  \
  dst[b] = i < n ? s.row(t) : nullptr;                                                \
  if (!dst[b]) continue;                                                              \
  dst[b] += u * VEC * esz

template <class DT, int VEC, bool VL>
__device__ __forceinline__ void unpack_none(KV_PARAMS) {
  KV_SLAB();
  KV_FOR_UNITS {
    KvRaw<DT, VEC> buf[KV_BATCH];
    char* dst[KV_BATCH];
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      KV_BATCH_UNIT(b);
      kv_load_raw<DT, VEC, VL>(
          s.payload + off0 +
              ((((long long)s.lkv * T + t) * H + s.h) * D + (long long)u * VEC) * esz,
          buf[b]);
    }
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b)
      if (dst[b]) kv_store_raw<DT, VEC, VL>(dst[b], buf[b]);
  }
}

template <class DT, int VEC, bool VL>
__device__ __forceinline__ void unpack_fp8(KV_PARAMS) {
  KV_SLAB();
  const long long slab = (long long)s.lkv * H + s.h;
  const float scale = reinterpret_cast<const float*>(s.payload + off0)[slab];
  const char* q = s.payload + off1 + slab * T * D;
  KV_FOR_UNITS {
    kv_u8 c[KV_BATCH][VEC];
    char* dst[KV_BATCH];
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      KV_BATCH_UNIT(b);
      kv_get_bytes<VEC, VL>(q + (long long)t * D + u * VEC, c[b]);
    }
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      if (!dst[b]) continue;
      float x[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) x[k] = __fmul_rn(kv_e4m3_to_f32(c[b][k]), scale);
      kv_store<DT, VEC, VL>(dst[b], x);
    }
  }
}

template <class DT, int VEC, bool VL>
__device__ __forceinline__ void unpack_int8(KV_PARAMS) {
  KV_SLAB();
  const long long slab = (long long)s.lkv * H + s.h;
  const float* scales = reinterpret_cast<const float*>(s.payload + off0) + slab * T;
  const char* q = s.payload + off1 + slab * T * D;
  KV_FOR_UNITS {
    kv_u8 c[KV_BATCH][VEC];
    float sc[KV_BATCH];
    char* dst[KV_BATCH];
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      KV_BATCH_UNIT(b);
      sc[b] = scales[t];
      kv_get_bytes<VEC, VL>(q + (long long)t * D + u * VEC, c[b]);
    }
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      if (!dst[b]) continue;
      float x[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) x[k] = __fmul_rn((float)(signed char)c[b][k], sc[b]);
      kv_store<DT, VEC, VL>(dst[b], x);
    }
  }
}

// int4: K rows take (scale, min) per channel of their 64-token group, V rows
// one (scale, min) per row.
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void unpack_int4(KV_PARAMS) {
  KV_SLAB();
  const int G = (T + 63) / 64;
  const long long lh = (long long)s.l * H + s.h;
  const float* k_scale = reinterpret_cast<const float*>(s.payload + off0) + lh * G * D;
  const float* k_min = reinterpret_cast<const float*>(s.payload + off1) + lh * G * D;
  const float* v_scale = reinterpret_cast<const float*>(s.payload + off2) + lh * T;
  const float* v_min = reinterpret_cast<const float*>(s.payload + off3) + lh * T;
  const char* q = s.payload + off4 + ((long long)s.lkv * H + s.h) * T * (D / 2);
  KV_FOR_UNITS {
    kv_u8 c[KV_BATCH][VEC / 2];
    char* dst[KV_BATCH];
    int row[KV_BATCH], unit[KV_BATCH];
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      KV_BATCH_UNIT(b);
      row[b] = t;
      unit[b] = u;
      kv_get_bytes<VEC / 2, VL>(q + (long long)t * (D / 2) + u * (VEC / 2), c[b]);
    }
#pragma unroll
    for (int b = 0; b < KV_BATCH; ++b) {
      if (!dst[b]) continue;
      const int t = row[b];
      float x[VEC];
      if (s.kv) {
        const float sc = v_scale[t], mn = v_min[t];
#pragma unroll
        for (int j = 0; j < VEC / 2; ++j) {
          x[2 * j] = __fadd_rn(__fmul_rn((float)(c[b][j] & 15), sc), mn);
          x[2 * j + 1] = __fadd_rn(__fmul_rn((float)(c[b][j] >> 4), sc), mn);
        }
      } else {
        // this unit's first channel, in its token group's scale / min rows
        const long long ch = (long long)(t / 64) * D + unit[b] * VEC;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const int level = j & 1 ? c[b][j / 2] >> 4 : c[b][j / 2] & 15;
          x[j] = __fadd_rn(__fmul_rn((float)level, k_scale[ch + j]), k_min[ch + j]);
        }
      }
      kv_store<DT, VEC, VL>(dst[b], x);
    }
  }
}

// (KV_THREADS, 3): up to 85 registers a thread for the KV_BATCH units in flight,
// still 768 threads an SM.
#define KV_UNPACK_ENTRY(codec, dt, DT, VEC_S)                                               \
  extern "C" __global__ void __launch_bounds__(KV_THREADS, 3)                             \
      kv_unpack_##codec##_##dt##_v(KV_PARAMS) {                                           \
    unpack_##codec<DT, 16 / (int)sizeof(DT::raw), true>(KV_ARGS);                         \
  }                                                                                       \
  extern "C" __global__ void __launch_bounds__(KV_THREADS, 3)                             \
      kv_unpack_##codec##_##dt##_s(KV_PARAMS) {                                           \
    unpack_##codec<DT, VEC_S, false>(KV_ARGS);                                            \
  }

#define KV_UNPACK_DTYPES(codec, VEC_S) \
  KV_UNPACK_ENTRY(codec, f16, KvF16, VEC_S) \
  KV_UNPACK_ENTRY(codec, bf16, KvBF16, VEC_S) \
  KV_UNPACK_ENTRY(codec, f32, KvF32, VEC_S)

KV_UNPACK_DTYPES(none, 1)
KV_UNPACK_DTYPES(fp8, 1)
KV_UNPACK_DTYPES(int8, 1)
KV_UNPACK_DTYPES(int4, 2)

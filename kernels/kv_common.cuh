// Shared device code of the pack / unpack kernels: element traits, vector
// access, the slab a thread block works on, and reductions.
//
// Work split: one thread block per (head h, layer l, K/V, store block s) =
// grid (H, 2*L, S). Its "slab" is the T x D values of that head: T rows (one
// per token of the store block) of D contiguous elements each. Row t lives in
// engine block ids[s*R + t/ebs], slot t%ebs (R = T/ebs engine blocks per store
// block), at
//   base(l, K/V) + id*block_stride + slot*token_stride + h*head_stride  (bytes)
// Rows are read and written as "units" of VEC elements: 16-byte vectors when
// the host found every address and stride 16-byte aligned (VL = true), else
// VEC scalar elements.
#pragma once
#include "kv_convert.cuh"

#define KV_FULL_MASK 0xffffffffu
#define KV_THREADS 256

struct alignas(16) kv_v16 { kv_u32 a, b, c, d; };

struct KvF16 {
  typedef kv_u16 raw;
  static __device__ __forceinline__ float load(raw r) { return kv_f16_to_f32(r); }
  static __device__ __forceinline__ raw store(float f) { return kv_f32_to_f16(f); }
};
struct KvBF16 {
  typedef kv_u16 raw;
  static __device__ __forceinline__ float load(raw r) { return kv_bf16_to_f32(r); }
  static __device__ __forceinline__ raw store(float f) { return kv_f32_to_bf16(f); }
};
struct KvF32 {
  typedef float raw;
  static __device__ __forceinline__ float load(raw r) { return r; }
  static __device__ __forceinline__ raw store(float f) { return f; }
};

// Load VEC elements at p as float32.
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void kv_load(const char* p, float (&x)[VEC]) {
  typedef typename DT::raw raw;
  if (VL) {
    static_assert(!VL || VEC * sizeof(raw) == 16, "a vector unit is 16 bytes");
    union { kv_v16 v; raw r[VEC]; } u;
    u.v = *reinterpret_cast<const kv_v16*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) x[i] = DT::load(u.r[i]);
  } else {
    const raw* r = reinterpret_cast<const raw*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) x[i] = DT::load(r[i]);
  }
}

// Store VEC float32 values at p in the element type (round to nearest even).
template <class DT, int VEC, bool VL>
__device__ __forceinline__ void kv_store(char* p, const float (&x)[VEC]) {
  typedef typename DT::raw raw;
  if (VL) {
    union { kv_v16 v; raw r[VEC]; } u;
#pragma unroll
    for (int i = 0; i < VEC; ++i) u.r[i] = DT::store(x[i]);
    *reinterpret_cast<kv_v16*>(p) = u.v;
  } else {
    raw* r = reinterpret_cast<raw*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) r[i] = DT::store(x[i]);
  }
}

// One unit of VEC raw elements, moved bit-exactly (codec "none").
template <class DT, int VEC>
struct KvRaw {
  typename DT::raw r[VEC];
};

template <class DT, int VEC, bool VL>
__device__ __forceinline__ void kv_load_raw(const char* p, KvRaw<DT, VEC>& u) {
  typedef typename DT::raw raw;
  if (VL) {
    union { kv_v16 v; KvRaw<DT, VEC> u; } c;
    c.v = *reinterpret_cast<const kv_v16*>(p);
    u = c.u;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) u.r[i] = reinterpret_cast<const raw*>(p)[i];
  }
}

template <class DT, int VEC, bool VL>
__device__ __forceinline__ void kv_store_raw(char* p, const KvRaw<DT, VEC>& u) {
  typedef typename DT::raw raw;
  if (VL) {
    union { kv_v16 v; KvRaw<DT, VEC> u; } c;
    c.u = u;
    *reinterpret_cast<kv_v16*>(p) = c.v;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) reinterpret_cast<raw*>(p)[i] = u.r[i];
  }
}

// Streaming loops take KV_BATCH units per thread per step: all loads of a
// step are issued before any store, so each thread keeps several 16-byte
// loads in flight (the compiler cannot hoist loads above stores that may alias).
#define KV_BATCH 4

// Store / load N code bytes; N is 1, 2, 4 or 8 and p is N-aligned when VL.
template <int N, bool VL>
__device__ __forceinline__ void kv_put_bytes(char* p, const kv_u8 (&b)[N]) {
  if (VL && N == 8) {
    union { kv_u64 v; kv_u8 b[8]; } u;
#pragma unroll
    for (int i = 0; i < 8; ++i) u.b[i] = b[i < N ? i : 0];
    *reinterpret_cast<kv_u64*>(p) = u.v;
  } else if (VL && N == 4) {
    union { kv_u32 v; kv_u8 b[4]; } u;
#pragma unroll
    for (int i = 0; i < 4; ++i) u.b[i] = b[i < N ? i : 0];
    *reinterpret_cast<kv_u32*>(p) = u.v;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) reinterpret_cast<kv_u8*>(p)[i] = b[i];
  }
}

template <int N, bool VL>
__device__ __forceinline__ void kv_get_bytes(const char* p, kv_u8 (&b)[N]) {
  if (VL && N == 8) {
    union { kv_u64 v; kv_u8 b[8]; } u;
    u.v = *reinterpret_cast<const kv_u64*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) b[i] = u.b[i];
  } else if (VL && N == 4) {
    union { kv_u32 v; kv_u8 b[4]; } u;
    u.v = *reinterpret_cast<const kv_u32*>(p);
#pragma unroll
    for (int i = 0; i < N; ++i) b[i] = u.b[i];
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) b[i] = reinterpret_cast<const kv_u8*>(p)[i];
  }
}

// Parameters every pack / unpack kernel takes, in this order.
#define KV_PARAMS                                                               \
  const long long* __restrict__ k_ptrs, const long long* __restrict__ v_ptrs,   \
  const long long* __restrict__ block_ids, const long long* __restrict__ payload_ptrs, \
  int L, int T, int H, int D, int ebs, long long num_blocks,                    \
  long long block_stride, long long token_stride, long long head_stride,        \
  long long off0, long long off1, long long off2, long long off3, long long off4, \
  long long gap0, long long gap1, long long gap2, long long gap3, long long gap4, \
  int lanes_per_row
#define KV_ARGS                                                                 \
  k_ptrs, v_ptrs, block_ids, payload_ptrs, L, T, H, D, ebs, num_blocks,         \
  block_stride, token_stride, head_stride, off0, off1, off2, off3, off4,        \
  gap0, gap1, gap2, gap3, gap4, lanes_per_row

// The slab of this thread block.
struct KvSlab {
  const long long* ids;  // engine block ids of this store block (R of them)
  long long num_blocks, block_stride, token_stride;
  char* base;            // K or V base of this layer, plus h*head_stride
  char* payload;         // this store block's payload
  int T, H, D, ebs, h, l, kv, lkv;

  // Address of row t, or nullptr when its engine block id is out of range:
  // -1 (SKIP_BLOCK) in an unpack means "leave this engine block alone"; other
  // bad ids never get here (the host validates them), the guard keeps memory safe.
  __device__ __forceinline__ char* row(int t) const {
    long long id = ids[t / ebs];
    if (id < 0 || id >= num_blocks) return nullptr;
    return base + id * block_stride + (long long)(t % ebs) * token_stride;
  }
};

__device__ __forceinline__ KvSlab kv_slab(const long long* k_ptrs, const long long* v_ptrs,
                                          const long long* block_ids,
                                          const long long* payload_ptrs, int T, int H,
                                          int D, int ebs, long long num_blocks,
                                          long long block_stride, long long token_stride,
                                          long long head_stride) {
  KvSlab s;
  s.h = blockIdx.x;
  s.lkv = blockIdx.y;
  s.l = s.lkv >> 1;
  s.kv = s.lkv & 1;
  const int sb = blockIdx.z;
  s.ids = block_ids + (long long)sb * (T / ebs);
  s.num_blocks = num_blocks;
  s.block_stride = block_stride;
  s.token_stride = token_stride;
  s.base = reinterpret_cast<char*>(s.kv ? v_ptrs[s.l] : k_ptrs[s.l]) + s.h * head_stride;
  s.payload = reinterpret_cast<char*>(payload_ptrs[sb]);
  s.T = T;
  s.H = H;
  s.D = D;
  s.ebs = ebs;
  return s;
}

// Non-finite input (codecs.py): a scale group holding a NaN or an infinity (or
// a range beyond float32) encodes as scale NaN (int4: min NaN too) and q = 0, so
// it decodes to NaN. fmaxf / fminf drop NaN operands, so the reductions see a
// NaN as an infinity (|x|: +inf; min / max: -inf / +inf) and the scale turns
// non-finite; kv_poison makes that the canonical NaN 0x7fc00000, and every
// quantizer's "scale > 0" test then writes q = 0.
#define KV_FLT_MAX 3.402823466e+38f
__device__ __forceinline__ float kv_abs_or_inf(float x) {
  const float a = fabsf(x);
  return a <= KV_FLT_MAX ? a : kv_float(0x7f800000u);
}
__device__ __forceinline__ void kv_min_max(float x, float& mn, float& mx) {
  const bool nan = x != x;
  mn = fminf(mn, nan ? kv_float(0xff800000u) : x);
  mx = fmaxf(mx, nan ? kv_float(0x7f800000u) : x);
}
__device__ __forceinline__ float kv_poison(float scale) {
  return scale <= KV_FLT_MAX ? scale : kv_float(0x7fc00000u);
}

__device__ __forceinline__ int kv_clampi(int v, int lo, int hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// Reductions over `width` lanes (a power of two <= 32, aligned groups).
__device__ __forceinline__ float kv_group_max(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(KV_FULL_MASK, v, o));
  return v;
}
__device__ __forceinline__ float kv_group_min(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(KV_FULL_MASK, v, o));
  return v;
}

// Max over the whole thread block; every thread gets the result.
__device__ __forceinline__ float kv_block_max(float v) {
  __shared__ float part[32];
  __shared__ float result;
  v = kv_group_max(v, 32);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = (blockDim.x + 31) >> 5;
    float w = lane < nwarps ? part[lane] : 0.0f;
    w = kv_group_max(w, 32);
    if (lane == 0) result = w;
  }
  __syncthreads();
  return result;
}

// Zero the alignment padding after each payload section (offsets and lengths
// are packed as gap = offset << 8 | length, length < 16), once per store block.
__device__ __forceinline__ void kv_zero_gaps(char* payload, long long g0, long long g1,
                                             long long g2, long long g3, long long g4) {
  if (blockIdx.x != 0 || blockIdx.y != 0 || threadIdx.x >= 5 * 16) return;
  const int which = threadIdx.x >> 4, byte = threadIdx.x & 15;
  const long long g = which == 0 ? g0 : which == 1 ? g1 : which == 2 ? g2 : which == 3 ? g3 : g4;
  if (byte < (int)(g & 0xff)) payload[(g >> 8) + byte] = 0;
}

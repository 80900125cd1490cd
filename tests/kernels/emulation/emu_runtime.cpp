// emu_runtime.cpp: the fibers, barriers, warp exchanges and memcheck behind
// cuda_emu.h. A shared library of its own, compiled without instrumentation and
// loaded RTLD_GLOBAL by emulator.py before any kernel library (whose emu::*
// and __asan_* references it resolves).
#include <ucontext.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_emu.h"


namespace emu {

Thread* cur = nullptr;

namespace {

enum State { RUNNABLE, WAIT_BAR, WAIT_X, EXITED };
const char* kind_name[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                           "__shfl_xor_sync", "__ballot_sync", "__syncwarp"};

struct Fiber {
  Thread t;
  ucontext_t ctx;
  State st;
  int line;
  Kind kind;
  unsigned mask;
  int arg, width;
  uint64_t val, result;
  char* stack;
};

struct Region {
  uintptr_t lo, hi;
  std::string name;
};

const size_t STACK = 256 * 1024;
std::vector<Fiber> fibers;
std::vector<char*> stacks;
std::vector<Region> regions;
ucontext_t sched_ctx;
Fiber* running = nullptr;
const char* kernel = "";
void (*kernel_call)(void*, void**) = nullptr;  // the kernel library's typed call
char* shared_lo = nullptr;  // the kernel library's .bss: its __shared__ variables
char* shared_hi = nullptr;
void* kernel_fn = nullptr;
void** kernel_params = nullptr;
std::string error;
bool failed = false;
uint64_t rng = 1;
unsigned nthreads = 0;

uint64_t next_rand() {  // xorshift64*
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 2685821657736338717ull;
}

std::string where(const Fiber& f) {
  char b[160];
  std::snprintf(b, sizeof b, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", kernel,
                f.t.bid.x, f.t.bid.y, f.t.bid.z, f.t.tid.x,
                f.t.tid.y, f.t.tid.z);
  return b;
}

std::string fmt(const char* f, ...) {
  char b[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(b, sizeof b, f, ap);
  va_end(ap);
  return b;
}

// Stop the launch: record why, leave the fiber for good.
[[noreturn]] void fail_in_fiber(const std::string& why) {
  if (!failed) {
    failed = true;
    error = why;
  }
  swapcontext(&running->ctx, &sched_ctx);
  std::abort();  // never resumed
}

void yield() {
  Fiber* me = running;
  swapcontext(&me->ctx, &sched_ctx);
}

void fiber_main() {
  kernel_call(kernel_fn, kernel_params);
  running->st = EXITED;
  swapcontext(&running->ctx, &sched_ctx);
}

unsigned linear(const Thread& t) {
  return t.tid.x + t.bdim.x * (t.tid.y + t.bdim.y * t.tid.z);
}

const char* state_of(const Fiber& f, char* buf, size_t n) {
  switch (f.st) {
    case RUNNABLE: return "runnable";
    case EXITED: return "has exited";
    case WAIT_BAR: std::snprintf(buf, n, "waits at __syncthreads (line %d)", f.line); return buf;
    default: std::snprintf(buf, n, "waits at %s (line %d, mask 0x%08x)", kind_name[f.kind],
                           f.line, f.mask); return buf;
  }
}

// All lanes named in `f`'s mask are at the same exchange: compute every result.
void try_complete(Fiber& f) {
  const unsigned me = linear(f.t), base = me & ~31u;
  for (int j = 0; j < 32; ++j) {
    if (!(f.mask >> j & 1)) continue;
    if (base + j >= nthreads)
      fail_in_fiber(fmt("%s: %s (line %d) mask 0x%08x names lane %d, beyond the block; %s",
                        kind_name[f.kind], kind_name[f.kind], f.line, f.mask, j,
                        where(f).c_str()));
    Fiber& g = fibers[base + j];
    if (g.st == EXITED)
      fail_in_fiber(fmt("%s (line %d) mask 0x%08x names lane %d, which has exited; %s",
                        kind_name[f.kind], f.line, f.mask, j, where(f).c_str()));
    if (g.st != WAIT_X) return;  // not there yet (or at a barrier: a deadlock, found later)
    if (g.kind != f.kind || g.mask != f.mask || g.width != f.width || g.line != f.line)
      fail_in_fiber(fmt("warp exchange mismatch: lane %u at %s (line %d, mask 0x%08x, width "
                        "%d), lane %d at %s (line %d, mask 0x%08x, width %d); %s",
                        me & 31, kind_name[f.kind], f.line, f.mask, f.width, j,
                        kind_name[g.kind], g.line, g.mask, g.width, where(f).c_str()));
  }
  uint64_t ballot = 0;
  for (int j = 0; j < 32; ++j)
    if (f.mask >> j & 1) ballot |= (fibers[base + j].val & 1) << j;
  for (int i = 0; i < 32; ++i) {
    if (!(f.mask >> i & 1)) continue;
    Fiber& g = fibers[base + i];
    if (f.kind == VOTE_BALLOT || f.kind == SYNCWARP) {
      g.result = ballot;
    } else {  // PTX shfl.sync: c = ((32 - width) << 8) | (up ? 0 : 31)
      const int w = f.width;
      if (w < 1 || w > 32 || (w & (w - 1)))
        fail_in_fiber(fmt("%s (line %d): width %d is not a power of two <= 32; %s",
                          kind_name[f.kind], f.line, w, where(f).c_str()));
      const int segmask = 32 - w, c = f.kind == SHFL_UP ? 0 : 31;
      const int maxLane = (i & segmask) | (c & ~segmask), minLane = i & segmask;
      const int b = g.arg;
      int j;
      bool pval;
      switch (f.kind) {
        case SHFL_UP: j = i - b; pval = j >= maxLane; break;
        case SHFL_DOWN: j = i + b; pval = j <= maxLane; break;
        case SHFL_XOR: j = i ^ b; pval = j <= maxLane; break;
        default: j = minLane | (b & 31 & ~segmask); pval = j <= maxLane; break;
      }
      if (!pval) j = i;
      if (j < 0 || j > 31 || !(f.mask >> j & 1))
        fail_in_fiber(fmt("%s (line %d, mask 0x%08x): lane %d reads lane %d, which is not in "
                          "the mask (undefined on a GPU); %s", kind_name[f.kind], f.line,
                          f.mask, i, j, where(g).c_str()));
      g.result = fibers[base + j].val;
    }
    g.st = RUNNABLE;
  }
}

[[noreturn]] void fail_outside(const std::string& why) {
  failed = true;
  error = why;
  throw 0;
}

void deadlock(const Fiber* any_bar) {
  char b1[96];
  std::string msg;
  if (any_bar) {
    msg = fmt("__syncthreads (line %d) never completes: ", any_bar->line);
  } else {
    msg = "deadlock in a warp exchange: ";
  }
  int shown = 0;
  for (const Fiber& f : fibers) {
    if (f.st == WAIT_BAR && any_bar && f.line == any_bar->line) continue;
    if (shown++ < 6)
      msg += fmt("thread (%u,%u,%u) %s; ", f.t.tid.x, f.t.tid.y, f.t.tid.z,
                 state_of(f, b1, sizeof b1));
  }
  msg += fmt("(%d threads not at that point) kernel %s, block (%u,%u,%u)", shown, kernel,
             fibers[0].t.bid.x, fibers[0].t.bid.y, fibers[0].t.bid.z);
  fail_outside(msg);
}

void run_block(uint3 bid, dim3 grid, dim3 block) {
  // Poison shared memory: floats of +8.4e37 in even blocks, -1.7e38 in odd ones,
  // so a read before its write wins a max or a min reduction in some block.
  const int parity = (bid.x + bid.y + bid.z) & 1;
  if (shared_lo != shared_hi) std::memset(shared_lo, parity ? 0xFE : 0x7E, shared_hi - shared_lo);
  for (unsigned i = 0; i < nthreads; ++i) {
    Fiber& f = fibers[i];
    f.t.bdim = block;
    f.t.gdim = grid;
    f.t.bid = bid;
    f.t.tid = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
    f.st = RUNNABLE;
    f.stack = stacks[i];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  std::vector<unsigned> order;
  for (;;) {
    order.clear();
    for (unsigned i = 0; i < nthreads; ++i)
      if (fibers[i].st == RUNNABLE) order.push_back(i);
    if (order.empty()) {
      unsigned bar = 0, exited = 0;
      const Fiber* first_bar = nullptr;
      for (const Fiber& f : fibers) {
        if (f.st == WAIT_BAR) {
          ++bar;
          if (!first_bar) first_bar = &f;
        }
        exited += f.st == EXITED;
      }
      if (exited == nthreads) return;
      if (bar != nthreads) deadlock(first_bar);
      for (const Fiber& f : fibers)
        if (f.line != first_bar->line) {
          char b1[96];
          fail_outside(fmt("divergent __syncthreads: thread (%u,%u,%u) at line %d, thread "
                           "(%u,%u,%u) %s; kernel %s, block (%u,%u,%u)", first_bar->t.tid.x,
                           first_bar->t.tid.y, first_bar->t.tid.z, first_bar->line,
                           f.t.tid.x, f.t.tid.y, f.t.tid.z,
                           state_of(f, b1, sizeof b1), kernel, bid.x, bid.y, bid.z));
        }
      for (Fiber& f : fibers) f.st = RUNNABLE;
      continue;
    }
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next_rand() % i]);
    for (unsigned i : order) {
      Fiber& f = fibers[i];
      if (f.st != RUNNABLE) continue;
      running = &f;
      cur = &f.t;
      swapcontext(&sched_ctx, &f.ctx);
      running = nullptr;
      cur = nullptr;
      if (failed) throw 0;
    }
  }
}

bool allowed(uintptr_t a, size_t n) {
  const uintptr_t e = a + n;
  if (running) {
    const uintptr_t lo = (uintptr_t)running->stack, hi = lo + STACK;
    if (a >= lo && e <= hi) return true;
    const uintptr_t t = (uintptr_t)&running->t;
    if (a >= t && e <= t + sizeof(Thread)) return true;
  }
  if (a >= (uintptr_t)&cur && e <= (uintptr_t)&cur + sizeof cur) return true;
  if (a >= (uintptr_t)shared_lo && e <= (uintptr_t)shared_hi) return true;
  for (const Region& r : regions)
    if (a >= r.lo && e <= r.hi) return true;
  return false;
}

void check(uintptr_t a, size_t n, bool store) {
  if (!running || allowed(a, n)) return;
  std::string near = "no buffer of the launch near it";
  uintptr_t best = UINTPTR_MAX;
  for (const Region& r : regions) {
    uintptr_t d = a < r.lo ? r.lo - a : (a >= r.hi ? a - r.hi + 1 : 0);
    if (d < best) {
      best = d;
      near = a < r.lo ? fmt("%lu bytes before %s [0x%lx, 0x%lx)", (unsigned long)(r.lo - a),
                            r.name.c_str(), (unsigned long)r.lo, (unsigned long)r.hi)
                      : fmt("%lu bytes past the end of %s [0x%lx, 0x%lx)",
                            (unsigned long)(a - r.hi), r.name.c_str(),
                            (unsigned long)r.lo, (unsigned long)r.hi);
    }
  }
  fail_in_fiber(fmt("memcheck: invalid %s of %zu bytes at 0x%lx (%s); %s",
                    store ? "store" : "load", n, (unsigned long)a, near.c_str(),
                    where(*running).c_str()));
}

}  // namespace

void syncthreads(int line) {
  Fiber& f = *running;
  f.line = line;
  f.st = WAIT_BAR;
  yield();
}

uint64_t exchange(int line, Kind kind, unsigned mask, uint64_t value, int arg, int width) {
  Fiber& f = *running;
  const unsigned lane = linear(f.t) & 31;
  if (!(mask >> lane & 1))
    fail_in_fiber(fmt("%s (line %d): mask 0x%08x does not name the calling lane %u; %s",
                      kind_name[kind], line, mask, lane, where(f).c_str()));
  f.line = line;
  f.kind = kind;
  f.mask = mask;
  f.val = value;
  f.arg = arg;
  f.width = width;
  f.st = WAIT_X;
  try_complete(f);
  yield();
  return f.result;
}

}  // namespace emu

using namespace emu;

extern "C" {

void emu_add_region(uintptr_t lo, uintptr_t hi, const char* name) {
  regions.push_back(Region{lo, hi, name});
}
void emu_clear_regions() { regions.clear(); }
const char* emu_error() { return error.c_str(); }

// Run fn over grid x block; 0 on success, else emu_error() says why.
int emu_launch(const char* name, void (*call)(void*, void**), char* bss_lo, char* bss_hi,
               void* fn, void** params, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
               unsigned by, unsigned bz, uint64_t seed) {
  kernel = name;
  kernel_call = call;
  shared_lo = bss_lo;
  shared_hi = bss_hi;
  kernel_fn = fn;
  kernel_params = params;
  failed = false;
  error.clear();
  rng = seed * 0x9E3779B97F4A7C15ull + 1;
  nthreads = bx * by * bz;
  if (nthreads == 0 || nthreads > 1024) {
    error = fmt("%s: %u threads a block (1..1024)", name, nthreads);
    return 1;
  }
  fibers.assign(nthreads, Fiber{});
  while (stacks.size() < nthreads) stacks.push_back(static_cast<char*>(std::malloc(STACK)));
  try {
    for (unsigned z = 0; z < gz; ++z)
      for (unsigned y = 0; y < gy; ++y)
        for (unsigned x = 0; x < gx; ++x) run_block(uint3{x, y, z}, dim3{gx, gy, gz},
                                                    dim3{bx, by, bz});
  } catch (int) {
    return 1;
  }
  return 0;
}

// memcheck: -fsanitize=kernel-address makes the kernel TU call these on every access.
#define EMU_CHECK(n)                                                        \
  void __asan_load##n##_noabort(uintptr_t a) { check(a, n, false); }       \
  void __asan_store##n##_noabort(uintptr_t a) { check(a, n, true); }
EMU_CHECK(1)
EMU_CHECK(2)
EMU_CHECK(4)
EMU_CHECK(8)
EMU_CHECK(16)
void __asan_loadN_noabort(uintptr_t a, size_t n) { check(a, n, false); }
void __asan_storeN_noabort(uintptr_t a, size_t n) { check(a, n, true); }
void __asan_handle_no_return() {}
}

// The SIMT emulator's scheduler, barriers, shuffles and guarded memory (see simt.hpp).
#include "simt.hpp"
#include "launch.hpp"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>
#include <numeric>
#include <random>
#include <vector>

namespace simt {
namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kMaxSharedBytes = 227 * 1024;  // per block on sm_80 / sm_90, opted in
constexpr uint32_t kPoison = 0x7fc0dead;        // a quiet NaN: memory nobody wrote

enum class State { Ready, AtBlock, AtWarp, Done };

struct Thread {
  ucontext_t ctx;
  dim3 idx;
  State state = State::Ready;
  const char* file = "";  // call site of the barrier the thread waits at
  int line = 0;
  unsigned mask = 0;      // warp barrier: lanes named
  bool shuffle = false;   // warp barrier: a shuffle (true) or __syncwarp
  float value = 0.f, result = 0.f;
  int lane_mask = 0;
};

struct Grid {
  dim3 grid, block, bidx;
  std::vector<Thread> threads;
  std::vector<char> stacks;
  ucontext_t main;
  int current = -1;
  void* shared = nullptr;
  const std::function<void()>* body = nullptr;
  std::string error;
};

Grid* g_grid = nullptr;          // the launch in progress (the emulator is single-threaded)
std::vector<Buffer*> g_buffers;  // guarded allocations, for fault messages
Guard g_guard = Guard::End;
sigjmp_buf g_fault_jump;
char g_fault_message[512];
struct sigaction g_previous_segv, g_previous_bus;

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

Thread& me() { return g_grid->threads[g_grid->current]; }

void park(State state) {
  Thread& t = me();
  t.state = state;
  swapcontext(&t.ctx, &g_grid->main);
}

void fail(const std::string& message) {  // from inside a thread: stop the launch
  if (g_grid->error.empty()) g_grid->error = message;
  park(State::Done);
}

void trampoline() {
  (*g_grid->body)();
  me().state = State::Done;  // uc_link returns to the scheduler
}

std::string site(const Thread& t) {
  const char* slash = strrchr(t.file, '/');
  return std::string(slash ? slash + 1 : t.file) + ":" + std::to_string(t.line);
}

bool same_site(const Thread& a, const Thread& b) { return a.line == b.line && strcmp(a.file, b.file) == 0; }

std::string where(const Thread& t) {
  return "block " + std::to_string(g_grid->bidx.x) + ", thread " + std::to_string(t.idx.x);
}

void on_fault(int sig, siginfo_t* info, void*) {
  const char* addr = static_cast<const char*>(info->si_addr);
  for (const Buffer* b : g_buffers) {
    const char* lo = static_cast<const char*>(b->mapped);
    if (addr < lo || addr >= lo + b->mapped_bytes) continue;
    const long off = static_cast<long>(addr - b->data);
    const Grid* grid = g_grid;
    snprintf(g_fault_message, sizeof g_fault_message,
             "out-of-bounds access to %s (%zu bytes): byte offset %ld, by block %u, thread %u", b->name.c_str(),
             b->bytes, off, grid ? grid->bidx.x : 0u,
             grid && grid->current >= 0 ? grid->threads[grid->current].idx.x : 0u);
    siglongjmp(g_fault_jump, 1);
  }
  // not ours: restore the previous handler and let the access fault again
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  sigaction(SIGBUS, &g_previous_bus, nullptr);
  (void)sig;
}

void fill_poison(char* p, size_t bytes) {
  for (size_t i = 0; i + 4 <= bytes; i += 4) memcpy(p + i, &kPoison, 4);
}

bool poisoned(const char* p, size_t bytes, size_t phase) {  // phase: offset of p from a 4-byte boundary
  const char* pattern = reinterpret_cast<const char*>(&kPoison);
  for (size_t i = 0; i < bytes; ++i)
    if (p[i] != pattern[(phase + i) % 4]) return false;
  return true;
}

// Checks the warp barriers the lanes of warp w0 / 32 wait at; releases them when complete. Returns
// whether any lane was released (false also on an error, which is then set).
bool release_warp(Grid& g, int w0) {
  const int lanes = std::min(32, static_cast<int>(g.threads.size()) - w0);
  bool waiting = false;
  for (int l = 0; l < lanes; ++l) {
    Thread& t = g.threads[w0 + l];
    if (t.state != State::AtWarp) continue;
    waiting = true;
    const char* what = t.shuffle ? "__shfl_xor_sync" : "__syncwarp";
    if (lanes < 32 && (t.mask >> lanes) != 0) {
      g.error = std::string(what) + " at " + site(t) + " names lanes beyond the last thread of a partial warp (" +
                where(t) + ")";
      return false;
    }
    for (int m = 0; m < lanes; ++m) {
      if (!((t.mask >> m) & 1u)) continue;
      const Thread& o = g.threads[w0 + m];
      std::string problem;
      if (o.state == State::Done) problem = "has exited";
      else if (o.state == State::AtBlock) problem = "waits at __syncthreads (" + site(o) + ")";
      else if (o.shuffle != t.shuffle || !same_site(o, t) || o.mask != t.mask)
        problem = "waits at another warp barrier (" + site(o) + ")";
      if (!problem.empty()) {
        g.error = std::string(what) + " at " + site(t) + " (" + where(t) + ") never completes: lane " +
                  std::to_string(m) + " of its mask " + problem;
        return false;
      }
    }
  }
  if (!waiting) return false;
  // every waiting lane's group is complete: exchange values, then release
  for (int l = 0; l < lanes; ++l) {
    Thread& t = g.threads[w0 + l];
    if (t.state != State::AtWarp || !t.shuffle) continue;
    const int src = l ^ t.lane_mask;
    if (src >= lanes || !((t.mask >> src) & 1u)) {
      g.error = "__shfl_xor_sync at " + site(t) + " reads lane " + std::to_string(src) + " outside its mask (" +
                where(t) + ")";
      return false;
    }
    t.result = g.threads[w0 + src].value;
  }
  for (int l = 0; l < lanes; ++l)
    if (g.threads[w0 + l].state == State::AtWarp) g.threads[w0 + l].state = State::Ready;
  return true;
}

// Every thread has exited or waits at __syncthreads: checks that all wait at the same one and
// releases them. Returns false when all have exited or on an error (then set).
bool release_block(Grid& g) {
  const Thread* first = nullptr;
  for (const Thread& t : g.threads) {
    if (t.state != State::AtBlock) continue;
    if (!first) first = &t;
    else if (!same_site(t, *first)) {
      g.error = "threads wait at different __syncthreads: " + site(*first) + " (" + where(*first) + ") and " +
                site(t) + " (" + where(t) + ")";
      return false;
    }
  }
  if (!first) return false;  // all done
  for (const Thread& t : g.threads) {
    if (t.state == State::Done) {
      g.error = "__syncthreads at " + site(*first) + " is not reached by every thread: " + where(t) + " has exited";
      return false;
    }
  }
  for (Thread& t : g.threads) t.state = State::Ready;
  return true;
}

// A fresh fiber for thread i that runs the kernel body, then returns to the scheduler.
__attribute__((noinline)) void start_thread(Grid& grid, unsigned i) {
  Thread& t = grid.threads[i];
  t = Thread{};
  t.idx.x = i;
  getcontext(&t.ctx);  // only to initialise the context: it does not return twice here
  t.ctx.uc_stack.ss_sp = grid.stacks.data() + i * kStackBytes;
  t.ctx.uc_stack.ss_size = kStackBytes;
  t.ctx.uc_link = &grid.main;
  makecontext(&t.ctx, trampoline, 0);
}

// Runs every block of the launch in turn; returns "" or the first error. Within a block, one warp
// at a time runs (its lanes in `order`, its shuffles resolved as they come) until every lane waits
// at __syncthreads or has exited, then the next warp: warps in `order` too, so an access racing with
// another warp's between two __syncthreads lands on different sides of it in different orders.
std::string run_blocks(Grid& grid, Buffer& shared, size_t shared_bytes, Order order, uint64_t seed) {
  const unsigned threads = grid.block.x;
  std::mt19937_64 rng(seed);
  std::vector<int> sequence(threads), warps;
  std::iota(sequence.begin(), sequence.end(), 0);
  if (order == Order::Descending) std::reverse(sequence.begin(), sequence.end());
  for (unsigned i = 0; i < grid.grid.x && grid.error.empty(); ++i) {
    const unsigned b = order == Order::Descending ? grid.grid.x - 1 - i : i;
    grid.bidx.x = b;
    shared.poison();  // shared memory starts undefined in every block
    for (unsigned t = 0; t < threads; ++t) start_thread(grid, t);
    while (grid.error.empty()) {
      if (order == Order::Shuffled) std::shuffle(sequence.begin(), sequence.end(), rng);
      warps.clear();
      for (int t : sequence)
        if (std::find(warps.begin(), warps.end(), t / 32 * 32) == warps.end()) warps.push_back(t / 32 * 32);
      for (int w0 : warps) {
        do {
          for (int t : sequence) {
            if (t / 32 * 32 != w0 || grid.threads[t].state != State::Ready) continue;
            grid.current = t;
            swapcontext(&grid.main, &grid.threads[t].ctx);
            if (!grid.error.empty()) break;
          }
        } while (grid.error.empty() && release_warp(grid, w0));
        if (!grid.error.empty()) break;
      }
      if (!grid.error.empty() || !release_block(grid)) break;
    }
    grid.current = -1;
    if (grid.error.empty() && !shared.canaries_intact())
      grid.error = "a write outside dynamic shared memory (" + std::to_string(shared_bytes) + " bytes) in block " +
                   std::to_string(b);
  }
  return grid.error;
}

}  // namespace

const dim3& thread_idx() { return me().idx; }
const dim3& block_idx() { return g_grid->bidx; }
const dim3& block_dim() { return g_grid->block; }
const dim3& grid_dim() { return g_grid->grid; }
void* dynamic_shared() { return g_grid->shared; }

void sync_block(const char* file, int line) {
  me().file = file;
  me().line = line;
  park(State::AtBlock);
}

void sync_warp(unsigned mask, const char* file, int line) {
  Thread& t = me();
  t.file = file;
  t.line = line;
  t.mask = mask;
  t.shuffle = false;
  park(State::AtWarp);
}

float shfl_xor(unsigned mask, float value, int lane_mask, int width, const char* file, int line) {
  Thread& t = me();
  t.file = file;
  t.line = line;
  if (width != 32) fail("__shfl_xor_sync with width != 32 is not emulated (" + site(t) + ")");
  t.mask = mask;
  t.shuffle = true;
  t.value = value;
  t.lane_mask = lane_mask;
  park(State::AtWarp);
  return me().result;
}

void set_guard(Guard guard) { g_guard = guard; }

Buffer::Buffer(size_t n, const std::string& label) : bytes(n), name(label) {
  const size_t page = page_size();
  const size_t inner = std::max<size_t>(page, ((n + page - 1) / page) * page);
  mapped_bytes = inner + 2 * page;
  mapped = mmap(nullptr, mapped_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  char* base = static_cast<char*>(mapped);
  mprotect(base, page, PROT_NONE);                 // guard before
  mprotect(base + page + inner, page, PROT_NONE);  // guard after
  // End: the data's last byte touches the guard after it; Start: its first byte follows the guard before
  data = g_guard == Guard::End ? base + page + inner - n : base + page;
  fill_poison(base + page, inner);
  g_buffers.push_back(this);
}

Buffer::~Buffer() {
  g_buffers.erase(std::remove(g_buffers.begin(), g_buffers.end(), this), g_buffers.end());
  munmap(mapped, mapped_bytes);
}

bool Buffer::canaries_intact() const {
  const char* inner = static_cast<const char*>(mapped) + page_size();
  const char* end = static_cast<const char*>(mapped) + mapped_bytes - page_size();
  return poisoned(inner, static_cast<size_t>(data - inner), 0) &&
         poisoned(data + bytes, static_cast<size_t>(end - data - bytes), static_cast<size_t>(data + bytes - inner));
}

void Buffer::poison() { fill_poison(data, bytes); }

std::string launch(unsigned blocks, unsigned threads, size_t shared_bytes, Order order, uint64_t seed,
                   const std::function<void()>& body) {
  if (threads == 0 || threads > 1024) return "block size must be 1 .. 1024 threads, not " + std::to_string(threads);
  if (shared_bytes > kMaxSharedBytes)
    return "dynamic shared memory of " + std::to_string(shared_bytes) + " bytes exceeds the 227 KiB of an sm_90 block";
  if (g_grid) return "a launch is already in progress";
  Grid grid;
  grid.grid.x = blocks;
  grid.block.x = threads;
  grid.body = &body;
  grid.threads.resize(threads);
  grid.stacks.resize(threads * kStackBytes);
  Buffer shared(shared_bytes, "dynamic shared memory");
  grid.shared = shared.data;
  struct sigaction action {};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  g_grid = &grid;
  sigaction(SIGSEGV, &action, &g_previous_segv);
  sigaction(SIGBUS, &action, &g_previous_bus);
  std::string error;
  if (sigsetjmp(g_fault_jump, 1) == 0) error = run_blocks(grid, shared, shared_bytes, order, seed);
  else error = g_fault_message;  // an out-of-bounds access jumped back here
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  sigaction(SIGBUS, &g_previous_bus, nullptr);
  g_grid = nullptr;
  return error;
}

}  // namespace simt

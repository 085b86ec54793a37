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
#include <numeric>
#include <random>
#include <vector>

namespace simt {
namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kMaxSharedBytes = 227 * 1024;  // per block on sm_80 / sm_90, opted in
constexpr uint32_t kPoison = 0x7fc0dead;  // a quiet NaN: memory nobody wrote

enum class State { Ready, AtBlock, AtWarp, Done };

struct Thread {
  ucontext_t ctx;
  dim3 idx;
  State state = State::Ready;
  const char* file = "";  // call site of the barrier the thread waits at
  int line = 0;
  unsigned mask = 0;     // warp barrier: lanes named
  bool shuffle = false;  // warp barrier: a shuffle (true) or __syncwarp
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

std::string where(const Thread& t) {
  return "block " + std::to_string(g_grid->bidx.x) + ", thread " + std::to_string(t.idx.x);
}

void on_fault(int sig, siginfo_t* info, void*) {
  const char* addr = static_cast<const char*>(info->si_addr);
  for (const Buffer* b : g_buffers) {
    const char* lo = b->data - page_size() - b->slack;
    const char* hi = b->data + b->bytes + page_size();
    if (addr < lo || addr >= hi) continue;
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

// Checks and releases the barriers every thread now waits at; false when none could be released.
bool release(Grid& g) {
  const int n = static_cast<int>(g.threads.size());
  bool released = false;
  for (int w0 = 0; w0 < n; w0 += 32) {
    const int lanes = std::min(32, n - w0);
    for (int l = 0; l < lanes; ++l) {
      Thread& t = g.threads[w0 + l];
      if (t.state != State::AtWarp) continue;
      const char* what = t.shuffle ? "__shfl_xor_sync" : "__syncwarp";
      if (lanes < 32 && (t.mask >> lanes) != 0) {
        g.error = std::string(what) + " at " + site(t) + " names lanes beyond the last thread of a partial warp (" + where(t) + ")";
        return false;
      }
      for (int m = 0; m < lanes; ++m) {
        if (!((t.mask >> m) & 1u)) continue;
        const Thread& o = g.threads[w0 + m];
        std::string problem;
        if (o.state == State::Done) problem = "has exited";
        else if (o.state == State::AtBlock) problem = "waits at __syncthreads (" + site(o) + ")";
        else if (o.shuffle != t.shuffle || o.line != t.line || o.file != t.file || o.mask != t.mask)
          problem = "waits at another warp barrier (" + site(o) + ")";
        if (!problem.empty()) {
          g.error = std::string(what) + " at " + site(t) + " (" + where(t) + ") never completes: lane " +
                    std::to_string(m) + " of its mask " + problem;
          return false;
        }
      }
    }
    // every waiting lane's group is complete: exchange values, then release
    for (int l = 0; l < lanes; ++l) {
      Thread& t = g.threads[w0 + l];
      if (t.state != State::AtWarp || !t.shuffle) continue;
      const int src = l ^ t.lane_mask;
      if (src >= lanes || !((t.mask >> src) & 1u)) {
        g.error = "__shfl_xor_sync at " + site(t) + " reads lane " + std::to_string(src) + " outside its mask (" + where(t) + ")";
        return false;
      }
      t.result = g.threads[w0 + src].value;
    }
    for (int l = 0; l < lanes; ++l) {
      Thread& t = g.threads[w0 + l];
      if (t.state == State::AtWarp) { t.state = State::Ready; released = true; }
    }
  }
  if (released) return true;
  // no warp barrier pending: every live thread must wait at the same __syncthreads
  const Thread* first = nullptr;
  for (const Thread& t : g.threads) {
    if (t.state != State::AtBlock) continue;
    if (!first) first = &t;
    else if (t.line != first->line || t.file != first->file) {
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
  t.line = line;
  t.mask = mask;
  t.shuffle = true;
  t.value = value;
  t.lane_mask = lane_mask;
  park(State::AtWarp);
  return me().result;
}

Buffer::Buffer(size_t n, const std::string& label) : bytes(n), name(label) {
  const size_t page = page_size();
  const size_t body = ((n + 15) / 16) * 16;                     // 16-byte aligned start
  const size_t inner = ((body + page - 1) / page) * page;
  mapped = mmap(nullptr, inner + 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapped == MAP_FAILED) throw std::bad_alloc();
  char* base = static_cast<char*>(mapped);
  mprotect(base, page, PROT_NONE);                // guard before
  mprotect(base + page + inner, page, PROT_NONE);  // guard after
  data = base + page + inner - body;  // the data end within 15 bytes of the guard after it
  slack = static_cast<size_t>(data - (base + page));
  fill_poison(base + page, inner);
  g_buffers.push_back(this);
}

Buffer::~Buffer() {
  g_buffers.erase(std::remove(g_buffers.begin(), g_buffers.end(), this), g_buffers.end());
  const size_t page = page_size();
  const size_t inner = ((((bytes + 15) / 16) * 16 + page - 1) / page) * page;
  munmap(mapped, inner + 2 * page);
}

bool Buffer::canaries_intact() const {
  const char* start = data - slack;
  const size_t tail = ((bytes + 15) / 16) * 16 - bytes;
  for (size_t i = 0; i + 4 <= slack; i += 4)
    if (memcmp(start + i, &kPoison, 4) != 0) return false;
  for (size_t i = 0; i < tail; ++i)
    if (data[bytes + i] != reinterpret_cast<const char*>(&kPoison)[(bytes + i) % 4]) return false;
  return true;
}

void Buffer::poison() { fill_poison(data, bytes); }

namespace {

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

// Runs every block of the launch in turn; returns "" or the first error.
std::string run_blocks(Grid& grid, Buffer& shared, size_t shared_bytes, Order order, uint64_t seed) {
  const unsigned threads = grid.block.x;
  std::mt19937_64 rng(seed);
  std::vector<int> sequence(threads);
  std::iota(sequence.begin(), sequence.end(), 0);
  if (order == Order::Descending) std::reverse(sequence.begin(), sequence.end());
  for (unsigned b = 0; b < grid.grid.x && grid.error.empty(); ++b) {
    grid.bidx.x = b;
    shared.poison();  // shared memory starts undefined in every block
    for (unsigned i = 0; i < threads; ++i) start_thread(grid, i);
    while (grid.error.empty()) {
      if (order == Order::Shuffled) std::shuffle(sequence.begin(), sequence.end(), rng);
      for (int i : sequence) {
        if (grid.threads[i].state != State::Ready) continue;
        grid.current = i;
        swapcontext(&grid.main, &grid.threads[i].ctx);
        if (!grid.error.empty()) break;
      }
      if (!grid.error.empty() || !release(grid)) break;
    }
    grid.current = -1;
    if (grid.error.empty() && !shared.canaries_intact())
      grid.error = "a write past the end of dynamic shared memory (" + std::to_string(shared_bytes) + " bytes) in block " + std::to_string(b);
  }
  return grid.error;
}

}  // namespace

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
  Buffer shared(shared_bytes == 0 ? 16 : shared_bytes, "dynamic shared memory");
  grid.shared = shared.data;
  struct sigaction action {};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO;
  sigemptyset(&action.sa_mask);
  g_grid = &grid;
  sigaction(SIGSEGV, &action, &g_previous_segv);
  sigaction(SIGBUS, &action, &g_previous_bus);
  std::string error = sigsetjmp(g_fault_jump, 1) == 0 ? run_blocks(grid, shared, shared_bytes, order, seed)
                                                      : std::string(g_fault_message);
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  sigaction(SIGBUS, &g_previous_bus, nullptr);
  g_grid = nullptr;
  return error;
}

}  // namespace simt

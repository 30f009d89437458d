// The scheduler behind cuda_emulator.h, and the few CUDA runtime calls the
// kernels' host code makes, answered for the emulated device.
#include "cuda_emulator.h"

#include <c10/core/Allocator.h>
#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <csetjmp>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace pydl {
namespace emulation {
namespace {

constexpr size_t kStackBytes = 256 * 1024;

enum class Wait { None, Block, Warp, Grid, Poll, Done };

struct CopyJob {
  void* dst;
  const void* src;
  bool valid;
};

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  uint3 thread{}, block{};
  int block_slot = 0;  // index of its block among the running blocks
  int linear = 0;      // thread index within the block
  Wait wait = Wait::None;
  bool polling = false;  // parked at poll_wait last: its poll has not succeeded yet
  const char* warp_what = nullptr;
  std::vector<CopyJob> open_group;
  std::vector<std::vector<CopyJob>> committed;
};

// `bytes` (rounded up to 16) of 0xFF bytes, 16-byte aligned, ending right
// before an inaccessible page (a read or write past the end faults), or,
// with the threads run in reverse order, starting right after one (a read
// before the start faults).
struct GuardedMapping {
  char* base = nullptr;
  size_t length = 0;
  char* data = nullptr;

  explicit GuardedMapping(size_t bytes) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t used = (bytes + 15) / 16 * 16;
    const size_t pages = (used + page - 1) / page;
    length = (pages + 1) * page;
    void* mapped =
        mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) throw std::bad_alloc();
    base = static_cast<char*>(mapped);
    if (device().reverse_order) {
      mprotect(base, page, PROT_NONE);
      data = base + page;
    } else {
      mprotect(base + pages * page, page, PROT_NONE);
      data = base + pages * page - used;
    }
    std::memset(data, 0xFF, used);
  }
  ~GuardedMapping() { munmap(base, length); }
  GuardedMapping(const GuardedMapping&) = delete;
  GuardedMapping& operator=(const GuardedMapping&) = delete;
};

// Host tensors as "device memory": every allocation guarded and starting as
// 0xFF bytes (NaN), so a kernel reading past a tensor faults and an output
// element no thread wrote reads as NaN.
// (The context is the data pointer itself, as raw_allocate callers require.)
class GuardedHostAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return {nullptr, nullptr, &free_mapping, c10::Device(c10::DeviceType::CPU)};
    auto mapping = std::make_unique<GuardedMapping>(n);
    void* data = mapping->data;
    {
      const std::lock_guard<std::mutex> lock(mutex());
      live()[data] = std::move(mapping);
    }
    return {data, data, &free_mapping, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_mapping; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::map<void*, std::unique_ptr<GuardedMapping>>& live() {
    static std::map<void*, std::unique_ptr<GuardedMapping>> mappings;
    return mappings;
  }
  static void free_mapping(void* data) {
    if (data == nullptr) return;
    const std::lock_guard<std::mutex> lock(mutex());
    live().erase(data);
  }
};

struct Block {
  uint3 index{};
  std::vector<Fiber*> threads;
  std::unique_ptr<GuardedMapping> smem;  // the block's dynamic shared memory
  std::vector<std::vector<unsigned char>> warp_slots;  // per warp: 32 lanes' bytes
};

struct Run {
  dim3 grid, block;
  bool cooperative = false;
  size_t smem_bytes = 0;
  const std::function<void()>* body = nullptr;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  std::vector<std::unique_ptr<Fiber>> fibers;
  std::vector<Block> blocks;
  std::string error;
  // Whether this pass changed anything: a thread ran that was not polling,
  // or a poll succeeded (see poll_wait).
  bool progress = false;
};

Run* g_run = nullptr;
// A fault inside a thread of the running kernel jumps back to run_grid.
sigjmp_buf g_fault_jump;
std::string g_fault;

void on_fault(int sig, siginfo_t* info, void*) {
  if (g_run != nullptr && g_run->current != nullptr) {
    std::ostringstream s;
    s << (sig == SIGSEGV ? "invalid memory access" : "bus error") << " at address "
      << info->si_addr;
    g_fault = s.str();
    siglongjmp(g_fault_jump, 1);
  }
  signal(sig, SIG_DFL);  // not a kernel's fault: crash as usual
  raise(sig);
}

// Installs on_fault for SIGSEGV / SIGBUS while it lives.
class FaultHandlers {
 public:
  FaultHandlers() {
    struct sigaction action {};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &old_segv_);
    sigaction(SIGBUS, &action, &old_bus_);
  }
  ~FaultHandlers() {
    sigaction(SIGSEGV, &old_segv_, nullptr);
    sigaction(SIGBUS, &old_bus_, nullptr);
  }

 private:
  struct sigaction old_segv_ {}, old_bus_ {};
};
std::mutex g_launch_mutex;
int64_t g_launches = 0;
int64_t g_blocks = 0;
int64_t g_mmas = 0;
int64_t g_grid_barriers = 0;
int64_t g_wavefronts_ideal = 0, g_wavefronts_actual = 0;
std::map<const void*, ErasedKernel>& erased_kernels() {
  static std::map<const void*, ErasedKernel> kernels;
  return kernels;
}

Fiber& self() {
  if (g_run == nullptr || g_run->current == nullptr) {
    throw std::runtime_error("cuda emulator: a device builtin was used outside a kernel");
  }
  return *g_run->current;
}

std::string where(const Fiber& f) {
  std::ostringstream s;
  s << "block (" << f.block.x << "," << f.block.y << "," << f.block.z << ") thread ("
    << f.thread.x << "," << f.thread.y << "," << f.thread.z << ")";
  return s.str();
}

// Records the first error; the fiber stops and the launch fails with it.
[[noreturn]] void fail_here(const std::string& message) {
  Fiber& f = self();
  if (g_run->error.empty()) g_run->error = message + " (" + where(f) + ")";
  f.wait = Wait::Done;
  setcontext(&g_run->scheduler);
  std::abort();  // unreachable
}

void park(Wait wait, const char* what = nullptr) {
  Fiber& f = self();
  if (f.polling && wait != Wait::Poll) g_run->progress = true;  // its poll succeeded
  f.polling = wait == Wait::Poll;
  f.wait = wait;
  f.warp_what = what;
  swapcontext(&f.context, &g_run->scheduler);  // resumed only while no error is set
}

void fiber_main() {
  Fiber& f = *g_run->current;
  try {
    (*g_run->body)();
  } catch (const std::exception& e) {
    if (g_run->error.empty()) g_run->error = std::string(e.what()) + " (" + where(f) + ")";
  } catch (...) {
    if (g_run->error.empty()) g_run->error = "unknown exception (" + where(f) + ")";
  }
  f.wait = Wait::Done;
  g_run->progress = true;
  // returning resumes uc_link: the scheduler
}

void do_copy(const CopyJob& job) {
  if (job.valid) {
    std::memcpy(job.dst, job.src, 16);
  } else {
    std::memset(job.dst, 0, 16);
  }
}

const char* wait_name(Wait w) {
  switch (w) {
    case Wait::None: return "running";
    case Wait::Block: return "__syncthreads";
    case Wait::Warp: return "a warp collective";
    case Wait::Grid: return "grid.sync";
    case Wait::Poll: return "a poll no write has satisfied";
    case Wait::Done: return "exited";
  }
  return "?";
}

// Opens the warp barrier of lanes w0 .. w0 + 31 of block b when all of them
// wait at it; reports lanes that meet at different collectives, or a
// collective some lanes exited before. Returns whether it opened.
bool open_warp(Run& run, Block& b, int w0) {
  const int threads_per_block = static_cast<int>(b.threads.size());
  const int lanes = std::min(32, threads_per_block - w0);
  int at_warp = 0, done = 0;
  const char* what = nullptr;
  for (int l = 0; l < lanes; ++l) {
    const Fiber* f = b.threads[w0 + l];
    if (f->wait == Wait::Warp) {
      if (what != nullptr && std::strcmp(what, f->warp_what) != 0) {
        run.error = std::string("lanes of one warp wait at different warp collectives (") + what +
                    ", " + f->warp_what + ")";
        return false;
      }
      what = f->warp_what;
      ++at_warp;
    }
    if (f->wait == Wait::Done) ++done;
  }
  if (at_warp == 0) return false;
  if (at_warp + done == lanes && (done > 0 || lanes < 32)) {
    run.error = std::string(what) + " with " + std::to_string(lanes - done) +
                " lanes of a warp (the others exited or the warp is partial)";
    return false;
  }
  if (at_warp < lanes) return false;
  for (int l = 0; l < lanes; ++l) b.threads[w0 + l]->wait = Wait::None;
  return true;
}

// Opens block b's warp barriers and __syncthreads where all their threads
// have arrived; reports misuse. Returns whether one opened.
bool open_block_barriers(Run& run, Block& b) {
  bool opened = false;
  const int threads_per_block = static_cast<int>(b.threads.size());
  for (int w0 = 0; w0 < threads_per_block; w0 += 32) {
    opened = open_warp(run, b, w0) || opened;
    if (!run.error.empty()) return false;
  }
  int at_block = 0, done = 0;
  for (const Fiber* f : b.threads) {
    at_block += f->wait == Wait::Block;
    done += f->wait == Wait::Done;
  }
  if (at_block > 0 && at_block + done == threads_per_block) {
    if (done > 0) {
      run.error = "__syncthreads reached by " + std::to_string(at_block) + " of " +
                  std::to_string(threads_per_block) + " threads; the others exited";
      return false;
    }
    for (Fiber* f : b.threads) f->wait = Wait::None;
    opened = true;
  }
  return opened;
}

// Opens every barrier whose threads have all arrived; reports misuse.
// Returns false when nothing could be opened.
bool open_barriers(Run& run) {
  bool opened = false;
  for (Block& b : run.blocks) {
    opened = open_block_barriers(run, b) || opened;
    if (!run.error.empty()) return false;
  }
  int at_grid = 0, done = 0;
  for (const auto& f : run.fibers) {
    at_grid += f->wait == Wait::Grid;
    done += f->wait == Wait::Done;
  }
  if (at_grid > 0 && at_grid + done == static_cast<int>(run.fibers.size())) {
    if (done > 0) {
      run.error = "grid.sync reached by " + std::to_string(at_grid) + " of " +
                  std::to_string(run.fibers.size()) + " threads; the others exited";
      return false;
    }
    for (auto& f : run.fibers) f->wait = Wait::None;
    opened = true;
    ++g_grid_barriers;
  }
  return opened;
}

std::string deadlock_report(const Run& run) {
  std::ostringstream s;
  s << "deadlock: no barrier can open;";
  for (const Block& b : run.blocks) {
    std::map<std::string, int> counts;
    for (const Fiber* f : b.threads) ++counts[wait_name(f->wait)];
    s << " block (" << b.index.x << "," << b.index.y << "," << b.index.z << "):";
    for (const auto& kv : counts) s << " " << kv.second << " at " << kv.first << ";";
  }
  return s.str();
}

// Runs `f` until it parks; returns false when the launch has failed.
bool resume(Run& run, Fiber* f) {
  if (!f->polling) run.progress = true;
  run.current = f;
  swapcontext(&run.scheduler, &f->context);
  run.current = nullptr;
  return run.error.empty();
}

// One pass over the threads in lockstep: every runnable thread runs to its
// next barrier, warp after warp.
bool lockstep_pass(Run& run, bool reverse) {
  const size_t n = run.fibers.size();
  for (size_t k = 0; k < n; ++k) {
    Fiber* f = run.fibers[reverse ? n - 1 - k : k].get();
    if (f->wait != Wait::None) continue;
    if (!resume(run, f)) return false;
  }
  return true;
}

// One pass warp by warp: a warp runs (through its warp collectives) until
// all its lanes wait at a block or grid barrier, before the next warp starts:
// warps as far apart as the block barriers allow.
bool warp_greedy_pass(Run& run, bool reverse) {
  for (Block& b : run.blocks) {
    const int threads = static_cast<int>(b.threads.size());
    const int warps = (threads + 31) / 32;
    for (int wi = 0; wi < warps; ++wi) {
      const int w0 = 32 * (reverse ? warps - 1 - wi : wi);
      const int lanes = std::min(32, threads - w0);
      do {
        for (int li = 0; li < lanes; ++li) {
          Fiber* f = b.threads[w0 + (reverse ? lanes - 1 - li : li)];
          if (f->wait != Wait::None) continue;
          if (!resume(run, f)) return false;
        }
      } while (open_warp(run, b, w0));
      if (!run.error.empty()) return false;
    }
  }
  return true;
}

// One pass block by block: a block's threads run in lockstep, its own
// barriers opening, until none of them can go on, before the next block
// starts (DeviceConfig::block_greedy). The blocks in their slots' order
// (run_grid reverses it with reverse_order: last block first), each block's
// threads last-to-first with reverse_order.
bool block_greedy_pass(Run& run, bool reverse) {
  for (Block& b : run.blocks) {
    const size_t n = b.threads.size();
    while (true) {
      bool ran = false;
      for (size_t k = 0; k < n; ++k) {
        Fiber* f = b.threads[reverse ? n - 1 - k : k];
        if (f->wait != Wait::None) continue;
        ran = true;
        if (!resume(run, f)) return false;
      }
      const bool opened = open_block_barriers(run, b);
      if (!run.error.empty()) return false;
      if (!ran && !opened) break;
    }
  }
  return true;
}

// Runs the launched blocks' threads to completion (or to the first error).
void schedule(Run& run) {
  const DeviceConfig& config = device();
  while (true) {
    // Threads polling memory read it again in this pass.
    for (const auto& f : run.fibers) {
      if (f->wait == Wait::Poll) f->wait = Wait::None;
    }
    run.progress = false;
    const bool ok = config.block_greedy  ? block_greedy_pass(run, config.reverse_order)
                    : config.warp_greedy ? warp_greedy_pass(run, config.reverse_order)
                                         : lockstep_pass(run, config.reverse_order);
    if (!ok) return;
    bool all_done = true;
    for (const auto& f : run.fibers) all_done = all_done && f->wait == Wait::Done;
    if (all_done) return;
    // A pass in which only polls ran, and failed, changed nothing: the next
    // would be the same.
    if (!open_barriers(run) && !run.progress) {
      if (run.error.empty()) run.error = deadlock_report(run);
      return;
    }
    if (!run.error.empty()) return;
  }
}

void run_blocks(Run& run, const std::vector<uint3>& indices) {
  const int threads_per_block = static_cast<int>(run.block.x * run.block.y * run.block.z);
  run.fibers.clear();
  run.blocks.clear();
  run.blocks.resize(indices.size());
  for (size_t slot = 0; slot < indices.size(); ++slot) {
    Block& b = run.blocks[slot];
    b.index = indices[slot];
    b.smem = std::make_unique<GuardedMapping>(run.smem_bytes);
    b.warp_slots.assign((threads_per_block + 31) / 32, std::vector<unsigned char>());
    for (int t = 0; t < threads_per_block; ++t) {
      auto f = std::make_unique<Fiber>();
      f->block = b.index;
      f->block_slot = static_cast<int>(slot);
      f->linear = t;
      f->thread = {static_cast<unsigned>(t % run.block.x),
                   static_cast<unsigned>(t / run.block.x % run.block.y),
                   static_cast<unsigned>(t / (run.block.x * run.block.y))};
      f->stack.reset(new char[kStackBytes]);
      getcontext(&f->context);
      f->context.uc_stack.ss_sp = f->stack.get();
      f->context.uc_stack.ss_size = kStackBytes;
      f->context.uc_link = &run.scheduler;
      makecontext(&f->context, fiber_main, 0);
      b.threads.push_back(f.get());
      run.fibers.push_back(std::move(f));
    }
  }
  schedule(run);
}

}  // namespace

DeviceConfig& device() {
  static DeviceConfig config;
  return config;
}

int64_t launch_count() { return g_launches; }
int64_t block_count() { return g_blocks; }
int64_t mma_count() { return g_mmas; }
int64_t grid_barrier_count() { return g_grid_barriers; }
void count_mma() { ++g_mmas; }
void count_smem_wavefronts(int64_t ideal, int64_t actual) {
  g_wavefronts_ideal += ideal;
  g_wavefronts_actual += actual;
}
std::pair<int64_t, int64_t> smem_wavefronts() { return {g_wavefronts_ideal, g_wavefronts_actual}; }

uint3& thread_idx() { return self().thread; }
uint3& block_idx() { return self().block; }
dim3& block_dim() { return g_run->block; }
dim3& grid_dim() { return g_run->grid; }
int lane_id() { return self().linear % 32; }

void sync_threads() { park(Wait::Block); }
void sync_warp(unsigned mask) {
  if (mask != 0xffffffffu) throw std::runtime_error("only full-warp __syncwarp is emulated");
  park(Wait::Warp, "__syncwarp");
}
void sync_grid() {
  if (!g_run->cooperative) fail_here("grid.sync() in a kernel not launched cooperatively");
  park(Wait::Grid);
}
void poll_wait() { park(Wait::Poll); }
void poll_done() {
  Fiber& f = self();
  if (f.polling) g_run->progress = true;
  f.polling = false;
}
void* dynamic_smem() { return g_run->blocks[self().block_slot].smem->data; }
void require_shared(const void* p, size_t bytes, const char* what) {
  const auto* base = static_cast<const char*>(dynamic_smem());
  const auto* q = static_cast<const char*>(p);
  if (q < base || q + bytes > base + g_run->smem_bytes) {
    throw std::runtime_error(std::string(what) + ": address outside the block's shared memory");
  }
}

void warp_exchange(const void* mine, void* all, size_t bytes, const char* what) {
  Fiber& f = self();
  auto& slots = g_run->blocks[f.block_slot].warp_slots[f.linear / 32];
  if (slots.size() < 32 * bytes) slots.resize(32 * bytes);
  // Every lane writes, then (after the barrier) every lane reads; the second
  // barrier keeps a fast lane from overwriting its slot before all have read.
  std::memcpy(slots.data() + (f.linear % 32) * bytes, mine, bytes);
  park(Wait::Warp, what);
  std::memcpy(all, slots.data(), 32 * bytes);
  park(Wait::Warp, what);
}

void cp_async_16(void* smem, const void* gmem, bool valid) {
  if (device().eager_async_copies) {
    do_copy({smem, gmem, valid});
  } else {
    self().open_group.push_back({smem, gmem, valid});
  }
}
void cp_async_commit() {
  Fiber& f = self();
  f.committed.push_back(std::move(f.open_group));
  f.open_group.clear();
}
void cp_async_wait(int pending) {
  Fiber& f = self();
  while (static_cast<int>(f.committed.size()) > pending) {
    for (const CopyJob& job : f.committed.front()) do_copy(job);
    f.committed.erase(f.committed.begin());
  }
}

// Dynamic shared memory each kernel was granted with cudaFuncSetAttribute.
std::map<const void*, int>& granted_smem() {
  static std::map<const void*, int> granted;
  return granted;
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem_bytes, bool cooperative,
              const std::function<void()>& body) {
  // A kernel launching a kernel would wait on the mutex its own thread holds;
  // launches from other host threads wait their turn.
  thread_local bool launching = false;
  if (launching) throw std::runtime_error("cuda emulator: a launch inside a kernel");
  const std::lock_guard<std::mutex> lock(g_launch_mutex);
  launching = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{launching};
  if (block.x * block.y * block.z == 0 || block.x * block.y * block.z > 1024) {
    throw std::runtime_error("cuda emulator: invalid block size " +
                             std::to_string(block.x * block.y * block.z));
  }
  if (smem_bytes > static_cast<size_t>(device().max_smem_optin)) {
    throw std::runtime_error("cuda emulator: " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory exceed the device's " +
                             std::to_string(device().max_smem_optin));
  }
  if (smem_bytes > 48 * 1024 && granted_smem()[kernel] < static_cast<int>(smem_bytes)) {
    throw std::runtime_error("cuda emulator: a launch with " + std::to_string(smem_bytes) +
                             " bytes of dynamic shared memory, above 48 KB, without "
                             "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) for that kernel");
  }
  if (grid.y > 65535 || grid.z > 65535) throw std::runtime_error("cuda emulator: grid too large");
  Run run;
  run.grid = grid;
  run.block = block;
  run.smem_bytes = smem_bytes;
  run.cooperative = cooperative;
  run.body = &body;
  g_run = &run;
  ++g_launches;
  g_blocks += int64_t(grid.x) * grid.y * grid.z;
  const FaultHandlers handlers;
  if (sigsetjmp(g_fault_jump, 1) != 0) {  // a thread faulted: its kernel stops here
    const std::string where_text = where(*run.current);
    g_run = nullptr;
    throw std::runtime_error("cuda emulator: " + g_fault + " (" + where_text + ")");
  }
  try {
    std::vector<uint3> all;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) all.push_back({x, y, z});
    // Blocks of a normal launch run one at a time; reversed with the threads
    // (a kernel reading another block's output without a grid barrier races).
    if (device().reverse_order) std::reverse(all.begin(), all.end());
    if (cooperative) {
      run_blocks(run, all);
    } else {
      for (const uint3& b : all) {
        run_blocks(run, {b});
        if (!run.error.empty()) break;
      }
    }
  } catch (...) {
    g_run = nullptr;
    throw;
  }
  g_run = nullptr;
  if (!run.error.empty()) throw std::runtime_error("cuda emulator: " + run.error);
}

void guard_host_allocations(bool on) {
  static GuardedHostAllocator guarded;
  static c10::Allocator* const original = c10::GetAllocator(c10::DeviceType::CPU);
  c10::SetAllocator(c10::DeviceType::CPU, on ? &guarded : original, /*priority=*/255);
}

void register_erased_kernel(const void* kernel, ErasedKernel run) {
  erased_kernels()[kernel] = std::move(run);
}

}  // namespace emulation
}  // namespace pydl

// ---- the CUDA runtime calls of the kernels' host code ------------------------
// Defined here and bound inside this library (-Wl,-Bsymbolic), so the real
// runtime that torch loads is never asked about a GPU.
using pydl::emulation::device;

extern "C" {

cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "cuda emulator error"; }
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = device().sm_count; break;
    case cudaDevAttrCooperativeLaunch: *value = device().cooperative_launch ? 1 : 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = device().max_smem_optin; break;
    default: return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > device().max_smem_optin) return cudaErrorInvalidValue;
    pydl::emulation::granted_smem()[kernel] = value;
  }
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int threads,
                                                          size_t smem) {
  *blocks = (threads <= 1024 && smem <= static_cast<size_t>(device().max_smem_optin))
                ? device().max_blocks_per_sm
                : 0;
  return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t, cudaStreamCaptureStatus* status) {
  *status = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}
cudaError_t cudaLaunchCooperativeKernel(const void* func, dim3 grid, dim3 block, void** args,
                                        size_t smem, cudaStream_t) {
  auto& kernels = pydl::emulation::erased_kernels();
  const auto it = kernels.find(func);
  if (it == kernels.end()) {
    throw std::runtime_error("cuda emulator: cooperative launch of an unregistered kernel");
  }
  if (!device().cooperative_launch ||
      grid.x * grid.y * grid.z > static_cast<unsigned>(device().sm_count * device().max_blocks_per_sm)) {
    return cudaErrorCooperativeLaunchTooLarge;
  }
  const pydl::emulation::ErasedKernel& run = it->second;
  pydl::emulation::run_grid(func, grid, block, smem, true, [&] { run(args); });
  return cudaSuccess;
}

}  // extern "C"

// The collective engine behind `tinyvit_host::dist`: PyTorch's c10d (TCPStore for rendezvous,
// ProcessGroupGloo for collectives), as exported by the libtorch that tch already links.
//
// Every function catches every C++ exception and hands its message back as a malloc'ed string
// in `*err` (freed with `tvd_free_str`): no exception crosses into Rust.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace {

char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

// Runs `f`, turning an exception into a message in `*err` and the return value -1.
template <typename F>
int guard(char** err, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    *err = dup(e.what());
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return -1;
}

std::vector<at::Tensor> tensors(at::Tensor** ts, size_t n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    v.push_back(*ts[i]);
  }
  return v;
}

}  // namespace

struct tvd_store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct tvd_group {
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
};

extern "C" {

void tvd_free_str(char* s) { std::free(s); }

// Connects to the rendezvous store at host:port; rank 0 serves it (`is_server`). Every rank
// waits until all `world` ranks have connected, up to `timeout_ms`.
tvd_store* tvd_store_new(const char* host, uint16_t port, int world, int is_server,
                         int64_t timeout_ms, char** err) {
  tvd_store* out = nullptr;
  guard(err, [&] {
    c10d::TCPStoreOptions o;
    o.port = port;
    o.isServer = is_server != 0;
    o.numWorkers = static_cast<size_t>(world);
    o.waitWorkers = true;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto s = c10::make_intrusive<c10d::TCPStore>(std::string(host), o);
    out = new tvd_store{s};
  });
  return out;
}

// A second client of the same store, for another thread.
tvd_store* tvd_store_clone(tvd_store* s, char** err) {
  tvd_store* out = nullptr;
  guard(err, [&] { out = new tvd_store{s->store->clone()}; });
  return out;
}

void tvd_store_free(tvd_store* s) { delete s; }

int tvd_store_set(tvd_store* s, const char* key, const uint8_t* val, size_t len, char** err) {
  return guard(err, [&] { s->store->set(key, std::vector<uint8_t>(val, val + len)); });
}

// Reads `key`, waiting for it up to the store's timeout; `*out` is malloc'ed.
int tvd_store_get(tvd_store* s, const char* key, uint8_t** out, size_t* len, char** err) {
  return guard(err, [&] {
    auto v = s->store->get(key);
    *len = v.size();
    *out = static_cast<uint8_t*>(std::malloc(v.size() + 1));
    std::memcpy(*out, v.data(), v.size());
  });
}

int tvd_store_check(tvd_store* s, const char* key, int* present, char** err) {
  return guard(err, [&] { *present = s->store->check({key}) ? 1 : 0; });
}

int tvd_store_add(tvd_store* s, const char* key, int64_t delta, int64_t* value, char** err) {
  return guard(err, [&] { *value = s->store->add(key, delta); });
}

void tvd_store_set_timeout(tvd_store* s, int64_t timeout_ms) {
  s->store->setTimeout(std::chrono::milliseconds(timeout_ms));
}

// The gloo process group over `store` (keys under `prefix`). Its TCP device binds to the
// network interface `iface` when that is not empty, else to the address `hostname` (an address
// of this machine that the other ranks can reach).
tvd_group* tvd_group_new(tvd_store* s, const char* prefix, const char* iface, const char* hostname,
                         int rank, int world, int64_t timeout_ms, char** err) {
  tvd_group* out = nullptr;
  guard(err, [&] {
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (iface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    }
    auto store = c10::make_intrusive<c10d::PrefixStore>(prefix, s->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    out = new tvd_group{pg};
  });
  return out;
}

void tvd_group_free(tvd_group* g) { delete g; }

// Sums each tensor over the ranks, in place.
int tvd_allreduce_sum(tvd_group* g, at::Tensor** ts, size_t n, char** err) {
  return guard(err, [&] {
    auto v = tensors(ts, n);
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    g->pg->allreduce(v, o)->wait();
  });
}

// Copies rank `root`'s tensors into every rank's, in place.
int tvd_broadcast(tvd_group* g, at::Tensor** ts, size_t n, int root, char** err) {
  return guard(err, [&] {
    auto v = tensors(ts, n);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    for (auto& t : v) {
      std::vector<at::Tensor> one{t};
      g->pg->broadcast(one, o)->wait();
    }
  });
}

int tvd_barrier(tvd_group* g, char** err) {
  return guard(err, [&] { g->pg->barrier()->wait(); });
}

}  // extern "C"

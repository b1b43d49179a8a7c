// bench/gpu_bench.cc — scatterbrain_gpu_bench: exact attention against
// Scatterbrain, Performer and LSH on the CUDA backend (or the CPU backend,
// for a check without a GPU), for the GPU check (scripts/gpu/run) and
// bench/sdpa_compare.py's PyTorch numbers on the same shapes.
//
// Why not bench/bench.cc: that one is Google Benchmark on the CPU with
// host tensors; on a device the question is the kernels' time on tensors
// already there, in the wire dtypes, and the device memory they take, under
// a time budget that a lease can afford. So: tensors are device-resident
// refs (--memory=device; --memory=host times the uploads too), each
// configuration gets a fresh backend (its workspace high-water mark is that
// configuration's peak), warm-up calls, then timed synchronous ForwardBatch
// calls (host clock around the call, which returns when the device is done)
// until --repeats or --max_config_seconds; the median is reported.
//
// Shapes: B=1, H=8, d=dv=64, N in {1024, 4096, 16384, 65536}, iid N(0, 1)
// inputs (logit std 1 at tau = 1/sqrt(d)); budget 256 per query: performer
// m=256, scatterbrain m=128 + LSH clusters of 128 (k-means, calibrated),
// lsh clusters of 256. Precision = the refs' dtype (float32 or bfloat16,
// output in the same dtype). --json=PATH writes every row; configurations
// past --max_seconds are listed as skipped. Exit 0 when every configuration
// ran or was skipped for time, 1 on an error, 2 on a bad flag.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/dtype.h"
#include "kernels/backend.h"
#include "kernels/devices.h"
#include "kernels/error_estimate.h"
#include "kernels/params.h"

#ifdef SB_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace scatterbrain {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string backend = "cuda";
  std::vector<int64_t> sizes = {1024, 4096, 16384, 65536};
  std::vector<std::string> methods = {"exact", "scatterbrain", "performer",
                                      "lsh"};
  std::vector<std::string> precisions = {"float32", "bfloat16"};
  int64_t batch = 1, heads = 8, dim = 64;
  int warmup = 2, repeats = 10;
  double max_config_seconds = 4, max_seconds = 90;
  std::string memory;  // "" = device on cuda, host on cpu
  int error_rows = 8;
  std::string json;
};

// Settings of one method at budget 256.
bool ApplyMethod(const std::string& name, AttentionParams* p) {
  p->seed = 42;
  if (name == "exact") {
    p->method = Method::kExact;
  } else if (name == "performer") {
    p->method = Method::kPerformer;
    p->num_features = 256;
  } else if (name == "scatterbrain") {
    p->method = Method::kScatterbrain;
    p->num_features = 128;
    p->bucket_size = 128;
  } else if (name == "lsh") {
    p->method = Method::kLsh;
    p->bucket_size = 256;
  } else if (name == "local") {
    p->method = Method::kLocal;
    p->window = 256;
  } else {
    return false;
  }
  return true;
}

// n draws of N(0, 1): Box-Muller on SplitMix64, in parallel, the same for
// any thread count.
std::vector<float> Gaussian(int64_t n, uint64_t seed) {
  std::vector<float> x(static_cast<size_t>(n));
  auto mix = [](uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  const int threads = static_cast<int>(
      std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int64_t i = 2 * t; i < n; i += 2 * threads) {
        const uint64_t a = mix(seed ^ mix(static_cast<uint64_t>(i)));
        const double u1 = ((a >> 11) + 1.0) / 9007199254740993.0;
        const double u2 = (mix(a) >> 11) / 9007199254740992.0;
        const double r = std::sqrt(-2.0 * std::log(u1));
        x[i] = static_cast<float>(r * std::cos(6.283185307179586 * u2));
        if (i + 1 < n) {
          x[i + 1] = static_cast<float>(r * std::sin(6.283185307179586 * u2));
        }
      }
    });
  }
  for (std::thread& t : pool) t.join();
  return x;
}

// A tensor's bytes where the backend reads or writes them.
class Buffer {
 public:
  Buffer(int64_t bytes, bool device) : bytes_(bytes), device_(device) {
#ifdef SB_HAVE_CUDA
    if (device_) {
      if (cudaMalloc(&data_, static_cast<size_t>(bytes)) != cudaSuccess) {
        cudaGetLastError();
        data_ = nullptr;
      }
      return;
    }
#endif
    host_.resize(static_cast<size_t>(bytes));
    data_ = host_.data();
  }
  ~Buffer() {
#ifdef SB_HAVE_CUDA
    if (device_ && data_ != nullptr) cudaFree(data_);
#endif
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  bool ok() const { return data_ != nullptr; }
  void* data() const { return data_; }
  MemorySpace space() const {
    return device_ ? MemorySpace::kDevice : MemorySpace::kHost;
  }
  void Put(const std::vector<char>& bytes) {
#ifdef SB_HAVE_CUDA
    if (device_) {
      cudaMemcpy(data_, bytes.data(), bytes.size(), cudaMemcpyHostToDevice);
      return;
    }
#endif
    std::copy(bytes.begin(), bytes.end(), host_.begin());
  }
  void Get(void* dst) const {
#ifdef SB_HAVE_CUDA
    if (device_) {
      cudaMemcpy(dst, data_, static_cast<size_t>(bytes_),
                 cudaMemcpyDeviceToHost);
      return;
    }
#endif
    std::copy(host_.begin(), host_.end(), static_cast<char*>(dst));
  }

 private:
  int64_t bytes_;
  bool device_;
  void* data_ = nullptr;
  std::vector<char> host_;
};

struct Row {
  int64_t n;
  std::string method, precision, status = "ok";
  double ms = NAN, min_ms = NAN, err_est = NAN, speedup = NAN;
  int repeats = 0;
  int64_t peak_bytes = 0, workspace_bytes = 0, dense_bytes = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += (static_cast<unsigned char>(c) < 0x20) ? ' ' : c;
  }
  return out + "\"";
}

std::string JsonNumber(double x) {
  return std::isfinite(x) ? absl::StrCat(x) : "null";
}

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {}

  int Run() {
    const bool cuda = o_.backend == "cuda";
    if (o_.memory.empty()) o_.memory = cuda ? "device" : "host";
    device_ = o_.backend;
    if (cuda) {
      const std::vector<std::string> devices = CudaDevices();
      device_ = devices.empty() ? "no device" : devices[0];
    }
    std::printf(
        "scatterbrain_gpu_bench: backend %s (%s), B=%lld H=%lld d=%lld, "
        "budget 256, tensors in %s memory\n",
        o_.backend.c_str(), device_.c_str(), static_cast<long long>(o_.batch),
        static_cast<long long>(o_.heads), static_cast<long long>(o_.dim),
        o_.memory.c_str());
    absl::StatusOr<std::unique_ptr<Backend>> probe = NewBackend();
    if (!probe.ok()) {
      error_ = absl::StrCat("backend ", o_.backend,
                            " unavailable: ", probe.status().ToString());
      std::printf("%s\n", error_.c_str());
      WriteJson();
      return 1;
    }
    probe->reset();
    start_ = Clock::now();
    for (int64_t n : o_.sizes) RunSize(n);
    PrintTable();
    WriteJson();
    for (const Row& r : rows_) {
      if (r.status != "ok" && r.status.rfind("skipped", 0) != 0) return 1;
    }
    return 0;
  }

 private:
  absl::StatusOr<std::unique_ptr<Backend>> NewBackend() {
    return CreateBackend(o_.backend, BackendOptions());
  }

  double Elapsed() const {
    return std::chrono::duration<double>(Clock::now() - start_).count();
  }

  void RunSize(int64_t n) {
    AttentionParams shape;
    SetShape(AttentionShape{o_.batch, o_.heads, n, n, o_.dim, o_.dim}, shape);
    const AttentionShape s = ShapeOf(shape);
    std::vector<float> q, k, v;
    bool generated = false;
    for (const std::string& precision : o_.precisions) {
      DType dtype = DType::kFloat32;
      ParseDType(precision, &dtype);
      std::unique_ptr<Buffer> bq, bk, bv, bo;
      for (const std::string& method : o_.methods) {
        Row row;
        row.n = n;
        row.method = method;
        row.precision = DTypeName(dtype);
        if (Elapsed() > o_.max_seconds) {
          row.status = "skipped: time budget";
          rows_.push_back(row);
          continue;
        }
        if (!generated) {  // only for sizes that run
          q = Gaussian(s.q_elements(), 1);
          k = Gaussian(s.k_elements(), 2);
          v = Gaussian(s.v_elements(), 3);
          generated = true;
        }
        if (bq == nullptr) {
          const bool dev = o_.memory == "device";
          const int eb = DTypeBytes(dtype);
          bq = std::make_unique<Buffer>(s.q_elements() * eb, dev);
          bk = std::make_unique<Buffer>(s.k_elements() * eb, dev);
          bv = std::make_unique<Buffer>(s.v_elements() * eb, dev);
          bo = std::make_unique<Buffer>(s.out_elements() * eb, dev);
          if (bq->ok() && bk->ok() && bv->ok() && bo->ok()) {
            bq->Put(Encode(q, dtype));
            bk->Put(Encode(k, dtype));
            bv->Put(Encode(v, dtype));
          }
        }
        if (!bq->ok() || !bk->ok() || !bv->ok() || !bo->ok()) {
          row.status = "error: cannot allocate the tensors";
        } else {
          AttentionCall call;
          call.params = shape;
          ApplyMethod(method, &call.params);
          call.q = TensorRef{bq->data(), dtype, bq->space()};
          call.k = TensorRef{bk->data(), dtype, bk->space()};
          call.v = TensorRef{bv->data(), dtype, bv->space()};
          call.out = MutableTensorRef{bo->data(), dtype, bo->space()};
          Measure(call, &row);
          if (row.status == "ok" && o_.error_rows > 0 && method != "exact" &&
              dtype == DType::kFloat32) {
            std::vector<float> out(static_cast<size_t>(s.out_elements()));
            bo->Get(out.data());
            AttentionParams p = call.params;
            p.q = q.data();
            p.k = k.data();
            p.v = v.data();
            p.out = out.data();
            SetContiguousStrides(p);
            absl::StatusOr<double> e =
                EstimateRelativeError(p, o_.error_rows, 7);
            if (e.ok()) row.err_est = *e;
          }
        }
        if (row.status == "ok") {
          std::printf("  N=%lld %s %s: %.3f ms\n", static_cast<long long>(n),
                      method.c_str(), row.precision.c_str(), row.ms);
        } else {
          std::printf("  N=%lld %s %s: %s\n", static_cast<long long>(n),
                      method.c_str(), row.precision.c_str(),
                      row.status.c_str());
        }
        std::fflush(stdout);
        rows_.push_back(row);
      }
    }
  }

  static std::vector<char> Encode(const std::vector<float>& x, DType dtype) {
    std::vector<char> bytes(x.size() * DTypeBytes(dtype));
    EncodeFromFloat(dtype, x.data(), static_cast<int64_t>(x.size()),
                    bytes.data());
    return bytes;
  }

  // Warm-up, then timed calls on a fresh backend; fills the row.
  void Measure(AttentionCall call, Row* row) {
    absl::StatusOr<std::unique_ptr<Backend>> be = NewBackend();
    if (!be.ok()) {
      row->status = absl::StrCat("error: ", be.status().ToString());
      return;
    }
    auto once = [&]() -> double {
      const Clock::time_point t0 = Clock::now();
      (*be)->ForwardBatch(absl::MakeSpan(&call, 1));
      return std::chrono::duration<double>(Clock::now() - t0).count();
    };
    double first = 0;
    for (int i = 0; i < std::max(1, o_.warmup); ++i) {
      first = once();
      if (!call.status.ok()) {
        row->status = absl::StrCat("error: ", call.status.ToString());
        return;
      }
      if (first > o_.max_config_seconds) break;  // slow: no more warm-ups
    }
    std::vector<double> secs;
    const Clock::time_point begin = Clock::now();
    while (static_cast<int>(secs.size()) < o_.repeats) {
      secs.push_back(once());
      if (!call.status.ok()) {
        row->status = absl::StrCat("error: ", call.status.ToString());
        return;
      }
      if (std::chrono::duration<double>(Clock::now() - begin).count() >
          o_.max_config_seconds) {
        break;
      }
    }
    row->repeats = static_cast<int>(secs.size());
    row->ms = 1e3 * Median(secs);
    row->min_ms = 1e3 * *std::min_element(secs.begin(), secs.end());
    row->workspace_bytes = call.stats.workspace_bytes;
    row->dense_bytes = call.stats.dense_score_bytes;
    row->peak_bytes = (*be)->GetMemoryStats().workspace_high_water_bytes;
  }

  void PrintTable() {
    for (Row& r : rows_) {
      for (const Row& e : rows_) {
        if (e.n == r.n && e.precision == r.precision && e.method == "exact" &&
            std::isfinite(e.ms) && std::isfinite(r.ms) && r.ms > 0) {
          r.speedup = e.ms / r.ms;
        }
      }
    }
    std::printf(
        "\n| N | method | precision | median ms | min ms | calls | "
        "peak workspace MiB | speedup vs exact | err est |\n"
        "|---|---|---|---|---|---|---|---|---|\n");
    for (const Row& r : rows_) {
      if (r.status != "ok") {
        std::printf("| %lld | %s | %s | %s | | | | | |\n",
                    static_cast<long long>(r.n), r.method.c_str(),
                    r.precision.c_str(), r.status.c_str());
        continue;
      }
      char speedup[32] = "-", err[32] = "-";
      if (std::isfinite(r.speedup)) {
        std::snprintf(speedup, sizeof(speedup), "%.3gx", r.speedup);
      }
      if (std::isfinite(r.err_est)) {
        std::snprintf(err, sizeof(err), "%.3g", r.err_est);
      }
      std::printf("| %lld | %s | %s | %.3f | %.3f | %d | %.1f | %s | %s |\n",
                  static_cast<long long>(r.n), r.method.c_str(),
                  r.precision.c_str(), r.ms, r.min_ms, r.repeats,
                  r.peak_bytes / 1048576.0, speedup, err);
    }
    std::fflush(stdout);
  }

  void WriteJson() {
    if (o_.json.empty()) return;
    std::FILE* f = std::fopen(o_.json.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", o_.json.c_str());
      return;
    }
    std::string s = absl::StrCat(
        "{\"tool\": \"scatterbrain_gpu_bench\", \"backend\": ",
        JsonString(o_.backend), ", \"device\": ", JsonString(device_),
        ", \"memory\": ", JsonString(o_.memory), ", \"batch\": ", o_.batch,
        ", \"heads\": ", o_.heads, ", \"dim\": ", o_.dim,
        ", \"error\": ", error_.empty() ? "null" : JsonString(error_),
        ", \"results\": [");
    for (size_t i = 0; i < rows_.size(); ++i) {
      const Row& r = rows_[i];
      absl::StrAppend(&s, i ? ",\n  " : "\n  ", "{\"N\": ", r.n,
                      ", \"method\": ", JsonString(r.method),
                      ", \"precision\": ", JsonString(r.precision),
                      ", \"ms\": ", JsonNumber(r.ms),
                      ", \"min_ms\": ", JsonNumber(r.min_ms),
                      ", \"repeats\": ", r.repeats,
                      ", \"peak_bytes\": ", r.peak_bytes,
                      ", \"workspace_bytes\": ", r.workspace_bytes,
                      ", \"dense_score_bytes\": ", r.dense_bytes,
                      ", \"speedup_vs_exact\": ", JsonNumber(r.speedup),
                      ", \"err_est\": ", JsonNumber(r.err_est),
                      ", \"status\": ", JsonString(r.status), "}");
    }
    absl::StrAppend(&s, "]}\n");
    std::fputs(s.c_str(), f);
    std::fclose(f);
  }

  Options o_;
  std::string device_, error_;
  std::vector<Row> rows_;
  Clock::time_point start_;
};

int Usage(const std::string& msg) {
  std::fprintf(
      stderr,
      "scatterbrain_gpu_bench: %s\nflags: --backend=cuda|cpu "
      "--sizes=1024,... --methods=exact,scatterbrain,performer,lsh"
      "[,local] --precisions=float32,bfloat16[,float16] --batch= --heads= "
      "--dim= --warmup= --repeats= --max_config_seconds= "
      "--max_seconds= --memory=device|host --error_rows= "
      "--json=PATH\n",
      msg.c_str());
  return 2;
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      return Usage(absl::StrCat("bad argument '", arg, "'"));
    }
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    const std::vector<std::string> list = absl::StrSplit(value, ',');
    bool ok = true;
    if (name == "backend") {
      o.backend = value;
      ok = value == "cuda" || value == "cpu";
    } else if (name == "sizes") {
      o.sizes.clear();
      for (const std::string& x : list) {
        int64_t n = 0;
        ok = ok && absl::SimpleAtoi(x, &n) && n > 0;
        o.sizes.push_back(n);
      }
    } else if (name == "methods") {
      o.methods = list;
      AttentionParams p;
      for (const std::string& m : list) ok = ok && ApplyMethod(m, &p);
    } else if (name == "precisions") {
      o.precisions = list;
      DType d;
      for (const std::string& x : list) {
        ok = ok && ParseDType(x, &d);
      }
    } else if (name == "batch" || name == "heads" || name == "dim") {
      int64_t* dst = name == "batch"   ? &o.batch
                     : name == "heads" ? &o.heads
                                       : &o.dim;
      ok = absl::SimpleAtoi(value, dst) && *dst > 0;
    } else if (name == "warmup" || name == "repeats" || name == "error_rows") {
      int* dst = name == "warmup"    ? &o.warmup
                 : name == "repeats" ? &o.repeats
                                     : &o.error_rows;
      ok = absl::SimpleAtoi(value, dst) && *dst >= 0;
    } else if (name == "max_config_seconds" || name == "max_seconds") {
      double* dst =
          name == "max_seconds" ? &o.max_seconds : &o.max_config_seconds;
      ok = absl::SimpleAtod(value, dst) && *dst > 0;
    } else if (name == "memory") {
      o.memory = value;
      ok = value == "device" || value == "host";
    } else if (name == "json") {
      o.json = value;
    } else {
      return Usage(absl::StrCat("unknown flag --", name));
    }
    if (!ok) return Usage(absl::StrCat("bad value for --", name, ": ", value));
  }
  if (o.repeats < 1) return Usage("--repeats must be at least 1");
  if (o.memory == "device" && o.backend != "cuda") {
    return Usage("--memory=device needs --backend=cuda");
  }
  return Bench(std::move(o)).Run();
}

}  // namespace
}  // namespace scatterbrain

int main(int argc, char** argv) { return scatterbrain::Main(argc, argv); }

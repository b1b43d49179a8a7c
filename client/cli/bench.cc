// scatterbrain/client/cli/bench.cc — `scatterbrain_cli bench`: a load
// generator for a scatterbrain_server. N client threads, each with its own
// connection and Attend stream and one request in flight, send M requests in
// total on inputs generated and prepared (converted to wire bytes) once;
// progress goes to stderr about once a second; at the end it prints
// throughput, latency percentiles, server time and the batch sizes seen.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/cli/commands.h"
#include "client/cli/flags.h"
#include "client/cpp/client.h"
#include "common/dtype.h"
#include "kernels/params.h"
#include "proto/convert/wire.h"

namespace scatterbrain {
namespace cli {
namespace {

const FlagSpecs& BenchFlags() {
  static const auto* flags = new FlagSpecs(WithSecurity(WithSettings({
      {"server", {FlagKind::kString, true}},
      {"method", {FlagKind::kString, false}},
      {"clients", {FlagKind::kString, false}},
      {"requests", {FlagKind::kString, false}},
      {"duration_s", {FlagKind::kString, false}},
      {"batch", {FlagKind::kString, false}},
      {"heads", {FlagKind::kString, false}},
      {"seq", {FlagKind::kString, false}},
      {"seq_k", {FlagKind::kString, false}},
      {"dim", {FlagKind::kString, false}},
      {"dtype", {FlagKind::kString, false}},
      {"chunk_bytes", {FlagKind::kString, false}},
      {"timeout_s", {FlagKind::kString, false}},
      {"retry_budget_s", {FlagKind::kString, false}},
  })));
  ;
  return *flags;
}

// What one client thread saw.
struct ClientTally {
  std::vector<double> latency_s;
  std::vector<double> queue_s;
  std::vector<double> compute_s;
  std::map<int, int64_t> batch_sizes;
  std::map<std::string, int64_t> errors;  // "CODE: message" -> count
};

}  // namespace

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * sorted.size()));
  rank = std::min(std::max<size_t>(rank, 1), sorted.size());
  return sorted[rank - 1];
}

int Bench(const std::vector<std::string>& args) {
  for (const std::string& a : args) {
    if (a == "--decode" || a == "--decode=true" || a == "--decode=1") {
      return BenchDecode(args);
    }
  }
  absl::StatusOr<FlagValues> flags = ParseFlags(args, BenchFlags());
  if (!flags.ok()) return Fail(2, flags.status().message());
  const FlagValues& f = *flags;
  AttentionParams p = OneShotDefaults();  // method: scatterbrain
  absl::Status s = ParseSettings(f, &p);
  if (!s.ok()) return Fail(2, s.message());
  absl::StatusOr<v1::MethodSettings> settings = WireSettings(p);
  if (!settings.ok()) return Fail(2, settings.status().message());
  absl::StatusOr<DType> dtype = DTypeFlag(f);
  if (!dtype.ok()) return Fail(2, dtype.status().message());
  absl::StatusOr<client::ClientOptions> options =
      ClientOptionsFromFlags(f, absl::InfiniteDuration());
  if (!options.ok()) return Fail(2, options.status().message());
  options->own_connection = true;

  int64_t clients = 1, requests = 100, duration_s = 60;
  client::TensorShape shape;
  shape.batch = 1;
  shape.heads = 8;
  shape.seq_q = 1024;
  shape.dim = 64;
  int64_t seq_k = 0;
  for (absl::Status st : {
           PositiveFlag(f, "clients", &clients),
           PositiveFlag(f, "requests", &requests),
           PositiveFlag(f, "duration_s", &duration_s),
           PositiveFlag(f, "batch", &shape.batch),
           PositiveFlag(f, "heads", &shape.heads),
           PositiveFlag(f, "seq", &shape.seq_q),
           PositiveFlag(f, "seq_k", &seq_k),
           PositiveFlag(f, "dim", &shape.dim),
       }) {
    if (!st.ok()) return Fail(2, st.message());
  }
  if (clients > 1024) return Fail(2, "flag --clients: at most 1024");
  shape.seq_k = seq_k > 0 ? seq_k : shape.seq_q;
  shape.dim_v = shape.dim;
  int64_t qn = 0, kn = 0;
  for (int64_t d :
       {shape.batch, shape.heads, shape.seq_q, shape.seq_k, shape.dim}) {
    if (d > (int64_t{1} << 24)) return Fail(2, "bench shape too large");
  }
  qn = shape.q_elements();
  kn = shape.k_elements();
  if (qn > (int64_t{1} << 30) || kn > (int64_t{1} << 30)) {
    return Fail(2, "bench tensors too large (over 2^30 elements)");
  }

  // Inputs are generated once and shared by every client (read-only).
  std::mt19937 rng(static_cast<uint32_t>(p.seed) + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(qn)), k(static_cast<size_t>(kn)),
      v(static_cast<size_t>(kn));
  for (auto* t : {&q, &k, &v}) {
    for (float& x : *t) x = normal(rng);
  }
  client::AttendInput in;
  in.q = q;
  in.k = k;
  in.v = v;
  in.shape = shape;
  in.settings = *settings;
  in.dtype = wire::DTypeToProto(*dtype);
  absl::StatusOr<std::shared_ptr<const client::PreparedRequest>> prepared =
      client::Prepare(in);
  if (!prepared.ok()) return Fail(2, prepared.status().message());
  const int64_t request_bytes = (*prepared)->tensor_bytes();

  // Fail fast when the server is not there.
  {
    client::ClientOptions probe = *options;
    probe.deadline = absl::Seconds(10);
    absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
        client::AttentionClient::Create(probe);
    if (!c.ok()) return Fail(2, c.status().message());
    absl::StatusOr<v1::ServerInfo> info = (*c)->GetServerInfo();
    if (!info.ok()) {
      return Fail(1, absl::StrCat("server ", options->target, ": ",
                                  StatusLine(info.status())));
    }
    std::printf(
        "server: %s (scatterbrain %s, backend %s, max_batch_requests %u, "
        "max_queue_delay_us %llu)\n",
        options->target.c_str(), info->version().c_str(),
        info->backend().c_str(), info->limits().max_batch_requests(),
        static_cast<unsigned long long>(info->limits().max_queue_delay_us()));
  }
  std::printf(
      "bench: %lld requests, %lld clients, method %s, q [%lld, %lld, %lld, "
      "%lld], k/v seq %lld, %s, %.3f MB of tensors per request\n",
      static_cast<long long>(requests), static_cast<long long>(clients),
      MethodName(p.method), static_cast<long long>(shape.batch),
      static_cast<long long>(shape.heads), static_cast<long long>(shape.seq_q),
      static_cast<long long>(shape.dim), static_cast<long long>(shape.seq_k),
      DTypeName(*dtype), request_bytes / 1e6);
  std::fflush(stdout);

  std::atomic<int64_t> next{0}, ok_count{0}, failed{0}, running{0};
  const absl::Time start = absl::Now();
  const absl::Time stop_sending = start + absl::Seconds(duration_s);
  std::vector<ClientTally> tallies(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  running = clients;
  for (int64_t i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      ClientTally& t = tallies[static_cast<size_t>(i)];
      absl::StatusOr<std::unique_ptr<client::AttentionClient>> c =
          client::AttentionClient::Create(*options);
      std::unique_ptr<client::AttendStream> stream;
      if (c.ok()) stream = (*c)->OpenStream(options->deadline);
      while (next.fetch_add(1) < requests && absl::Now() < stop_sending) {
        const auto t0 = std::chrono::steady_clock::now();
        absl::StatusOr<client::AttendResult> r =
            c.ok() ? stream->Submit(*prepared).get()
                   : absl::StatusOr<client::AttendResult>(c.status());
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                .count();
        if (r.ok()) {
          t.latency_s.push_back(secs);
          t.queue_s.push_back(r->stats.queue_seconds);
          t.compute_s.push_back(r->stats.compute_seconds);
          ++t.batch_sizes[r->stats.batch_size];
          ok_count.fetch_add(1);
        } else {
          ++t.errors[OneLine(StatusLine(r.status()))];
          failed.fetch_add(1);
          // A broken stream fails every later request: open a new one.
          if (c.ok()) {
            stream.reset();
            stream = (*c)->OpenStream(options->deadline);
          }
        }
      }
      if (stream != nullptr) stream->Finish().IgnoreError();
      running.fetch_sub(1);
    });
  }

  // Progress on stderr about once a second: one line rewritten in place on
  // a terminal, one line per second otherwise.
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  absl::Time last_print = start;
  bool printed = false;
  while (running.load() > 0) {
    absl::SleepFor(absl::Milliseconds(50));
    const absl::Time now = absl::Now();
    if (now - last_print < absl::Seconds(1)) continue;
    last_print = now;
    const double el = absl::ToDoubleSeconds(now - start);
    const int64_t done = ok_count.load() + failed.load();
    std::fprintf(
        stderr,
        "%s[bench] %lld/%lld done, %lld failed, %.1f s, %.1f requests/s%s",
        tty ? "\r" : "", static_cast<long long>(done),
        static_cast<long long>(requests), static_cast<long long>(failed.load()),
        el, done / el, tty ? "   " : "\n");
    std::fflush(stderr);
    printed = true;
  }
  for (std::thread& t : threads) t.join();
  const double elapsed = absl::ToDoubleSeconds(absl::Now() - start);
  if (printed && tty) std::fputc('\n', stderr);

  ClientTally all;
  for (ClientTally& t : tallies) {
    all.latency_s.insert(all.latency_s.end(), t.latency_s.begin(),
                         t.latency_s.end());
    all.queue_s.insert(all.queue_s.end(), t.queue_s.begin(), t.queue_s.end());
    all.compute_s.insert(all.compute_s.end(), t.compute_s.begin(),
                         t.compute_s.end());
    for (const auto& [size, n] : t.batch_sizes) all.batch_sizes[size] += n;
    for (const auto& [msg, n] : t.errors) all.errors[msg] += n;
  }
  for (auto* v : {&all.latency_s, &all.queue_s, &all.compute_s}) {
    std::sort(v->begin(), v->end());
  }
  const int64_t n_ok = ok_count.load();
  const int64_t n_failed = failed.load();
  std::printf("completed: %lld ok, %lld failed in %.3f s\n",
              static_cast<long long>(n_ok), static_cast<long long>(n_failed),
              elapsed);
  std::printf(
      "throughput: %.2f requests/s, %.2f MB/s sent (tensor bytes), %.2f MB/s "
      "received\n",
      n_ok / elapsed, n_ok * static_cast<double>(request_bytes) / elapsed / 1e6,
      n_ok * static_cast<double>(shape.out_elements() * DTypeBytes(*dtype)) /
          elapsed / 1e6);
  if (n_ok > 0) {
    double mean = 0;
    for (double x : all.latency_s) mean += x;
    mean /= all.latency_s.size();
    std::printf(
        "latency: p50=%.2f ms p90=%.2f ms p99=%.2f ms (min %.2f, mean %.2f, "
        "max %.2f ms)\n",
        Percentile(all.latency_s, 0.5) * 1e3,
        Percentile(all.latency_s, 0.9) * 1e3,
        Percentile(all.latency_s, 0.99) * 1e3, all.latency_s.front() * 1e3,
        mean * 1e3, all.latency_s.back() * 1e3);
    std::printf(
        "server time: queue p50=%.2f ms p99=%.2f ms, compute p50=%.2f ms "
        "p99=%.2f ms\n",
        Percentile(all.queue_s, 0.5) * 1e3, Percentile(all.queue_s, 0.99) * 1e3,
        Percentile(all.compute_s, 0.5) * 1e3,
        Percentile(all.compute_s, 0.99) * 1e3);
    std::vector<std::string> parts;
    double mean_batch = 0;
    for (const auto& [size, count] : all.batch_sizes) {
      parts.push_back(absl::StrCat(size, " x", count));
      mean_batch += static_cast<double>(size) * count;
    }
    std::printf("batch sizes: %s (mean %.2f)\n",
                absl::StrJoin(parts, ", ").c_str(), mean_batch / n_ok);
  }
  for (const auto& [msg, count] : all.errors) {
    std::printf("error x%lld: %s\n", static_cast<long long>(count),
                msg.c_str());
  }
  return n_failed == 0 && n_ok > 0 ? 0 : 1;
}

}  // namespace cli
}  // namespace scatterbrain

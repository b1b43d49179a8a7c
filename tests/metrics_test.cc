// Tests for server/metrics.h: every documented metric is exported with the
// right labels and values, and the /metrics endpoint serves it over HTTP on
// loopback (or reports a busy port as a Status).
#include "server/metrics.h"

#include <cmath>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testutil/net.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::HasSubstr;
using testutil::Listener;
using Labels = std::map<std::string, std::string>;

// Parses one sample line of the text format: name{k="v",...} value.
bool ParseSample(const std::string& line, std::string* name, Labels* labels,
                 double* value) {
  if (line.empty() || line[0] == '#') return false;
  labels->clear();
  size_t pos = line.find_first_of("{ ");
  if (pos == std::string::npos) return false;
  *name = line.substr(0, pos);
  if (line[pos] == '{') {
    ++pos;
    while (pos < line.size() && line[pos] != '}') {
      const size_t eq = line.find('=', pos);
      if (eq == std::string::npos || eq + 1 >= line.size() ||
          line[eq + 1] != '"') {
        return false;
      }
      const size_t close = line.find('"', eq + 2);  // no escapes in tests
      if (close == std::string::npos) return false;
      (*labels)[line.substr(pos, eq - pos)] =
          line.substr(eq + 2, close - eq - 2);
      pos = close + 1;
      if (pos < line.size() && line[pos] == ',') ++pos;
    }
    if (pos >= line.size()) return false;
    ++pos;  // '}'
  }
  std::istringstream rest(line.substr(pos));
  std::string v;
  rest >> v;
  if (v.empty()) return false;
  *value = std::stod(v);
  return true;
}

// The value of the sample `name` whose labels are exactly `want`.
std::optional<double> Sample(const std::string& text, const std::string& name,
                             const Labels& want = {}) {
  std::istringstream in(text);
  std::string line, n;
  Labels labels;
  double value = 0;
  while (std::getline(in, line)) {
    if (ParseSample(line, &n, &labels, &value) && n == name && labels == want) {
      return value;
    }
  }
  return std::nullopt;
}

TEST(MetricsTest, EveryMetricExportedWithLabelsAndValues) {
  Metrics m;
  m.RequestDone("exact", "OK", 0.25);
  m.RequestDone("exact", "OK", 0.5);
  m.RequestDone("exact", "INVALID_ARGUMENT", 7.0);
  m.QueueTime("scatterbrain", 0.001);
  m.ComputeTime("scatterbrain", 0.02);
  m.BatchExecuted(3);
  m.BatchExecuted(5);
  m.MemorySaved(100);
  m.MemorySaved(50);
  m.ApproxError("scatterbrain", 0.05);
  m.DenominatorGuards(3);
  m.InflightAdd(2);
  m.InflightAdd(-1);
  m.SetQueueDepth(7);
  m.BytesReceived(1000);
  m.BytesSent(2000);
  m.SetDeviceMemory("cuda:0", 12345);
  const std::string text = m.Serialize();

  // Every documented name is registered.
  for (const char* name : {
           "scatterbrain_requests_total",
           "scatterbrain_request_duration_seconds",
           "scatterbrain_queue_duration_seconds",
           "scatterbrain_compute_duration_seconds",
           "scatterbrain_batch_size",
           "scatterbrain_attention_memory_saved_bytes_total",
           "scatterbrain_approx_relative_error",
           "scatterbrain_denominator_guard_total",
           "scatterbrain_inflight_requests",
           "scatterbrain_queue_depth",
           "scatterbrain_received_bytes_total",
           "scatterbrain_sent_bytes_total",
           "scatterbrain_device_memory_used_bytes",
       }) {
    EXPECT_THAT(text, HasSubstr(absl::StrCat("# TYPE ", name, " "))) << name;
  }

  EXPECT_EQ(Sample(text, "scatterbrain_requests_total",
                   {{"method", "exact"}, {"code", "OK"}}),
            2);
  EXPECT_EQ(Sample(text, "scatterbrain_requests_total",
                   {{"method", "exact"}, {"code", "INVALID_ARGUMENT"}}),
            1);
  // Only the two OK requests are observed.
  const Labels exact{{"method", "exact"}};
  EXPECT_EQ(Sample(text, "scatterbrain_request_duration_seconds_count", exact),
            2);
  EXPECT_DOUBLE_EQ(
      *Sample(text, "scatterbrain_request_duration_seconds_sum", exact), 0.75);
  EXPECT_EQ(Sample(text, "scatterbrain_request_duration_seconds_bucket",
                   {{"method", "exact"}, {"le", "0.25"}}),
            1);
  EXPECT_EQ(Sample(text, "scatterbrain_request_duration_seconds_bucket",
                   {{"method", "exact"}, {"le", "0.5"}}),
            2);
  EXPECT_EQ(Sample(text, "scatterbrain_request_duration_seconds_bucket",
                   {{"method", "exact"}, {"le", "+Inf"}}),
            2);

  const Labels sb{{"method", "scatterbrain"}};
  EXPECT_EQ(Sample(text, "scatterbrain_queue_duration_seconds_count", sb), 1);
  EXPECT_DOUBLE_EQ(*Sample(text, "scatterbrain_queue_duration_seconds_sum", sb),
                   0.001);
  EXPECT_EQ(Sample(text, "scatterbrain_queue_duration_seconds_bucket",
                   {{"method", "scatterbrain"}, {"le", "0.0001"}}),
            0);
  EXPECT_EQ(Sample(text, "scatterbrain_compute_duration_seconds_count", sb), 1);
  EXPECT_DOUBLE_EQ(
      *Sample(text, "scatterbrain_compute_duration_seconds_sum", sb), 0.02);
  EXPECT_EQ(Sample(text, "scatterbrain_approx_relative_error_count", sb), 1);
  EXPECT_DOUBLE_EQ(*Sample(text, "scatterbrain_approx_relative_error_sum", sb),
                   0.05);
  EXPECT_EQ(Sample(text, "scatterbrain_approx_relative_error_bucket",
                   {{"method", "scatterbrain"}, {"le", "10"}}),
            1);

  EXPECT_EQ(Sample(text, "scatterbrain_batch_size_count"), 2);
  EXPECT_EQ(Sample(text, "scatterbrain_batch_size_sum"), 8);
  EXPECT_EQ(Sample(text, "scatterbrain_batch_size_bucket", {{"le", "4"}}), 1);
  EXPECT_EQ(Sample(text, "scatterbrain_batch_size_bucket", {{"le", "256"}}), 2);

  EXPECT_EQ(Sample(text, "scatterbrain_attention_memory_saved_bytes_total"),
            150);
  EXPECT_EQ(Sample(text, "scatterbrain_denominator_guard_total"), 3);
  EXPECT_EQ(Sample(text, "scatterbrain_inflight_requests"), 1);
  EXPECT_EQ(Sample(text, "scatterbrain_queue_depth"), 7);
  EXPECT_EQ(Sample(text, "scatterbrain_received_bytes_total"), 1000);
  EXPECT_EQ(Sample(text, "scatterbrain_sent_bytes_total"), 2000);
  EXPECT_EQ(Sample(text, "scatterbrain_device_memory_used_bytes",
                   {{"device", "cuda:0"}}),
            12345);
}

TEST(MetricsTest, UnlabelledSeriesStartAtZero) {
  Metrics m;
  const std::string text = m.Serialize();
  EXPECT_EQ(Sample(text, "scatterbrain_queue_depth"), 0);
  EXPECT_EQ(Sample(text, "scatterbrain_inflight_requests"), 0);
  EXPECT_EQ(Sample(text, "scatterbrain_received_bytes_total"), 0);
  EXPECT_EQ(Sample(text, "scatterbrain_batch_size_count"), 0);
}

TEST(MetricsTest, HeadPlansCountedBySupportOrExact) {
  Metrics m;
  // Every label value exists from the start, at 0.
  for (const char* label : {"lsh", "local", "both", "exact"}) {
    EXPECT_EQ(Sample(m.Serialize(), "scatterbrain_head_plans_total",
                     {{"sparse", label}}),
              0)
        << label;
  }
  std::vector<HeadPlan> plans(5);
  plans[0].sparse = SparseSupport::kLsh;
  plans[1].sparse = SparseSupport::kLocal;
  plans[2].sparse = SparseSupport::kLocal;
  plans[3].sparse = SparseSupport::kBoth;
  plans[4].sparse = SparseSupport::kLocal;
  plans[4].exact = true;  // exact wins over the support it last tried
  m.HeadPlans(plans);
  m.HeadPlans({});
  const std::string text = m.Serialize();
  const auto count = [&](const char* label) {
    return Sample(text, "scatterbrain_head_plans_total", {{"sparse", label}});
  };
  EXPECT_EQ(count("lsh"), 1);
  EXPECT_EQ(count("local"), 2);
  EXPECT_EQ(count("both"), 1);
  EXPECT_EQ(count("exact"), 1);
}

TEST(MetricsTest, FailedRequestCountsButIsNotTimed) {
  Metrics m;
  m.RequestDone("exact", "DEADLINE_EXCEEDED", 3.0);
  const std::string text = m.Serialize();
  EXPECT_EQ(Sample(text, "scatterbrain_requests_total",
                   {{"method", "exact"}, {"code", "DEADLINE_EXCEEDED"}}),
            1);
  const std::optional<double> count =
      Sample(text, "scatterbrain_request_duration_seconds_count",
             {{"method", "exact"}});
  EXPECT_TRUE(!count.has_value() || *count == 0);
}

TEST(MetricsTest, NonFiniteAndNegativeObservationsAreDropped) {
  Metrics m;
  m.ApproxError("lsh", 0.1);
  m.ApproxError("lsh", std::nan(""));
  m.ApproxError("lsh", INFINITY);
  m.QueueTime("lsh", -1.0);
  m.MemorySaved(-5);
  const std::string text = m.Serialize();
  const Labels lsh{{"method", "lsh"}};
  EXPECT_EQ(Sample(text, "scatterbrain_approx_relative_error_count", lsh), 1);
  EXPECT_DOUBLE_EQ(*Sample(text, "scatterbrain_approx_relative_error_sum", lsh),
                   0.1);
  EXPECT_EQ(Sample(text, "scatterbrain_queue_duration_seconds_count", lsh), 0);
  EXPECT_EQ(Sample(text, "scatterbrain_attention_memory_saved_bytes_total"), 0);
}

TEST(MetricsTest, ConcurrentUpdatesAddUp) {
  Metrics m;
  constexpr int kThreads = 4;
  constexpr int kEach = 1000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&m, t] {
      const std::string method = t % 2 == 0 ? "exact" : "performer";
      for (int i = 0; i < kEach; ++i) {
        m.RequestDone(method, "OK", 0.001);
        m.QueueTime(method, 0.001);
        m.BytesReceived(1);
        m.InflightAdd(1);
        m.InflightAdd(-1);
      }
    });
  }
  for (auto& t : threads) t.join();
  const std::string text = m.Serialize();
  for (const char* method : {"exact", "performer"}) {
    EXPECT_EQ(Sample(text, "scatterbrain_requests_total",
                     {{"method", method}, {"code", "OK"}}),
              2 * kEach)
        << method;
    EXPECT_EQ(Sample(text, "scatterbrain_queue_duration_seconds_count",
                     {{"method", method}}),
              2 * kEach)
        << method;
  }
  EXPECT_EQ(Sample(text, "scatterbrain_received_bytes_total"),
            kThreads * kEach);
  EXPECT_EQ(Sample(text, "scatterbrain_inflight_requests"), 0);
}

// --- HTTP exposition on loopback. ---

TEST(MetricsTest, ExposeServesMetricsOverHttp) {
  Metrics m;
  m.SetQueueDepth(42);
  m.RequestDone("exact", "OK", 0.1);
  // Expose has no way to report a kernel-chosen port, so take a free one
  // from the kernel and release it; retry in the unlikely case another
  // process grabs it in between.
  int port = 0;
  absl::Status s;
  for (int attempt = 0; attempt < 5; ++attempt) {
    Listener probe;
    ASSERT_GT(probe.port(), 0);
    port = probe.port();
    probe.Close();
    s = m.Expose(absl::StrCat("127.0.0.1:", port));
    if (s.ok()) break;
  }
  ASSERT_TRUE(s.ok()) << s;

  const std::string response = testutil::HttpGetResponse(port, "/metrics");
  EXPECT_THAT(response, HasSubstr(" 200 "));
  EXPECT_THAT(response, HasSubstr("\nscatterbrain_queue_depth 42"));
  EXPECT_THAT(response, HasSubstr("scatterbrain_requests_total{"));

  // Served live, not a snapshot.
  m.SetQueueDepth(3);
  EXPECT_THAT(testutil::HttpGetResponse(port, "/metrics"),
              HasSubstr("\nscatterbrain_queue_depth 3\n"));

  // A second Expose is refused rather than replacing the first.
  EXPECT_EQ(m.Expose("127.0.0.1:0").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(MetricsTest, ExposeOnBusyPortReturnsError) {
  Listener busy;
  ASSERT_GT(busy.port(), 0);
  Metrics m;
  absl::Status s = m.Expose(absl::StrCat("127.0.0.1:", busy.port()));
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(absl::StrCat("127.0.0.1:", busy.port())));
  // The failed attempt leaves the object usable: a free port still works.
  Listener probe;
  const int port = probe.port();
  probe.Close();
  EXPECT_TRUE(m.Expose(absl::StrCat("127.0.0.1:", port)).ok());
}

TEST(MetricsTest, ExposeOnMalformedAddressReturnsError) {
  Metrics m;
  EXPECT_FALSE(m.Expose("127.0.0.1:notaport").ok());
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain

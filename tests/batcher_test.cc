// Tests for server/batcher.h: every closing rule at its exact boundary under
// a FakeClock (no sleeps), key separation, FIFO order, drain, queue limits,
// removal, deadlines, move-only items and a bounded concurrency smoke test.
#include "server/batcher.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/clock.h"
#include "tests/testutil/status_matchers.h"

namespace scatterbrain {
namespace server {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;
using testutil::StatusIs;

BatcherOptions Opts(int max_requests, int64_t max_tokens, int64_t delay_us,
                    int max_queue = 256) {
  BatcherOptions o;
  o.max_batch_requests = max_requests;
  o.max_batch_tokens = max_tokens;
  o.max_queue_delay_us = delay_us;
  o.max_queue_requests = max_queue;
  return o;
}

// The item values of a batch, in order.
std::vector<int> Values(const Batch<int>& b) {
  std::vector<int> v;
  for (const auto& [item, t] : b.items) v.push_back(item);
  return v;
}

TEST(BatcherTest, ClosesOnRequestCount) {
  FakeClock clock;
  Batcher<int> b(Opts(3, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("k", 1, 10).ok());
  ASSERT_TRUE(b.Enqueue("k", 2, 20).ok());
  EXPECT_THAT(b.TakeReadyBatches(), IsEmpty());
  EXPECT_EQ(b.queued(), 2);
  ASSERT_TRUE(b.Enqueue("k", 3, 30).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "k");
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 2, 3));
  EXPECT_EQ(batches[0].tokens, 60);
  EXPECT_EQ(b.queued(), 0);
  EXPECT_EQ(b.NextDeadlineMicros(), std::nullopt);
}

TEST(BatcherTest, ClosesOnTokenCount) {
  FakeClock clock;
  Batcher<int> b(Opts(10, 100, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("k", 1, 40).ok());
  ASSERT_TRUE(b.Enqueue("k", 2, 40).ok());
  EXPECT_THAT(b.TakeReadyBatches(), IsEmpty());  // 80 < 100, may still grow
  // 80 + 30 > 100: the batch closes before item 3, which stays.
  ASSERT_TRUE(b.Enqueue("k", 3, 30).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 2));
  EXPECT_EQ(batches[0].tokens, 80);
  EXPECT_EQ(b.queued(), 1);
  // 30 + 70 == 100 exactly: full, closes at once.
  ASSERT_TRUE(b.Enqueue("k", 4, 70).ok());
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(3, 4));
  EXPECT_EQ(batches[0].tokens, 100);
  EXPECT_EQ(b.queued(), 0);
}

TEST(BatcherTest, OversizedItemFormsBatchAlone) {
  FakeClock clock;
  Batcher<int> b(Opts(10, 100, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("k", 1, 500).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(1));
  EXPECT_EQ(batches[0].tokens, 500);

  // A small item followed by an oversized one: each closes on its own.
  ASSERT_TRUE(b.Enqueue("k", 2, 10).ok());
  ASSERT_TRUE(b.Enqueue("k", 3, 500).ok());
  ASSERT_TRUE(b.Enqueue("k", 4, 10).ok());
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(2));
  EXPECT_THAT(Values(batches[0]), ElementsAre(2));
  EXPECT_THAT(Values(batches[1]), ElementsAre(3));
  EXPECT_EQ(b.queued(), 1);  // item 4 waits for company or its delay
}

TEST(BatcherTest, ClosesOnDelayExactlyAtBoundary) {
  FakeClock clock(5000);
  Batcher<int> b(Opts(8, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("k", 1, 1).ok());
  clock.AdvanceMicros(400);
  ASSERT_TRUE(b.Enqueue("k", 2, 1).ok());
  clock.AdvanceMicros(599);  // oldest has waited 999 us
  EXPECT_THAT(b.TakeReadyBatches(), IsEmpty());
  clock.AdvanceMicros(1);  // 1000 us: due
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  // The due batch takes everything up to the limits, younger items too.
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 2));
  EXPECT_EQ(batches[0].items[0].second, 5000);
  EXPECT_EQ(batches[0].items[1].second, 5400);
}

TEST(BatcherTest, ZeroDelayIsReadyAtOnce) {
  FakeClock clock;
  Batcher<int> b(Opts(8, 1 << 20, 0), &clock);
  ASSERT_TRUE(b.Enqueue("k", 1, 1).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(1));
}

// Items enqueued with their own delay (decode steps: 0) are due at once
// while other keys keep the default; steps queued together leave together.
TEST(BatcherTest, PerItemDelayOverridesTheDefault) {
  FakeClock clock(100);
  Batcher<int> b(Opts(8, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("attend", 1, 1).ok());
  ASSERT_TRUE(b.Enqueue("step", 2, 1, /*max_delay_us=*/0).ok());
  ASSERT_TRUE(b.Enqueue("step", 3, 1, /*max_delay_us=*/0).ok());
  ASSERT_TRUE(b.Enqueue("slow", 4, 1, /*max_delay_us=*/300).ok());
  EXPECT_EQ(b.NextDeadlineMicros(), std::optional<int64_t>(100));
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "step");
  EXPECT_THAT(Values(batches[0]), ElementsAre(2, 3));
  EXPECT_EQ(b.NextDeadlineMicros(), std::optional<int64_t>(400));
  clock.AdvanceMicros(300);
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "slow");
  clock.AdvanceMicros(700);
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "attend");
}

TEST(BatcherTest, DueQueueSplitsAtLimitsAndKeepsYoungerRest) {
  FakeClock clock;
  Batcher<int> b(Opts(2, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("k", 1, 1).ok());
  clock.AdvanceMicros(1000);
  // Item 1 is due; enqueued now, item 2 joins its batch (limit 2) and item
  // 3 must wait its own delay.
  ASSERT_TRUE(b.Enqueue("k", 2, 1).ok());
  ASSERT_TRUE(b.Enqueue("k", 3, 1).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 2));
  EXPECT_EQ(b.queued(), 1);
  EXPECT_EQ(b.NextDeadlineMicros(), 2000);
  clock.AdvanceMicros(999);
  EXPECT_THAT(b.TakeReadyBatches(), IsEmpty());
  clock.AdvanceMicros(1);
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(3));
}

TEST(BatcherTest, SeparateKeysNeverMix) {
  FakeClock clock;
  Batcher<int> b(Opts(2, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("a", 1, 1).ok());
  ASSERT_TRUE(b.Enqueue("b", 2, 1).ok());
  ASSERT_TRUE(b.Enqueue("a", 3, 1).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "a");
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 3));
  ASSERT_TRUE(b.Enqueue("c", 4, 1).ok());
  clock.AdvanceMicros(1000);
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(2));
  EXPECT_EQ(batches[0].key, "b");
  EXPECT_THAT(Values(batches[0]), ElementsAre(2));
  EXPECT_EQ(batches[1].key, "c");
  EXPECT_THAT(Values(batches[1]), ElementsAre(4));
}

TEST(BatcherTest, SeveralFullBatchesFromOneQueueInFifoOrder) {
  FakeClock clock;
  Batcher<int> b(Opts(3, 1 << 20, 1000), &clock);
  for (int i = 1; i <= 7; ++i) ASSERT_TRUE(b.Enqueue("k", i, 1).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(2));
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 2, 3));
  EXPECT_THAT(Values(batches[1]), ElementsAre(4, 5, 6));
  EXPECT_EQ(b.queued(), 1);
  clock.AdvanceMicros(1000);
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(7));
}

TEST(BatcherTest, BatchesComeOldestFirstAcrossKeys) {
  FakeClock clock;
  Batcher<int> b(Opts(8, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("z", 1, 1).ok());
  clock.AdvanceMicros(10);
  ASSERT_TRUE(b.Enqueue("a", 2, 1).ok());
  clock.AdvanceMicros(5000);
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(2));
  EXPECT_EQ(batches[0].key, "z");
  EXPECT_EQ(batches[1].key, "a");
}

TEST(BatcherTest, DrainMakesEverythingReadyAndRefusesNew) {
  FakeClock clock;
  Batcher<int> b(Opts(2, 1 << 20, 1000000), &clock);
  ASSERT_TRUE(b.Enqueue("a", 1, 1).ok());
  ASSERT_TRUE(b.Enqueue("b", 2, 1).ok());
  ASSERT_TRUE(b.Enqueue("b", 3, 1).ok());
  ASSERT_TRUE(b.Enqueue("b", 4, 1).ok());
  EXPECT_FALSE(b.draining());
  b.Drain();
  EXPECT_TRUE(b.draining());
  absl::Status s = b.Enqueue("a", 5, 1);
  EXPECT_THAT(s,
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("draining")));
  // Due now, without the clock moving.
  EXPECT_EQ(b.NextDeadlineMicros(), 0);
  auto batches = b.TakeReadyBatches();  // the clock never moved
  ASSERT_THAT(batches, SizeIs(3));      // the limits still apply
  EXPECT_THAT(Values(batches[0]), ElementsAre(1));
  EXPECT_THAT(Values(batches[1]), ElementsAre(2, 3));
  EXPECT_THAT(Values(batches[2]), ElementsAre(4));
  EXPECT_EQ(b.queued(), 0);
  EXPECT_EQ(b.NextDeadlineMicros(), std::nullopt);
}

TEST(BatcherTest, QueueFullIsUnavailableAndRecovers) {
  FakeClock clock;
  Batcher<int> b(Opts(2, 1 << 20, 1000, /*max_queue=*/3), &clock);
  ASSERT_TRUE(b.Enqueue("a", 1, 1).ok());
  ASSERT_TRUE(b.Enqueue("b", 2, 1).ok());
  ASSERT_TRUE(b.Enqueue("c", 3, 1).ok());
  absl::Status s = b.Enqueue("a", 4, 1);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("queue full: 3 requests waiting")));
  EXPECT_EQ(b.queued(), 3);
  clock.AdvanceMicros(1000);
  EXPECT_THAT(b.TakeReadyBatches(), SizeIs(3));
  EXPECT_EQ(b.queued(), 0);
  EXPECT_TRUE(b.Enqueue("a", 4, 1).ok());
  EXPECT_EQ(b.queued(), 1);
}

TEST(BatcherTest, NegativeTokensAreInvalid) {
  FakeClock clock;
  Batcher<int> b(Opts(2, 100, 1000), &clock);
  EXPECT_EQ(b.Enqueue("a", 1, -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.queued(), 0);
}

TEST(BatcherTest, RemoveIfTakesMatchingItemsOut) {
  FakeClock clock;
  Batcher<int> b(Opts(8, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("a", 1, 10).ok());
  ASSERT_TRUE(b.Enqueue("a", 2, 20).ok());
  ASSERT_TRUE(b.Enqueue("b", 4, 40).ok());  // whole queue removed
  ASSERT_TRUE(b.Enqueue("a", 3, 30).ok());
  clock.AdvanceMicros(100);
  ASSERT_TRUE(b.Enqueue("c", 5, 50).ok());
  std::vector<int> removed =
      b.RemoveIf([](const int& v) { return v % 2 == 0; });
  EXPECT_THAT(removed, ElementsAre(2, 4));
  EXPECT_EQ(b.queued(), 3);
  EXPECT_TRUE(b.RemoveIf([](const int&) { return false; }).empty());
  clock.AdvanceMicros(900);  // "a" due, "c" not
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "a");
  EXPECT_THAT(Values(batches[0]), ElementsAre(1, 3));
  EXPECT_EQ(batches[0].tokens, 40);  // removed tokens no longer counted
  // Removing the oldest item moves the deadline to the next one.
  EXPECT_THAT(b.RemoveIf([](const int& v) { return v == 5; }), ElementsAre(5));
  EXPECT_EQ(b.queued(), 0);
  EXPECT_EQ(b.NextDeadlineMicros(), std::nullopt);
}

TEST(BatcherTest, RemoveIfKeepsTokenAccountingForFullness) {
  FakeClock clock;
  Batcher<int> b(Opts(8, 100, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("a", 1, 60).ok());
  ASSERT_TRUE(b.Enqueue("a", 2, 30).ok());
  EXPECT_THAT(b.RemoveIf([](const int& v) { return v == 1; }), ElementsAre(1));
  ASSERT_TRUE(b.Enqueue("a", 3, 60).ok());  // 30 + 60 = 90 < 100
  EXPECT_THAT(b.TakeReadyBatches(), IsEmpty());
  ASSERT_TRUE(b.Enqueue("a", 4, 10).ok());  // 100: full
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_THAT(Values(batches[0]), ElementsAre(2, 3, 4));
}

TEST(BatcherTest, NextDeadlineIsOldestPlusDelay) {
  FakeClock clock(100);
  Batcher<int> b(Opts(8, 1 << 20, 1000), &clock);
  EXPECT_EQ(b.NextDeadlineMicros(), std::nullopt);
  ASSERT_TRUE(b.Enqueue("a", 1, 1).ok());
  EXPECT_EQ(b.NextDeadlineMicros(), 1100);
  clock.SetMicros(300);
  ASSERT_TRUE(b.Enqueue("b", 2, 1).ok());
  ASSERT_TRUE(b.Enqueue("a", 3, 1).ok());
  EXPECT_EQ(b.NextDeadlineMicros(), 1100);
  clock.SetMicros(1100);
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(batches[0].key, "a");
  EXPECT_EQ(b.NextDeadlineMicros(), 1300);
}

TEST(BatcherTest, MoveOnlyItems) {
  FakeClock clock;
  Batcher<std::unique_ptr<int>> b(Opts(2, 1 << 20, 1000), &clock);
  ASSERT_TRUE(b.Enqueue("k", std::make_unique<int>(1), 1).ok());
  ASSERT_TRUE(b.Enqueue("k", std::make_unique<int>(2), 1).ok());
  ASSERT_TRUE(b.Enqueue("k", std::make_unique<int>(3), 1).ok());
  std::vector<std::unique_ptr<int>> removed =
      b.RemoveIf([](const std::unique_ptr<int>& p) { return *p == 2; });
  ASSERT_THAT(removed, SizeIs(1));
  EXPECT_EQ(*removed[0], 2);
  ASSERT_TRUE(b.Enqueue("k", std::make_unique<int>(4), 1).ok());
  auto batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  ASSERT_THAT(batches[0].items, SizeIs(2));
  EXPECT_EQ(*batches[0].items[0].first, 1);
  EXPECT_EQ(*batches[0].items[1].first, 3);
  b.Drain();
  batches = b.TakeReadyBatches();
  ASSERT_THAT(batches, SizeIs(1));
  EXPECT_EQ(*batches[0].items[0].first, 4);
}

// Several producers race one consumer. Every item comes out exactly once,
// each producer's items keep their order within a key, and the queue limit
// is honoured (producers retry on UNAVAILABLE). Bounded by a wall-clock cap
// so a bug fails rather than hangs.
TEST(BatcherTest, ConcurrentEnqueueAndTakeConservesItems) {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 2000;
  constexpr int kKeys = 3;
  FakeClock clock;
  Batcher<int> b(Opts(5, 1 << 20, /*delay_us=*/0, /*max_queue=*/64), &clock);
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::seconds(20);
  std::atomic<bool> timed_out{false};

  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        const int item = p * kPerProducer + i;
        const std::string key = std::to_string(item % kKeys);
        while (true) {
          absl::Status s = b.Enqueue(key, item, 1);
          if (s.ok()) break;
          ASSERT_EQ(s.code(), absl::StatusCode::kUnavailable);
          if (std::chrono::steady_clock::now() > give_up) {
            timed_out = true;
            return;
          }
          std::this_thread::yield();
        }
      }
    });
  }

  std::vector<int> last_seen(kProducers * kKeys, -1);
  int taken = 0;
  bool order_ok = true;
  bool keys_ok = true;
  bool sizes_ok = true;
  while (taken < kProducers * kPerProducer && !timed_out) {
    if (std::chrono::steady_clock::now() > give_up) {
      timed_out = true;
      break;
    }
    for (auto& batch : b.TakeReadyBatches()) {
      sizes_ok &= !batch.items.empty() && batch.items.size() <= 5 &&
                  batch.tokens == static_cast<int64_t>(batch.items.size());
      for (const auto& [item, t] : batch.items) {
        const int p = item / kPerProducer;
        const int k = item % kKeys;
        keys_ok &= batch.key == std::to_string(k);
        int& last = last_seen[p * kKeys + k];
        order_ok &= item > last;
        last = item;
        ++taken;
      }
    }
    EXPECT_LE(b.queued(), 64);
  }
  for (auto& t : producers) t.join();
  ASSERT_FALSE(timed_out);
  EXPECT_EQ(taken, kProducers * kPerProducer);
  EXPECT_EQ(b.queued(), 0);
  EXPECT_TRUE(order_ok);
  EXPECT_TRUE(keys_ok);
  EXPECT_TRUE(sizes_ok);
}

}  // namespace
}  // namespace server
}  // namespace scatterbrain

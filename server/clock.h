// scatterbrain/server/clock.h — time source injected into the batcher and
// the service, so batching tests are exact (a FakeClock) rather than timed.
#ifndef SCATTERBRAIN_SERVER_CLOCK_H_
#define SCATTERBRAIN_SERVER_CLOCK_H_

#include <atomic>
#include <chrono>
#include <cstdint>

namespace scatterbrain {
namespace server {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic microseconds.
  virtual int64_t NowMicros() const = 0;
};

class RealClock : public Clock {
 public:
  int64_t NowMicros() const override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  static RealClock* Get() {
    static RealClock* c = new RealClock;
    return c;
  }
};

// For tests: time moves only when told to.
class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t start_us = 0) : now_(start_us) {}
  int64_t NowMicros() const override { return now_.load(); }
  void AdvanceMicros(int64_t us) { now_.fetch_add(us); }
  void SetMicros(int64_t us) { now_.store(us); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace server
}  // namespace scatterbrain

#endif  // SCATTERBRAIN_SERVER_CLOCK_H_

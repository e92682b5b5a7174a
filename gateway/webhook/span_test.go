package webhook

import (
	"testing"
	"time"
)

// TestDefaultRetriesSpanHours: with the default settings an event's attempts are spread
// over hours, whatever the jitter, so a receiver down for a deploy, a restart or a night
// is told when it is back; no wait is longer than an hour, so one that is back is served
// within it (ADR-0092). Before, 5 attempts spent about 30 s and the events of a receiver
// restarting for a minute were given up. backoff's jitter stays within ±20%
// (TestBackoffBounds): the shortest schedule is the one with every wait at 80%.
func TestDefaultRetriesSpanHours(t *testing.T) {
	t.Parallel()
	var cfg Config
	cfg.setDefaults()
	var shortest time.Duration
	for n := 1; n < cfg.Attempts; n++ {
		shortest += min(time.Duration(0.8*float64(cfg.BaseDelay<<min(n-1, 20))), cfg.MaxDelay)
	}
	if shortest < 4*time.Hour {
		t.Errorf("%d attempts span at least %v, want 4 h or more", cfg.Attempts, shortest)
	}
	if cfg.MaxDelay > time.Hour {
		t.Errorf("MaxDelay %v: a receiver that is back waits longer than an hour", cfg.MaxDelay)
	}
}

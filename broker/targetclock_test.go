package broker_test

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// lockedLog collects a store's log for a test to read.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// offClock is a clock off from the real one by d.
func offClock(d time.Duration) func() time.Time { return func() time.Time { return time.Now().Add(d) } }

func targetNames(ts []broker.Target) []string {
	names := make([]string, 0, len(ts))
	for _, t := range ts {
		names = append(names, t.Name)
	}
	return names
}

// A foreman whose clock is off by more than an entry's lifetime (90 s) still sees every
// other Mac and is seen by them: an entry's age is taken on the NATS server's clock. (It
// was its writer's update time against its reader's clock: a Mac two minutes behind was
// never seen by the others, its models 404 through them; one two minutes ahead saw no
// other Mac.) The one whose clock is off says so.
func TestTargetsLiveWhateverTheForemensClocks(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var behindLog lockedLog
	behind, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Now: offClock(-2 * time.Minute),
		Logger: slog.New(slog.NewTextHandler(&behindLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Now: offClock(2 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	stores := map[string]*broker.Store{"mac-a": ahead, "mac-b": behind, "mac-c": b.Store}
	for name, s := range stores {
		if err := s.PublishTarget(ctx, broker.Target{Name: name, Reachable: true, Models: []string{name + ":latest"}}); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"mac-a", "mac-b", "mac-c"}
	for name, s := range stores {
		got, err := s.Targets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if names := targetNames(got); !slices.Equal(names, want) {
			t.Errorf("targets read by %s: %v, want %v", name, names, want)
		}
	}
	if !strings.Contains(behindLog.String(), "clock is behind the NATS server's by 2m0s") {
		t.Errorf("the foreman two minutes behind did not say so; its log:\n%s", behindLog.String())
	}
}

// An entry stops counting its own foreman's TTL after the server stored it, whatever that
// foreman's clock: one written by a clock two minutes ahead, with a TTL of 2 s, counted
// for two minutes more (until the bucket's 90 s TTL removed it here), a dead Mac still
// taken for live.
func TestTargetsExpireByTheServersClock(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t) // the bucket's TTL: the default 90 s
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "mac-a", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	ahead, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Now: offClock(2 * time.Minute), TargetTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := ahead.PublishTarget(ctx, broker.Target{Name: "mac-b", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Store.Targets(ctx); err != nil || !slices.Equal(targetNames(got), []string{"mac-a", "mac-b"}) {
		t.Fatalf("targets right after mac-b's publish: %+v, %v", got, err)
	}
	eventually(t, 30*time.Second, "mac-b's entry, not refreshed, no longer counts", func() bool {
		got, err := b.Store.Targets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Equal(targetNames(got), []string{"mac-a"})
	})
}

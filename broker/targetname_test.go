package broker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A foreman that stops in order marks its target's entry stopped only while it is its
// own: another foreman with the same name that wrote it since keeps it as it wrote it.
func TestTargetStopLeavesAnotherForemansEntry(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other, err := broker.Open(ctx, broker.Config{Conn: b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "studio", URL: "http://a:11434", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	if err := other.PublishTarget(ctx, broker.Target{Name: "studio", URL: "http://b:11434", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.Store.StopTarget(ctx, broker.Target{Name: "studio", URL: "http://a:11434"}); err != nil {
		t.Fatal(err)
	}
	got, err := b.Store.Targets(ctx)
	if err != nil || len(got) != 1 || got[0].BootID != other.BootID() || !got[0].Reachable {
		t.Fatalf("targets after the first foreman stopped: %+v, %v; want the other's entry as it wrote it", got, err)
	}
	// Its own entry it marks stopped.
	if err := other.StopTarget(ctx, broker.Target{Name: "studio", URL: "http://b:11434"}); err != nil {
		t.Fatal(err)
	}
	if got, err := other.Targets(ctx); err != nil || len(got) != 1 || got[0].BootID != other.BootID() || got[0].Reachable {
		t.Fatalf("targets after the other stopped: %+v, %v; want its entry unreachable", got, err)
	}
	// A store that never wrote the entry writes nothing.
	third, err := broker.Open(ctx, broker.Config{Conn: b.Conn})
	if err != nil {
		t.Fatal(err)
	}
	if err := third.StopTarget(ctx, broker.Target{Name: "studio", URL: "http://c:11434"}); err != nil {
		t.Fatal(err)
	}
	if got, err := third.Targets(ctx); err != nil || len(got) != 1 || got[0].BootID != other.BootID() {
		t.Fatalf("targets after a stop by a store that never wrote the entry: %+v, %v", got, err)
	}
}

// Two foremen publishing under one name each find, at their next publish, that the other
// wrote their entry, and say so (an error in the log, TargetNameConflict for /healthz). A
// foreman restarted after a kill overwrites its previous run's entry without a word.
func TestTargetNameConflictIsReported(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var logA, logB lockedLog
	a, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Logger: slog.New(slog.NewTextHandler(&logA, nil))})
	if err != nil {
		t.Fatal(err)
	}
	bb, err := broker.Open(ctx, broker.Config{Conn: b.Conn, Logger: slog.New(slog.NewTextHandler(&logB, nil))})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(s *broker.Store, url string) {
		t.Helper()
		if err := s.PublishTarget(ctx, broker.Target{Name: "studio", URL: url, Reachable: true}); err != nil {
			t.Fatal(err)
		}
	}
	// A restart: the previous run (b.Store) wrote the entry; a is its next run.
	publish(b.Store, "http://a:11434")
	publish(a, "http://a:11434")
	publish(a, "http://a:11434")
	if c, ok := a.TargetNameConflict("studio"); ok {
		t.Fatalf("conflict reported over the previous run's entry: %+v", c)
	}
	publish(bb, "http://b:11434")
	publish(a, "http://a:11434")
	c, ok := a.TargetNameConflict("studio")
	if !ok || c.BootID != bb.BootID() || c.URL != "http://b:11434" || c.Name != "studio" {
		t.Fatalf("a's conflict after b overwrote its entry: %+v, %v", c, ok)
	}
	if _, ok := bb.TargetNameConflict("studio"); ok {
		t.Fatal("b reports a conflict before a overwrote its entry")
	}
	publish(bb, "http://b:11434")
	if c, ok := bb.TargetNameConflict("studio"); !ok || c.BootID != a.BootID() {
		t.Fatalf("b's conflict after a overwrote its entry: %+v, %v", c, ok)
	}
	for name, l := range map[string]*lockedLog{"a": &logA, "b": &logB} {
		if n := strings.Count(l.String(), "give each foreman its own FOREMAN_TARGET_NAME"); n != 1 {
			t.Errorf("%s logged the conflict %d times, want once:\n%s", name, n, l.String())
		}
	}
	if _, ok := a.TargetNameConflict("mini"); ok {
		t.Error("conflict reported for a name a does not publish")
	}
}

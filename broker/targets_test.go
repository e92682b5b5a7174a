package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Targets lists what each foreman published, an entry marked stopped says so, and an
// entry not refreshed within TargetTTL goes by itself (a foreman that died, or one that
// stopped and did not come back).
func TestTargetsPublishStopExpire(t *testing.T) {
	t.Parallel()
	// Long enough for the reads below to come before it on a loaded machine.
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.TargetTTL = 4 * time.Second }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The foremen that publish and then die or stop: the reader's own entry (none here)
	// would be refreshed while it reads.
	pub, err := broker.Open(ctx, broker.Config{Conn: b.Conn, TargetTTL: 4 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range []broker.Target{
		{Name: "studio.local", URL: "http://studio:11434", Reachable: true, Models: []string{"tiny-a:latest"}},
		{Name: "mini", URL: "http://mini:11434", Models: []string{"tiny-b:latest"}, Loaded: []string{"tiny-b:latest"}},
	} {
		if err := pub.PublishTarget(ctx, tg); err != nil {
			t.Fatal(err)
		}
	}
	got, err := b.Store.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "mini" || got[1].Name != "studio.local" || !got[1].HasModel("tiny-a:latest") ||
		got[0].HasModel("tiny-a:latest") || got[0].BootID != pub.BootID() || got[0].Updated.IsZero() {
		t.Fatalf("targets: %+v", got)
	}
	if err := pub.StopTarget(ctx, broker.Target{Name: "studio.local", URL: "http://studio:11434", Models: []string{"tiny-a:latest"}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := pub.Targets(ctx); len(got) != 2 || got[1].Name != "studio.local" || got[1].Reachable || !got[1].HasModel("tiny-a:latest") {
		t.Fatalf("after the stop: %+v, want studio.local unreachable with its models", got)
	}
	eventually(t, 30*time.Second, "target entry expired", func() bool {
		got, err := b.Store.Targets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(got) == 0
	})
}

// A foreman whose entry lapsed before it stopped (frozen, or cut off from NATS, for
// longer than its TTL) still leaves its Mac listed, unreachable, as a stop in order does
// (ADR-0075): its last write is gone, and no other foreman wrote the key. It said
// "another foreman wrote it" and left the Mac unlisted.
func TestStopTargetWritesALapsedEntryAgain(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.TargetTTL = 2 * time.Second }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tg := broker.Target{Name: "studio", URL: "http://studio:11434", Reachable: true, Models: []string{"tiny-a:latest"}}
	if err := b.Store.PublishTarget(ctx, tg); err != nil {
		t.Fatal(err)
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "target.studio"); err != nil {
		t.Fatalf("the entry as published: %v", err)
	}
	eventually(t, 30*time.Second, "the entry lapsed", func() bool {
		_, err := kv.Get(ctx, "target.studio")
		return errors.Is(err, jetstream.ErrKeyNotFound)
	})
	tg.Reachable = false
	if err := b.Store.StopTarget(ctx, tg); err != nil {
		t.Fatal(err)
	}
	got, err := b.Store.Targets(ctx)
	if err != nil || len(got) != 1 || got[0].Name != "studio" || got[0].Reachable || !got[0].HasModel("tiny-a:latest") {
		t.Fatalf("after the stop: %+v, %v; want studio listed, unreachable, with its models", got, err)
	}
}

// A publish of the entry whose answer was lost (a poll's write cut off by the very
// shutdown, which landed all the same) is still this foreman's own write: the stop marks
// the Mac unreachable over it. It took it for another foreman's and left the entry as the
// poll wrote it, reachable, with its models loaded, until it lapsed: the others went on
// routing calls to a stopped foreman's Mac for a whole TTL.
func TestStopTargetOverItsOwnWriteWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tg := broker.Target{Name: "studio", URL: "http://studio:11434", Reachable: true, Models: []string{"tiny-a:latest"}}
	if err := b.Store.PublishTarget(ctx, tg); err != nil {
		t.Fatal(err)
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	// The next poll's write, as the store makes it, landed; its answer never came back.
	putEntry(t, ctx, kv, tg, b.Store.BootID())
	tg.Reachable = false
	if err := b.Store.StopTarget(ctx, tg); err != nil {
		t.Fatal(err)
	}
	got, err := b.Store.Targets(ctx)
	if err != nil || len(got) != 1 || got[0].Reachable || len(got[0].Loaded) != 0 || !got[0].HasModel("tiny-a:latest") {
		t.Fatalf("after the stop: %+v, %v; want studio listed, unreachable, nothing loaded, with its models", got, err)
	}
}

// putEntry writes tg's entry, its models loaded, as the store of bootID publishes it (now,
// a minute's life) behind that store's back, and returns it: for a store's own boot id, a
// write that landed with its answer lost.
func putEntry(t *testing.T, ctx context.Context, kv jetstream.KeyValue, tg broker.Target, bootID string) []byte {
	t.Helper()
	tg.Loaded, tg.BootID, tg.Updated = tg.Models, bootID, time.Now()
	tg.Expires = tg.Updated.Add(time.Minute)
	v, err := json.Marshal(tg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "target."+tg.Name, v); err != nil { // a plain name is its own key
		t.Fatal(err)
	}
	return v
}

// The same when no write of the entry was ever answered: the first poll's publish (or
// every one, on a store slow to answer) landed with its answer lost. The stop took the
// foreman for one that had written nothing and left the entry reachable, its models
// loaded, until it lapsed.
func TestStopTargetOverItsOnlyWriteWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := b.Store.Targets(ctx); err != nil { // makes the bucket
		t.Fatal(err)
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	tg := broker.Target{Name: "studio", URL: "http://studio:11434", Reachable: true, Models: []string{"tiny-a:latest"}}
	putEntry(t, ctx, kv, tg, b.Store.BootID())
	tg.Reachable = false
	if err := b.Store.StopTarget(ctx, tg); err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "target.studio")
	if err != nil {
		t.Fatal(err)
	}
	var got broker.Target
	if err := json.Unmarshal(e.Value(), &got); err != nil || got.Reachable || len(got.Loaded) != 0 || !got.HasModel("tiny-a:latest") {
		t.Fatalf("after the stop: %+v, %v; want studio unreachable, nothing loaded, with its models", got, err)
	}

	// Another foreman's entry under the name is still left as it is.
	v := putEntry(t, ctx, kv, tg, broker.NewID())
	b2, err := broker.Open(ctx, broker.Config{Conn: b.Conn, BootID: broker.NewID()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.StopTarget(ctx, tg); err != nil {
		t.Fatal(err)
	}
	e, err = kv.Get(ctx, "target.studio")
	if err != nil || string(e.Value()) != string(v) {
		t.Fatalf("another foreman's entry after a stop: %v; want it left as it was", err)
	}
}

// A foreman that stops before any write of its entry went through (its publishes all
// failed) lists no Mac: a stop marks this foreman's own entry, and it has none.
func TestStopTargetWithoutAnEntryOfItsOwnWritesNone(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Store.StopTarget(ctx, broker.Target{Name: "studio", URL: "http://studio:11434", Models: []string{"tiny-a:latest"}}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Store.Targets(ctx); err != nil || len(got) != 0 {
		t.Fatalf("after a stop with nothing published: %+v, %v; want no Mac listed", got, err)
	}
}

// Foremen with different poll intervals share the bucket: one with a shorter TargetTTL,
// starting later, must not cut the others' entries short. Each entry lives its own
// foreman's TTL, whoever reads it, and the bucket keeps the longest.
func TestTargetsKeepEachForemansTTL(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.TargetTTL = 90 * time.Second }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "studio", Reachable: true, Models: []string{"tiny-a:latest"}}); err != nil {
		t.Fatal(err)
	}
	// A foreman polling every second starts later; its clock reads 10 s on, past its own
	// TTL of the studio entry's last refresh, well within the studio foreman's.
	fast, err := broker.Open(ctx, broker.Config{Conn: b.Conn, TargetTTL: 3 * time.Second,
		Now: func() time.Time { return time.Now().Add(10 * time.Second) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := fast.PublishTarget(ctx, broker.Target{Name: "mini", Reachable: true, Models: []string{"tiny-b:latest"}}); err != nil {
		t.Fatal(err)
	}
	got, err := fast.Targets(ctx)
	if err != nil || len(got) != 2 {
		t.Fatalf("targets read by the fast foreman: %+v, %v; want studio's and its own", got, err)
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kv.Status(ctx); err != nil || st.TTL() != 90*time.Second {
		t.Fatalf("bucket TTL after the fast foreman opened it: %v, %v; want 90s", st.TTL(), err)
	}
}

// Every foreman publishes its target at each poll, so the bucket is read while it is
// written: a read lists every live target all the same. (The KV key lister ends a
// listing early under such writes and returned part of them, about 2% of the reads here:
// a Mac missing from one read made a sync call's outage check think no other Mac had its
// model.)
func TestTargetsListEveryTargetWhileTheyArePublished(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	names := []string{"mac-a", "mac-b", "mac-c"}
	publish := func(name string) error {
		return b.Store.PublishTarget(ctx, broker.Target{Name: name, Reachable: true, Models: []string{"tiny-a:latest"}})
	}
	for _, name := range names {
		if err := publish(name); err != nil {
			t.Fatal(err)
		}
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Go(func() {
			for wctx.Err() == nil {
				_ = publish(name) // each one also makes the next read go to the bucket
			}
		})
	}
	defer wg.Wait()
	defer stop()
	// Reads for a second: each publish makes the next read go to the bucket.
	short, reads := 0, 0
	for end := time.Now().Add(time.Second); time.Now().Before(end); reads++ {
		got, err := b.Store.Targets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(names) {
			short++
		}
	}
	if short > 0 {
		t.Fatalf("%d of %d reads of the targets missed one of the %d published", short, reads, len(names))
	}
}

// A Targets read that began before a publish of this process does not cache what it
// read over the publish: the next read sees the published entry ("read our own write"),
// not the older list for the cache's second.
func TestTargetsReadBeforeAPublishIsNotCached(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "mac-a", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	b.Store.SetTargetsRead(func() {
		once.Do(func() { // the bucket read is done; mac-b is published before it is cached
			if err := b.Store.PublishTarget(ctx, broker.Target{Name: "mac-b", Reachable: true}); err != nil {
				t.Error(err)
			}
		})
	})
	if got, err := b.Store.Targets(ctx); err != nil || len(got) != 1 {
		t.Fatalf("the read before the publish: %+v, %v; want mac-a alone", got, err)
	}
	if got, err := b.Store.Targets(ctx); err != nil || len(got) != 2 {
		t.Fatalf("the read after the publish: %+v, %v; want mac-a and mac-b", got, err)
	}
}

// Of two Targets reads at once, the one that began first and ends last does not cache
// its older list over the newer one's: another foreman's publish seen by the later read
// (this process is not told of it, as of its own) stays seen, not taken back for the
// cache's second. Under load such a read left a target out, and the model only it had
// was answered "not found".
func TestTargetsOlderReadIsNotCachedOverANewerOne(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other, err := broker.Open(ctx, broker.Config{Conn: b.Conn}) // another foreman on the NATS
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "mac-a", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	first, resume := make(chan struct{}), make(chan struct{})
	letGo := sync.OnceFunc(func() { close(resume) })
	defer letGo() // a failure below does not leave the first read waiting
	var once sync.Once
	b.Store.SetTargetsRead(func() {
		held := false
		once.Do(func() { held = true })
		if held { // the first read has read the bucket: it waits before caching
			close(first)
			<-resume
		}
	})
	older := make(chan []broker.Target, 1)
	go func() {
		got, err := b.Store.Targets(ctx)
		if err != nil {
			t.Error(err)
		}
		older <- got
	}()
	<-first
	if err := other.PublishTarget(ctx, broker.Target{Name: "mac-b", Reachable: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Store.Targets(ctx); err != nil || len(got) != 2 {
		t.Fatalf("the read after mac-b's publish: %+v, %v; want mac-a and mac-b", got, err)
	}
	letGo()
	if got := <-older; len(got) != 1 {
		t.Fatalf("the read begun before mac-b's publish: %+v; want mac-a alone", got)
	}
	if got, err := b.Store.Targets(ctx); err != nil || len(got) != 2 {
		t.Fatalf("the read after both: %+v, %v; want mac-a and mac-b, not the older read's list", got, err)
	}
}

// An entry of the targets bucket that does not read as a target (written by another
// program on a shared NATS, or cut short) is no target: it is left out, not listed as a
// target with no name and no models beside the live ones.
func TestTargetsLeaveOutAnUnreadableEntry(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.Store.PublishTarget(ctx, broker.Target{Name: "mini", Reachable: true, Models: []string{"tiny-a:latest"}}); err != nil {
		t.Fatal(err)
	}
	kv, err := b.JetStream(t).KeyValue(ctx, broker.TargetsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "target.junk", []byte(`{"name":`)); err != nil {
		t.Fatal(err)
	}
	got, err := b.Store.Targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "mini" {
		t.Fatalf("targets %+v, want mini alone", got)
	}
}

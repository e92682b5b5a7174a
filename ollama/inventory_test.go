package ollama_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func TestInventoryRefreshAndHasModel(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: newClient(t, fake.URL)})
	if inv.HasModel("tiny-a") || inv.Snapshot().Polled {
		t.Fatal("knows models before the first poll")
	}
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{
		"tiny-a": true, "TINY-A": true, " tiny-b:latest ": true, "Tiny-Embed:Latest": true,
		"tiny-a:7b": false, "nope": false, "": false,
	} {
		if got := inv.HasModel(name); got != want {
			t.Errorf("HasModel(%q) = %v, want %v", name, got, want)
		}
	}
	if l := inv.Loaded(); len(l) != 0 {
		t.Errorf("Loaded = %v, want none", l)
	}
	fake.SetLoaded("tiny-b")
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if l := inv.Loaded(); !slices.Equal(l, []string{"tiny-b:latest"}) {
		t.Errorf("Loaded = %v", l)
	}
	snap := inv.Snapshot()
	if !snap.Polled || snap.Degraded || snap.Err != nil || snap.LastPoll.IsZero() || len(snap.TagsRaw) == 0 || len(snap.PsRaw) == 0 {
		t.Errorf("snapshot %+v", snap)
	}

	inv.SetPs(&ollama.ProcessResponse{Models: []ollama.ProcessModelResponse{{Name: "Tiny-A"}}}, []byte(`{}`))
	if l := inv.Loaded(); !slices.Equal(l, []string{"tiny-a:latest"}) {
		t.Errorf("Loaded after SetPs = %v", l)
	}
}

func TestInventoryDegradedAndRecovery(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	recovered := make(chan struct{}, 10)
	inv := ollama.NewInventory(ollama.InventoryConfig{
		Client:    newClient(t, fake.URL),
		OnRecover: func(context.Context) { recovered <- struct{}{} },
	})
	ctx := testCtx(t)
	fake.SetLoaded("tiny-a")
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if l := inv.Loaded(); !slices.Equal(l, []string{"tiny-a:latest"}) {
		t.Fatalf("Loaded = %v, want [tiny-a:latest]", l)
	}
	if len(recovered) != 1 {
		t.Fatalf("OnRecover calls after first poll = %d, want 1", len(recovered))
	}
	if err := inv.Refresh(ctx); err != nil || len(recovered) != 1 {
		t.Fatalf("a healthy poll must not call OnRecover again (err %v, calls %d)", err, len(recovered))
	}

	if !inv.Snapshot().DownSince.IsZero() {
		t.Error("DownSince set while the target answers")
	}

	fake.SetDown(true)
	before := time.Now()
	err := inv.Refresh(ctx)
	var ce *ollama.ConnectionError
	if !errors.As(err, &ce) {
		t.Fatalf("poll of a down target: %v", err)
	}
	snap := inv.Snapshot()
	if !inv.Degraded() || !snap.Degraded || snap.Err == nil {
		t.Fatalf("not degraded: %+v", snap)
	}
	// The outage began with the first poll that failed, and a second failure keeps it.
	if down := snap.DownSince; down.Before(before) || down.After(snap.LastPoll) {
		t.Errorf("DownSince %v, want the start of the failed poll (after %v, before %v)", down, before, snap.LastPoll)
	}
	if err := inv.Refresh(ctx); err == nil || !inv.Snapshot().DownSince.Equal(snap.DownSince) {
		t.Errorf("a second failed poll: err %v, DownSince %v, want %v kept", err, inv.Snapshot().DownSince, snap.DownSince)
	}
	if snap.Tags == nil || len(snap.Tags.Models) != 3 || !inv.HasModel("tiny-a") {
		t.Error("degraded inventory lost the last known tags")
	}
	// Not its loaded models: a target down or restarting has none loaded (/healthz,
	// /metrics and /queue said tiny-a was loaded for the whole outage).
	if l := inv.Loaded(); len(l) != 0 {
		t.Errorf("Loaded while degraded = %v, want none", l)
	}

	fake.SetDown(false)
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if inv.Degraded() || inv.Snapshot().Err != nil || !inv.Snapshot().DownSince.IsZero() {
		t.Error("still degraded (or down) after a good poll")
	}
	if l := inv.Loaded(); !slices.Equal(l, []string{"tiny-a:latest"}) {
		t.Errorf("Loaded after the recovery = %v, want [tiny-a:latest]", l)
	}
	if len(recovered) != 2 {
		t.Errorf("OnRecover calls = %d, want 2", len(recovered))
	}
}

func TestInventoryHTTPErrorDegrades(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: newClient(t, fake.URL)})
	fake.FailNextOn("/api/ps", 1, ollamatest.Fail500)
	err := inv.Refresh(testCtx(t))
	var he *ollama.HTTPError
	if !errors.As(err, &he) || !inv.Degraded() || inv.Snapshot().Polled {
		t.Fatalf("err %v degraded %v", err, inv.Degraded())
	}
	// A target that answers, though with an error status, is up.
	if down := inv.Snapshot().DownSince; !down.IsZero() {
		t.Errorf("DownSince %v after an answer with an error status, want zero", down)
	}
}

// A target that takes the poll and never answers is degraded after PollTimeout, with a
// message that says so, and the poll does not hang.
func TestInventoryHungPollDegrades(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	// Long enough for the polls that are answered, on a loaded machine.
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: newClient(t, fake.URL), PollTimeout: 2 * time.Second})
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	fake.FailNextOn("/api/ps", 1, ollamatest.Hang)
	err := inv.Refresh(testCtx(t))
	if !errors.Is(err, context.DeadlineExceeded) || err.Error() != "ollama: no answer to the inventory poll within 2s: context deadline exceeded" {
		t.Fatalf("poll of a hung target: %v", err)
	}
	if snap := inv.Snapshot(); !snap.Degraded || snap.Err == nil || !snap.Polled || snap.DownSince.IsZero() {
		t.Fatalf("not degraded, or not down: %+v", snap)
	}
	if err := inv.Refresh(testCtx(t)); err != nil || inv.Degraded() {
		t.Fatalf("after the hang: err %v degraded %v", err, inv.Degraded())
	}
}

func TestInventoryRun(t *testing.T) {
	t.Parallel()
	fake := ollamatest.New(t)
	fake.SetDown(true)
	recovered := make(chan struct{}, 10)
	inv := ollama.NewInventory(ollama.InventoryConfig{
		Client:    newClient(t, fake.URL),
		Interval:  5 * time.Millisecond,
		OnRecover: func(context.Context) { recovered <- struct{}{} },
	})
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- inv.Run(ctx) }()

	// Two polls of the down target happen on their own.
	if err := fake.WaitFor(testCtx(t), func(calls []ollamatest.Call) bool {
		n := 0
		for _, c := range calls {
			if c.Path == "/api/tags" && c.Finished {
				n++
			}
		}
		return n >= 2
	}); err != nil {
		t.Fatal(err)
	}
	if !inv.Degraded() {
		t.Error("not degraded while the target is down")
	}
	fake.SetDown(false)
	select {
	case <-recovered:
	case <-time.After(5 * time.Second):
		t.Fatal("OnRecover not called after the target came back")
	}
	if inv.Degraded() {
		t.Error("degraded after recovery")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v on cancel", err)
	}
}

// blockingClient counts Tags calls and blocks them until released or until the call's
// context ends, as an HTTP request does.
type blockingClient struct {
	ollama.Client // nil: only Tags and Ps are called
	calls         atomic.Int32
	release       chan struct{}
}

func (b *blockingClient) Tags(ctx context.Context) (*ollama.ListResponse, []byte, error) {
	b.calls.Add(1)
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	return &ollama.ListResponse{}, []byte(`{"models":[]}`), nil
}

func (b *blockingClient) Ps(ctx context.Context) (*ollama.ProcessResponse, []byte, error) {
	return &ollama.ProcessResponse{}, []byte(`{"models":[]}`), nil
}

func TestInventoryRefreshSharesInFlightPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		bc := &blockingClient{release: make(chan struct{})}
		inv := ollama.NewInventory(ollama.InventoryConfig{Client: bc})
		ctx := context.Background()
		errs := make(chan error, 3)
		go func() { errs <- inv.Refresh(ctx) }()
		synctest.Wait() // the first poll is blocked in Tags
		for range 2 {
			go func() { errs <- inv.Refresh(ctx) }()
		}
		synctest.Wait() // both callers are waiting on the first poll
		close(bc.release)
		for range 3 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if n := bc.calls.Load(); n != 1 {
			t.Fatalf("Tags calls = %d, want 1 shared poll", n)
		}
		if !inv.Snapshot().Polled {
			t.Error("not polled")
		}
	})
}

// RefreshAfter does not take a poll begun before it (which may have read the list before
// a change its caller must see): it waits for it, and its callers share the next one, a
// single poll more however many wait.
func TestInventoryRefreshAfterTakesTheNextPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		bc := &blockingClient{release: make(chan struct{})}
		inv := ollama.NewInventory(ollama.InventoryConfig{Client: bc})
		ctx := context.Background()
		errs := make(chan error, 4)
		go func() { errs <- inv.Refresh(ctx) }()
		synctest.Wait() // the first poll is blocked in Tags
		for range 3 {
			go func() { errs <- inv.RefreshAfter(ctx) }()
		}
		synctest.Wait() // the three wait for the poll under way
		close(bc.release)
		for range 4 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if n := bc.calls.Load(); n != 2 {
			t.Fatalf("Tags calls = %d, want 2: the poll under way, then one the three share", n)
		}
	})
}

// The caller that starts a shared poll may hang up: the poll goes on for the callers
// waiting on it, and only the one who left gets its context's error.
func TestInventoryRefreshOutlivesFirstCaller(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		bc := &blockingClient{release: make(chan struct{})}
		inv := ollama.NewInventory(ollama.InventoryConfig{Client: bc})
		first, hangUp := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() { firstErr <- inv.Refresh(first) }()
		synctest.Wait() // the first caller's poll is blocked in Tags
		otherErr := make(chan error, 1)
		go func() { otherErr <- inv.Refresh(context.Background()) }()
		synctest.Wait() // the other caller waits on that poll

		hangUp()
		if err := <-firstErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("the caller who hung up: %v, want context.Canceled", err)
		}
		close(bc.release)
		if err := <-otherErr; err != nil {
			t.Fatalf("the caller still waiting: %v", err)
		}
		if snap := inv.Snapshot(); !snap.Polled || snap.Degraded {
			t.Errorf("snapshot after the shared poll: %+v", snap)
		}
		if n := bc.calls.Load(); n != 1 {
			t.Errorf("Tags calls = %d, want 1 shared poll", n)
		}
	})
}

// Run's end stops a shared poll still in flight and waits for it; a later Refresh
// starts none.
func TestInventoryRunEndStopsSharedPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		bc := &blockingClient{release: make(chan struct{})}
		inv := ollama.NewInventory(ollama.InventoryConfig{Client: bc})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- inv.Run(ctx) }()
		synctest.Wait() // Run's first poll is blocked in Tags
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		// Foreman's own stop says nothing of the target's health.
		if snap := inv.Snapshot(); snap.Degraded || snap.Err != nil {
			t.Errorf("snapshot after the poll was stopped: degraded %v, %v", snap.Degraded, snap.Err)
		}
		if err := inv.Refresh(context.Background()); err == nil {
			t.Fatal("Refresh after Run ended polled")
		}
		if n := bc.calls.Load(); n != 1 {
			t.Errorf("Tags calls = %d, want 1", n)
		}
	})
}

// A RefreshAfter caller waiting for the next poll when Run ends gets an error, and no
// poll begins after Run's end.
func TestInventoryRunEndAnswersRefreshAfter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		bc := &blockingClient{release: make(chan struct{})}
		inv := ollama.NewInventory(ollama.InventoryConfig{Client: bc})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- inv.Run(ctx) }()
		synctest.Wait() // Run's first poll is blocked in Tags
		after := make(chan error, 1)
		go func() { after <- inv.RefreshAfter(context.Background()) }()
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if err := <-after; err == nil {
			t.Fatal("RefreshAfter waiting when Run ended: no error")
		}
		if n := bc.calls.Load(); n != 1 {
			t.Errorf("Tags calls = %d, want 1", n)
		}
	})
}

// tagsClient answers /api/tags with fixed models (and /api/ps with none).
type tagsClient struct {
	ollama.Client // nil: only Tags and Ps are called
	models        []ollama.ListModelResponse
}

func (c tagsClient) Tags(context.Context) (*ollama.ListResponse, []byte, error) {
	return &ollama.ListResponse{Models: c.models}, []byte(`{}`), nil
}

func (c tagsClient) Ps(context.Context) (*ollama.ProcessResponse, []byte, error) {
	return &ollama.ProcessResponse{}, []byte(`{"models":[]}`), nil
}

// A /api/tags entry is known by its name and by its model field alike; the list of
// models names each entry by its name, by its model field when it has no name.
func TestInventoryKnowsAModelByNameOrModel(t *testing.T) {
	t.Parallel()
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: tagsClient{models: []ollama.ListModelResponse{
		{Name: "alias:latest", Model: "tiny-a:latest"},
		{Model: "tiny-b:latest"},
	}}})
	if err := inv.Refresh(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alias", "tiny-a", "tiny-b"} {
		if !inv.HasModel(name) {
			t.Errorf("HasModel(%q) = false, want true", name)
		}
	}
	if got, want := inv.Snapshot().Models(), []string{"alias:latest", "tiny-b:latest"}; !slices.Equal(got, want) {
		t.Errorf("Models() = %v, want %v", got, want)
	}
}

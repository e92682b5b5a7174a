package worker

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// What an idle worker reads while it fetches a job it was woken for: the job's record
// and, when the job needs another runner than the last one, what the target has loaded
// (the read isLoaded would otherwise make after the fetch, before the target call).
func TestReadAheadRecordAndLoadedModels(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := brokertest.New(t)
	fake := ollamatest.New(t)
	fake.SetResident("tiny-b")
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: target, Logger: slog.New(slog.DiscardHandler)})
	w, err := New(Config{Store: b.Store, Target: target, Inventory: inv})
	if err != nil {
		t.Fatal(err)
	}
	psCalls := func() int {
		n := 0
		for _, c := range fake.Calls() {
			if c.Path == "/api/ps" {
				n++
			}
		}
		return n
	}
	submit := func(model string) (*broker.Job, string) {
		body := fmt.Appendf(nil, `{"model":%q,"messages":[]}`, model)
		j, err := b.Store.Submit(ctx, &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat}, body)
		if err != nil {
			t.Fatal(err)
		}
		k, err := broker.KeyOf(j, body)
		if err != nil {
			t.Fatal(err)
		}
		return j, k.String()
	}
	// A job of tiny-a ran last, answered, and ended after the inventory's last poll.
	_, tokenA := submit("tiny-a")
	w.begin(tokenA, true, func(error) {})
	w.called(tokenA, true, false, false)
	w.end()

	for _, c := range []struct {
		model string
		reads int // /api/ps reads the read-ahead makes
	}{{"tiny-a", 0}, {"tiny-b", 1}} {
		before := psCalls()
		j, token := submit(c.model)
		r := w.readAhead(ctx, j.ID, token, nil)
		rec, rev, ok := r.take(j.ID)
		if !ok || rec.ID != j.ID || rev == 0 {
			t.Fatalf("%s: record read ahead: %+v rev %d ok %v", c.model, rec, rev, ok)
		}
		if got := psCalls() - before; got != c.reads {
			t.Errorf("%s: %d reads of /api/ps, want %d", c.model, got, c.reads)
		}
		if c.reads > 0 && !w.isLoaded(ctx, token) {
			t.Errorf("%s: not loaded after the read-ahead; /api/ps lists it", c.model)
		}
		if got := psCalls() - before; got != c.reads {
			t.Errorf("%s: isLoaded read /api/ps again (%d reads)", c.model, got)
		}
		if _, _, ok := r.take("01ARZ3NDEKTSV4RRFFQ69G5FAV"); ok {
			t.Errorf("%s: the read-ahead of one job answered for another", c.model)
		}
	}
}

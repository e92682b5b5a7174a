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
)

// Model names made and removed again (`ollama cp` of a new name, a job of it, `ollama
// rm`), as often as a caller likes, do not each stay in what the worker learned: past
// learnedMax models, those the target lists no more are forgotten, and the target's own
// models are kept. Their run and load times (the queue view's estimates) and their
// runner's load options (begin) alike.
func TestLearnedModelsBoundedToTheTargetsModels(t *testing.T) {
	t.Parallel()
	const bound = 4
	listed := func(model string) bool { return ollama.NormalizeModel(model) == "tiny-a:latest" }
	d := newDurations(bound, listed)
	d.observeRun("tiny-a", time.Second)
	d.observeLoad("tiny-a", time.Second)
	b := brokertest.New(t)
	w, fake := testWorker(t, b, Config{learnedMax: bound})
	target, err := ollama.NewClient(ollama.ClientConfig{BaseURL: fake.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	inv := ollama.NewInventory(ollama.InventoryConfig{Client: target, Interval: time.Hour, Logger: slog.New(slog.DiscardHandler)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	w.cfg.Inventory = inv
	token := func(model string) string {
		return broker.QueueKey{Model: mustToken(t, model), Opts: broker.DefaultLoadOptions, Class: broker.PriorityNormal, Program: broker.AnonymousProgram}.String()
	}
	w.begin(token("tiny-a"), true, func(error) {})
	for i := range 10 * bound {
		name := fmt.Sprintf("churn-%d", i)
		d.observeRun(name, time.Second)
		d.observeLoad(name, time.Second)
		w.begin(token(name), true, func(error) {})
	}
	if n, m := len(d.run), len(d.load); n > bound || m > bound {
		t.Errorf("durations of %d and %d models after %d were run; want at most %d", n, m, 10*bound+1, bound)
	}
	if run, load := d.estimate("tiny-a"); run != time.Second || load != time.Second {
		t.Errorf("tiny-a, which the target has: run %v load %v; want what was learned, 1s and 1s", run, load)
	}
	w.mu.Lock()
	n := len(w.runnerOpts)
	_, kept := w.runnerOpts[mustToken(t, "tiny-a")]
	w.mu.Unlock()
	if n > bound {
		t.Errorf("the load options of %d models after %d were run; want at most %d", n, 10*bound+1, bound)
	}
	if !kept {
		t.Errorf("the load options of tiny-a, which the target has, were forgotten")
	}
}

func mustToken(t *testing.T, model string) string {
	t.Helper()
	tok, err := broker.ModelToken(model)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}
